# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The byte walk of MetricBatch decoding, in C (see `pipeline.metricbatch`).

A Python walk costs microseconds per series, which the scrape-shaped workload (one sample
per series) cannot afford. Here varints, strings and array blocks are read with a bounds
check before every byte, so no input can read past the message. Any byte the schema does not
allow raises `Malformed`, and the caller asks the codec's slow reader to name it: these
functions only need to be right about *whether* the bytes are valid, not to explain them.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport INT32_MAX, INT32_MIN, int8_t, int32_t, int64_t, uint8_t, uint64_t
from libc.string cimport memcpy

import numpy as np

LITTLE_ENDIAN_DOUBLE = np.dtype("<f8")  # Avro's doubles, whatever the host's byte order


class Malformed(Exception):
    """Bytes that are not a MetricBatch."""


cdef struct Reader:
    const uint8_t* data
    Py_ssize_t pos
    Py_ssize_t end


cdef inline Reader reader(bytes data, Py_ssize_t pos):
    cdef Reader r
    r.data = <const uint8_t*>PyBytes_AS_STRING(data)
    r.pos = pos
    r.end = PyBytes_GET_SIZE(data)
    return r


cdef inline bint read_long(Reader* r, int64_t* out) noexcept nogil:
    """A zigzag varint of at most 10 bytes that fits 64 bits, as Avro allows."""
    cdef uint64_t value = 0, byte
    cdef int shift = 0
    while True:
        if r.pos >= r.end:
            return False
        byte = r.data[r.pos]
        r.pos += 1
        if shift == 63 and byte > 1:
            return False  # a continuation past 10 bytes, or bits past 64
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    out[0] = <int64_t>((value >> 1) ^ (0 - (value & 1)))
    return True


cdef inline bint read_count(Reader* r, int64_t* n) noexcept nogil:
    """Item count of the next array block (a negative count is followed by a byte size)."""
    cdef int64_t size
    if not read_long(r, n):
        return False
    if n[0] < 0:
        if not read_long(r, &size) or size < 0:
            return False
        if n[0] < -(r.end - r.pos):
            return False
        n[0] = -n[0]
    # Every item of every array in the schema takes at least one byte.
    return n[0] <= r.end - r.pos


cdef int strings_at(Reader* r, list out) except -1:
    """Read an array<string>, appending its items to `out` unless it is None."""
    cdef int64_t n, i, length
    while True:
        if not read_count(r, &n):
            raise Malformed
        if n == 0:
            return 0
        for i in range(n):
            if not read_long(r, &length) or length < 0 or length > r.end - r.pos:
                raise Malformed
            if out is not None:
                out.append(PyUnicode_DecodeUTF8(<const char*>r.data + r.pos, length, NULL))
            r.pos += length


cdef int ints_at(Reader* r, list out) except -1:
    """Read an array<int>, appending its items to `out` unless it is None."""
    cdef int64_t n, i, item
    while True:
        if not read_count(r, &n):
            raise Malformed
        if n == 0:
            return 0
        for i in range(n):
            if not read_long(r, &item) or item < INT32_MIN or item > INT32_MAX:
                raise Malformed
            if out is not None:
                out.append(item)


cdef struct Column:
    char* data
    Py_ssize_t capacity  # items
    Py_ssize_t width  # bytes per item


cdef int reserve(Column* c, Py_ssize_t items) except -1:
    cdef Py_ssize_t capacity = c.capacity
    cdef char* grown
    if items <= capacity:
        return 0
    while capacity < items:
        capacity = 2 * capacity + 16
    grown = <char*>PyMem_Realloc(c.data, capacity * c.width)
    if grown == NULL:
        raise MemoryError
    c.data = grown
    c.capacity = capacity
    return 0


cdef Py_ssize_t longs_at(Reader* r, Column* out, Py_ssize_t at) except -2:
    """Read an array<long> into `out` from item `at` on; its item count, -1 if malformed."""
    cdef int64_t n, i
    cdef Py_ssize_t total = 0
    cdef int64_t* items
    while True:
        if not read_count(r, &n):
            return -1
        if n == 0:
            return total
        reserve(out, at + total + n)
        items = <int64_t*>out.data + at + total
        for i in range(n):
            if not read_long(r, &items[i]):
                return -1
        total += n


cdef Py_ssize_t doubles_at(Reader* r, Column* out, Py_ssize_t at) except -2:
    """Copy an array<double> (little-endian bytes) into `out` from item `at` on; as above."""
    cdef int64_t n
    cdef Py_ssize_t total = 0
    while True:
        if not read_count(r, &n):
            return -1
        if n == 0:
            return total
        if n > (r.end - r.pos) // 8:
            return -1
        reserve(out, at + total + n)
        memcpy(out.data + 8 * (at + total), r.data + r.pos, 8 * n)
        r.pos += 8 * n
        total += n


