"""Service catalog and dependency graph, the map that incident correlation reasons over.

Edges come from two places: the catalog's declared ``depends_on`` (topic ``vigil.catalog``,
compacted) and caller → callee edges observed in spans. Both mean "caller depends on
callee", so a failing callee is upstream of its failing callers.

>>> cat = Catalog()
>>> cat.upsert(ServiceInfo("checkout", "shop", "CRITICAL", "prod", depends_on=("orders",)))
>>> cat.upsert(ServiceInfo("orders", "shop", "BUSINESS", "prod", depends_on=("db",)))
>>> cat.add_edge("orders", "cache", ts_ms=1_000)
>>> sorted(cat.dependencies("checkout"))
['cache', 'db', 'orders']
>>> cat.linked("db", "checkout"), cat.linked("cache", "db")
(True, False)
>>> cat.most_upstream({"checkout", "orders", "db"})
'db'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TIERS = ("CRITICAL", "BUSINESS", "SUPPORT", "BATCH")


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """One catalog entry (PRODUCT.md §4 ServiceInfo)."""

    service: str
    team: str
    tier: str
    environment: str
    runbook_url: str | None = None
    depends_on: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.service:
            raise ValueError("ServiceInfo.service: must not be empty")
        if self.tier not in TIERS:
            raise ValueError(
                f"ServiceInfo.tier: {self.tier!r} is not one of {', '.join(TIERS)} "
                f"(service={self.service})"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "team": self.team,
            "tier": self.tier,
            "environment": self.environment,
            "runbook_url": self.runbook_url,
            "depends_on": list(self.depends_on),
            "channels": list(self.channels),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServiceInfo:
        return cls(
            service=data["service"],
            team=data["team"],
            tier=data["tier"],
            environment=data["environment"],
            runbook_url=data.get("runbook_url"),
            depends_on=tuple(data.get("depends_on") or ()),
            channels=tuple(data.get("channels") or ()),
        )


class Catalog:
    """Services plus the dependency graph; transitive closures are cached until it changes."""

    def __init__(self) -> None:
        self._services: dict[str, ServiceInfo] = {}
        self._span_edges: dict[str, dict[str, int]] = {}  # caller -> callee -> last seen ts
        self._closure: dict[str, frozenset[str]] = {}

    def upsert(self, info: ServiceInfo) -> None:
        self._services[info.service] = info
        self._closure.clear()

    def remove(self, service: str) -> None:
        if self._services.pop(service, None) is not None:
            self._closure.clear()

    def apply(self, service: str, value: Mapping[str, Any] | None) -> None:
        """Apply one record of the compacted catalog topic (a null value removes)."""
        if value is None:
            self.remove(service)
        else:
            self.upsert(ServiceInfo.from_dict(value))

    def add_edge(self, caller: str, callee: str, ts_ms: int) -> None:
        """Record a span-observed call; self-calls carry no dependency information."""
        if caller == callee:
            return
        callees = self._span_edges.setdefault(caller, {})
        if callee not in callees:
            self._closure.clear()
        callees[callee] = max(ts_ms, callees.get(callee, ts_ms))

    def prune_edges(self, older_than_ms: int) -> int:
        """Forget span edges not seen since ``older_than_ms``: a call path that stopped
        existing must stop linking services. Returns the number of edges dropped."""
        dropped = 0
        for caller in list(self._span_edges):
            callees = self._span_edges[caller]
            for callee in [c for c, ts in callees.items() if ts < older_than_ms]:
                del callees[callee]
                dropped += 1
            if not callees:
                del self._span_edges[caller]
        if dropped:
            self._closure.clear()
        return dropped

    def get(self, service: str) -> ServiceInfo | None:
        return self._services.get(service)

    def team(self, service: str) -> str | None:
        info = self._services.get(service)
        return info.team if info else None

    def tier(self, service: str) -> str | None:
        info = self._services.get(service)
        return info.tier if info else None

    def depends_on(self, service: str) -> tuple[str, ...]:
        """Direct dependencies, declared or observed, sorted."""
        info = self._services.get(service)
        direct = set(info.depends_on) if info else set()
        direct.update(self._span_edges.get(service, ()))
        direct.discard(service)
        return tuple(sorted(direct))

    def dependencies(self, service: str) -> frozenset[str]:
        """Everything ``service`` depends on, transitively (cycles tolerated)."""
        cached = self._closure.get(service)
        if cached is not None:
            return cached
        seen: set[str] = set()
        stack = list(self.depends_on(service))
        while stack:
            dep = stack.pop()
            if dep in seen:
                continue
            seen.add(dep)
            stack.extend(self.depends_on(dep))
        seen.discard(service)
        result = frozenset(seen)
        self._closure[service] = result
        return result

    def linked(self, a: str, b: str) -> bool:
        """Whether one of the two depends on the other, directly or transitively."""
        return a == b or b in self.dependencies(a) or a in self.dependencies(b)

    def most_upstream(self, services: Iterable[str]) -> str:
        """The probable root cause among failing ``services``.

        Prefer services that depend on none of the others; among those, the one most of
        the others depend on; ties go to the alphabetically first name so the answer
        never depends on arrival order. With a cycle nobody qualifies, and the rule
        falls back to all services.
        """
        names = sorted(set(services))
        if not names:
            raise ValueError("Catalog.most_upstream: no services given")
        members = set(names)
        deps = {s: self.dependencies(s) for s in names}
        roots = [s for s in names if not (deps[s] & members)]

        def dependents(s: str) -> int:
            return sum(1 for t in names if s in deps[t])

        return min(roots or names, key=lambda s: (-dependents(s), s))

    def to_dict(self) -> dict[str, Any]:
        return {
            "services": [self._services[s].to_dict() for s in sorted(self._services)],
            "edges": [
                [caller, callee, ts]
                for caller in sorted(self._span_edges)
                for callee, ts in sorted(self._span_edges[caller].items())
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Catalog:
        catalog = cls()
        for entry in data.get("services", ()):
            catalog.upsert(ServiceInfo.from_dict(entry))
        for caller, callee, ts in data.get("edges", ()):
            catalog.add_edge(caller, callee, ts)
        return catalog
