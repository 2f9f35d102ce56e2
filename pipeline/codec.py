"""Avro binary encode/decode for every record type in `schemas/`.

Messages are schemaless Avro binary (no container header): the topic names the schema.
The happy path is plain fastavro; only when fastavro fails do we walk the schema again
in Python, because the walk is what can say which field and which byte were wrong.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, cast

import fastavro

from pipeline import SCHEMA_DIR

Schema = Any  # a parsed Avro schema: str, list (union) or dict

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
# Everything fastavro is known to raise on bad input or on a datum of the wrong shape.
_FASTAVRO_ERRORS = (
    EOFError,
    IndexError,
    KeyError,
    ValueError,
    TypeError,
    AttributeError,
    OverflowError,
    MemoryError,
    struct.error,
)


class CodecError(ValueError):
    """Bytes or a record that do not fit the record type's schema.

    `field_path` is relative to the record (`series[3].kind`), empty for the whole record.
    """

    def __init__(self, record_type: str, field_path: str, reason: str) -> None:
        self.record_type = record_type
        self.field_path = field_path
        self.reason = reason
        super().__init__(f"{_join(record_type, field_path)}: {reason}")


def _join(path: str, child: str) -> str:
    if not child:
        return path
    if not path or child.startswith("["):
        return path + child
    return f"{path}.{child}"


class Codec:
    """Encoder and decoder of one record type; get one with `codec(record_type)`."""

    def __init__(self, record_type: str, schema: dict[str, Any]) -> None:
        self.record_type = record_type
        self.schema = fastavro.parse_schema(schema)
        self._names = _named_types(self.schema)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        out = io.BytesIO()
        try:
            fastavro.schemaless_writer(out, self.schema, record)
        except _FASTAVRO_ERRORS as exc:
            raise self._encode_error(record, exc) from exc
        return out.getvalue()

    def validate(self, record: Mapping[str, Any]) -> None:
        """Check every value, which `encode` does not: fastavro takes a str for an array
        (of its characters) and writes an int out of its 32-bit range."""
        problem = _explain(self.schema, record, "", self._names)
        if problem is not None:
            raise CodecError(self.record_type, *problem)

    def decode(self, payload: bytes) -> dict[str, Any]:
        stream = io.BytesIO(payload)
        try:
            record = fastavro.schemaless_reader(stream, self.schema, None)
        except _FASTAVRO_ERRORS as exc:
            raise self.decode_error(payload, exc) from exc
        if stream.tell() != len(payload):
            raise self._trailing(payload, stream.tell())
        return cast(dict[str, Any], record)

    def decode_error(self, payload: bytes, exc: BaseException) -> CodecError:
        """Say where `payload` stops being valid, after a faster decoder has refused it."""
        reader = _Reader(payload, self._names)
        try:
            reader.read(self.schema, "")
        except _Bad as bad:
            return CodecError(self.record_type, bad.path, bad.reason)
        if reader.pos != len(payload):
            return self._trailing(payload, reader.pos)
        return CodecError(self.record_type, "", f"undecodable ({type(exc).__name__}: {exc})")

    def _trailing(self, payload: bytes, end: int) -> CodecError:
        return CodecError(
            self.record_type,
            "",
            f"{len(payload) - end} trailing bytes after the record "
            f"(record ends at byte {end} of {len(payload)})",
        )

    def _encode_error(self, record: Any, exc: BaseException) -> CodecError:
        problem = _explain(self.schema, record, "", self._names)
        if problem is None:
            return CodecError(self.record_type, "", f"cannot encode ({type(exc).__name__}: {exc})")
        return CodecError(self.record_type, *problem)


@cache
def codec(record_type: str) -> Codec:
    """The codec of `record_type`, e.g. `codec("MetricBatch")`; schemas load once."""
    path = SCHEMA_DIR / f"{record_type}.avsc"
    if not path.is_file():
        raise CodecError(record_type, "", f"no schema {path.name} in {SCHEMA_DIR}")
    return Codec(record_type, json.loads(path.read_text()))


def record_types() -> list[str]:
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.avsc"))


def encode(record_type: str, record: Mapping[str, Any]) -> bytes:
    return codec(record_type).encode(record)


def decode(record_type: str, payload: bytes) -> dict[str, Any]:
    return codec(record_type).decode(payload)


def _named_types(schema: Schema) -> dict[str, Schema]:
    """Named types by full name: fastavro writes a second use of a type as its name only."""
    names: dict[str, Schema] = {}

    def visit(s: Schema) -> None:
        if isinstance(s, list):
            for branch in s:
                visit(branch)
        elif isinstance(s, dict):
            if "name" in s and s.get("type") in ("record", "enum", "fixed"):
                names[s["name"]] = s
            for field in s.get("fields", ()):
                visit(field["type"])
            if "items" in s:
                visit(s["items"])
            if "values" in s:
                visit(s["values"])

    visit(schema)
    return names


def _type_name(schema: Schema) -> str:
    if isinstance(schema, list):
        return "|".join(_type_name(s) for s in schema)
    if isinstance(schema, dict):
        return str(schema.get("name", schema["type"]))
    return str(schema)


def _explain(
    schema: Schema, datum: Any, path: str, names: dict[str, Schema]
) -> tuple[str, str] | None:
    """The first (field path, reason) where `datum` does not fit `schema`, or None."""
    if isinstance(schema, str) and schema in names:
        schema = names[schema]
    if isinstance(schema, list):
        return _explain_union(schema, datum, path, names)
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind in _PRIMITIVE_CHECKS:
        reason = _PRIMITIVE_CHECKS[kind](datum)
        return None if reason is None else (path, reason)
    if kind == "enum":
        if datum in schema["symbols"]:
            return None
        return path, f"{datum!r} is not one of {'|'.join(schema['symbols'])}"
    if kind == "array":
        if isinstance(datum, str | bytes) or not isinstance(datum, Sequence):
            return path, f"expected an array, got {type(datum).__name__}"
        for i, item in enumerate(datum):
            if problem := _explain(schema["items"], item, f"{path}[{i}]", names):
                return problem
        return None
    if kind == "map":
        if not isinstance(datum, Mapping):
            return path, f"expected a map, got {type(datum).__name__}"
        for key, value in datum.items():
            if not isinstance(key, str):
                return path, f"map key {key!r} is not a string"
            if problem := _explain(schema["values"], value, f"{path}[{key!r}]", names):
                return problem
        return None
    if kind == "record":
        if not isinstance(datum, Mapping):
            return path, f"expected a {schema['name']} record, got {type(datum).__name__}"
        for field in schema["fields"]:
            name = field["name"]
            if name not in datum:
                if "default" in field or _nullable(field["type"]):
                    continue
                return _join(path, name), "missing (the field has no default)"
            if problem := _explain(field["type"], datum[name], _join(path, name), names):
                return problem
        return None
    return path, f"cannot check values of type {_type_name(schema)}"


def _explain_union(
    schema: list[Schema], datum: Any, path: str, names: dict[str, Schema]
) -> tuple[str, str] | None:
    problems = [_explain(branch, datum, path, names) for branch in schema]
    if any(p is None for p in problems):
        return None
    if datum is None:
        return path, "null not allowed"
    non_null = [p for branch, p in zip(schema, problems, strict=True) if branch != "null"]
    if len(non_null) == 1:
        return non_null[0]
    return path, f"{datum!r} matches none of {_type_name(schema)}"


def _nullable(schema: Schema) -> bool:
    return isinstance(schema, list) and "null" in schema


def _check_integer(bounds: tuple[int, int], kind: str) -> Any:
    def check(v: Any) -> str | None:
        if not isinstance(v, int) or isinstance(v, bool):
            return f"expected {kind}, got {type(v).__name__} {v!r}"
        if not bounds[0] <= v <= bounds[1]:
            return f"{v} out of range for {kind}"
        return None

    return check


def _check_number(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return f"expected a number, got {type(v).__name__} {v!r}"
    return None


def _check_type(expected: type | tuple[type, ...], kind: str) -> Any:
    def check(v: Any) -> str | None:
        return None if isinstance(v, expected) else f"expected {kind}, got {type(v).__name__} {v!r}"

    return check


_PRIMITIVE_CHECKS = {
    "null": lambda v: None if v is None else f"expected null, got {type(v).__name__} {v!r}",
    "boolean": _check_type(bool, "boolean"),
    "int": _check_integer(_INT32, "int"),
    "long": _check_integer(_INT64, "long"),
    "float": _check_number,
    "double": _check_number,
    "string": _check_type(str, "string"),
    "bytes": _check_type((bytes, bytearray, memoryview), "bytes"),
}


class _Bad(Exception):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason


class _Reader:
    """A slow, strict Avro binary reader whose only job is to name what is wrong."""

    def __init__(self, data: bytes, names: dict[str, Schema]) -> None:
        self.data = data
        self.pos = 0
        self.names = names

    def take(self, n: int, path: str, what: str) -> bytes:
        if self.pos + n > len(self.data):
            left = len(self.data) - self.pos
            raise _Bad(
                path,
                f"truncated at byte {len(self.data)} "
                f"(a {what} at byte {self.pos} needs {n} byte{'' if n == 1 else 's'}, {left} left)",
            )
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def long(self, path: str) -> int:
        start, value, shift = self.pos, 0, 0
        while True:
            byte = self.take(1, path, "varint")[0]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > 63:
                raise _Bad(path, f"varint at byte {start} is longer than 10 bytes")
        if value >= 1 << 64:
            raise _Bad(path, f"varint at byte {start} overflows 64 bits")
        return (value >> 1) ^ -(value & 1)

    def int32(self, path: str) -> int:
        start, value = self.pos, self.long(path)
        if not _INT32[0] <= value <= _INT32[1]:
            raise _Bad(path, f"{value} at byte {start} out of range for int")
        return value

    def length(self, path: str) -> int:
        start, n = self.pos, self.long(path)
        if n < 0:
            raise _Bad(path, f"negative length {n} at byte {start}")
        return n

    def count(self, path: str) -> int:
        """Item count of the next array/map block; a negative count is followed by a size."""
        n = self.long(path)
        if n < 0:
            self.length(path)
            n = -n
        return n

    def read(self, schema: Schema, path: str) -> None:
        if isinstance(schema, str) and schema in self.names:
            schema = self.names[schema]
        if isinstance(schema, list):
            start, branch = self.pos, self.long(path)
            if not 0 <= branch < len(schema):
                raise _Bad(
                    path, f"union branch {branch} at byte {start} out of range 0..{len(schema) - 1}"
                )
            self.read(schema[branch], path)
            return
        kind = schema if isinstance(schema, str) else schema["type"]
        if kind == "record":
            for field in schema["fields"]:
                self.read(field["type"], _join(path, field["name"]))
        elif kind == "enum":
            start, index = self.pos, self.long(path)
            if not 0 <= index < len(schema["symbols"]):
                raise _Bad(
                    path,
                    f"enum index {index} at byte {start} is not one of "
                    f"0..{len(schema['symbols']) - 1} ({'|'.join(schema['symbols'])})",
                )
        elif kind in ("array", "map"):
            i = 0
            while n := self.count(path):
                for _ in range(n):
                    item = f"{path}[{i}]"
                    if kind == "map":
                        self.read("string", f"{item}.key")
                        self.read(schema["values"], item)
                    else:
                        self.read(schema["items"], item)
                    i += 1
        else:
            self._primitive(kind, path)

    def _primitive(self, kind: str, path: str) -> None:
        if kind == "null":
            return
        if kind == "boolean":
            start, byte = self.pos, self.take(1, path, "boolean")[0]
            if byte > 1:
                raise _Bad(path, f"boolean byte {byte} at byte {start} is neither 0 nor 1")
        elif kind == "int":
            self.int32(path)
        elif kind == "long":
            self.long(path)
        elif kind in ("float", "double"):
            self.take(4 if kind == "float" else 8, path, kind)
        elif kind in ("string", "bytes"):
            start = self.pos
            raw = self.take(self.length(path), path, kind)
            if kind == "string":
                try:
                    raw.decode()
                except UnicodeDecodeError as exc:
                    raise _Bad(path, f"string at byte {start} is not UTF-8 ({exc.reason})") from exc
        else:
            raise _Bad(path, f"cannot read values of type {kind}")
