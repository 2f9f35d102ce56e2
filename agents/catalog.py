"""vigil.catalog → the `catalog` table (service → ServiceInfo), co-partitioned with the
metrics topic so the aggregate stage finds its services' entries locally.

Every change is also forwarded to internal.incident-feed, where the incident stage keeps the
whole dependency graph: the ServiceInfo wrapped, keyed by service; a removal as a wrapped
ServiceInfo with an empty payload (as on the compacted topic, a value-less record)."""

from __future__ import annotations

from typing import Any

from agents.ingest import DeadLetterBox, check, origin_of
from pipeline.app import Vigil
from pipeline.codec import CodecError, decode
from pipeline.envelope import wrap_encoded
from pipeline.ingest import dead_letter
from pipeline.selfmetrics import CONSUMED_MESSAGES


class CatalogView:
    """Decoded ServiceInfo by service, decoding each distinct value once."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self._decoded: dict[bytes, dict[str, Any]] = {}

    def get(self, service: str) -> dict[str, Any] | None:
        """Reads the table's store directly (the detection thread calls this too; Faust's
        own `get` also updates its sensors, which are not meant for other threads)."""
        raw = self.table.data.get(service.encode())
        if raw is None:
            return None
        info = self._decoded.get(raw)
        if info is None:
            if len(self._decoded) > 10_000:
                self._decoded.clear()
            info = self._decoded[raw] = decode("ServiceInfo", raw)
        return info


def register(vigil: Vigil) -> None:
    app = vigil.app
    table = app.Table("catalog", default=None, partitions=vigil.settings.partitions,
                      key_type=bytes, value_type=bytes)
    vigil.catalog = CatalogView(table)
    topic = vigil.topic("catalog")

    @app.agent(topic, name="catalog")
    async def catalog_agent(stream: Any) -> None:
        async for event in stream.events():
            CONSUMED_MESSAGES.labels("catalog").inc()
            origin = origin_of(event, vigil.settings.partitions)
            value = event.value
            if value is None:
                if event.key is not None:
                    table.pop(event.key, None)
                    await _forward(vigil, event.key, b"")
                continue
            try:
                info = decode("ServiceInfo", value)
            except CodecError as exc:
                await _reject(vigil, dead_letter(origin, value, "undecodable", str(exc)))
                continue
            problem = check(vigil.settings, "ServiceInfo", info)
            if problem is not None:
                await _reject(vigil, dead_letter(origin, value, *problem))
                continue
            if event.key != info["service"].encode():
                await _reject(vigil, dead_letter(
                    origin, value, "key_mismatch",
                    f"ServiceInfo.service: {info['service']!r} does not match the key "
                    f"{event.key!r}; the catalog is keyed by service"))
                continue
            table[event.key] = value
            await _forward(vigil, event.key, value)


async def _forward(vigil: Vigil, service: bytes, value: bytes) -> None:
    """Sent, not flushed: Faust flushes the producer before it commits the offset, so the
    change reaches the feed before it counts as consumed, without a flush per change."""
    await vigil.topic("internal.incident-feed").send(key=service,
                                                     value=wrap_encoded("ServiceInfo", value))


async def _reject(vigil: Vigil, letter: dict[str, Any]) -> None:
    box = DeadLetterBox(vigil.outbox, vigil.database)
    box.add([letter])
    await box.write()
    await vigil.outbox.flush()