def header(bytes data not None) -> tuple:
    """(source, start, end) of a message: its source and where its symbol table lies."""
    cdef Reader r = reader(data, 0)
    cdef int64_t length
    if not read_long(&r, &length) or length < 0 or length > r.end - r.pos:
        raise Malformed
    source = PyUnicode_DecodeUTF8(<const char*>r.data + r.pos, length, NULL)
    r.pos += length
    start = r.pos
    strings_at(&r, None)  # decoded only when a table is new (`strings`)
    return source, start, r.pos


def strings(bytes raw not None) -> list:
    """The items of an encoded array<string> (a symbol table)."""
    cdef Reader r = reader(raw, 0)
    cdef list out = []
    strings_at(&r, out)
    if r.pos != r.end:
        raise Malformed
    return out


def series(bytes data not None, Py_ssize_t pos, object table, object resolve) -> tuple:
    """Walk the series array at `pos` to the end of the message.

    A series' identity is looked up in `table.series` by the raw bytes of its labels_refs;
    a miss calls `resolve(table, refs_raw, refs, index)`, which returns a `SeriesMeta` or
    a (reason, detail) pair for an unusable label set. Returns the columns of the usable
    series in `SampleBatch` field order (series_ids, names, services, labels, kinds,
    series_index, ts_ms, values), and (index, meta, n_ts, n_values, start, end) of each
    series left out because of its labels or of unequal lengths.
    """
    cdef Reader r = reader(data, pos), refs_reader
    cdef dict known = table.series
    cdef list ids = [], names = [], services = [], labels = [], rejects = []
    cdef Column ts = Column(NULL, 0, 8), values = Column(NULL, 0, 8)
    cdef Column index_of = Column(NULL, 0, 4), kinds = Column(NULL, 0, 1)
    cdef Py_ssize_t filled = 0, kept = 0, index = 0, start, refs_end, n_ts, n_values, j
    cdef int64_t n, i, kind
    cdef object meta
    cdef list refs
    try:
        # Accepted samples take at least 9 bytes each and series at least 4: rarely regrown.
        reserve(&ts, (r.end - r.pos) // 9 + 1)
        reserve(&values, ts.capacity)
        reserve(&index_of, ts.capacity)
        reserve(&kinds, (r.end - r.pos) // 4 + 1)
        while True:
            if not read_count(&r, &n):
                raise Malformed
            if n == 0:
                break
            for i in range(n):
                start = r.pos
                ints_at(&r, None)
                refs_end = r.pos
                if not read_long(&r, &kind) or kind < 0 or kind > 2:
                    raise Malformed
                n_ts = longs_at(&r, &ts, filled)
                n_values = doubles_at(&r, &values, filled)
                if n_ts < 0 or n_values < 0:
                    raise Malformed
                key = PyBytes_FromStringAndSize(<const char*>r.data + start, refs_end - start)
                meta = known.get(key)
                if meta is None:
                    refs = []
                    refs_reader = reader(key, 0)
                    ints_at(&refs_reader, refs)
                    meta = resolve(table, key, refs, index)
                if n_ts == n_values and type(meta) is not tuple:
                    ids.append(meta.series_id)
                    names.append(meta.name)
                    services.append(meta.service)
                    labels.append(meta.labels)
                    reserve(&kinds, kept + 1)
                    (<int8_t*>kinds.data)[kept] = <int8_t>kind
                    reserve(&index_of, filled + n_ts)
                    for j in range(filled, filled + n_ts):
                        (<int32_t*>index_of.data)[j] = <int32_t>kept
                    filled += n_ts
                    kept += 1
                else:
                    rejects.append((index, meta, n_ts, n_values, start, r.pos))
                index += 1
        if r.pos != r.end:
            raise Malformed
        return (
            ids,
            names,
            services,
            labels,
            column(&kinds, kept, np.int8),
            column(&index_of, filled, np.int32),
            column(&ts, filled, np.int64),
            column(&values, filled, LITTLE_ENDIAN_DOUBLE).astype(np.float64, copy=False),
        ), rejects
    finally:
        PyMem_Free(ts.data)
        PyMem_Free(values.data)
        PyMem_Free(index_of.data)
        PyMem_Free(kinds.data)


cdef object column(Column* c, Py_ssize_t items, object dtype):
    """A new numpy array holding the first `items` items of `c`."""
    out = np.empty(items, dtype=dtype)
    cdef uint8_t[::1] target = out.view(np.uint8)
    if items:
        memcpy(&target[0], c.data, items * c.width)
    return out
