import doctest
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pipeline.catalog
from pipeline.catalog import Catalog, ServiceInfo


def info(service: str, *deps: str, tier: str = "BUSINESS", team: str = "") -> ServiceInfo:
    return ServiceInfo(service, team or f"team-{service}", tier, "prod", depends_on=deps)


def test_docstring_examples_run() -> None:
    assert doctest.testmod(pipeline.catalog).failed == 0


def test_service_info_rejects_unknown_tier_naming_the_service() -> None:
    with pytest.raises(ValueError, match="tier.*'GOLD'.*service=checkout"):
        ServiceInfo("checkout", "shop", "GOLD", "prod")


def test_service_info_round_trips_through_its_record_form() -> None:
    entry = ServiceInfo("checkout", "shop", "CRITICAL", "prod", "https://rb/checkout",
                        ("orders", "db"), ("#shop",))
    assert ServiceInfo.from_dict(json.loads(json.dumps(entry.to_dict()))) == entry


def test_compacted_topic_records_upsert_and_a_null_value_removes() -> None:
    cat = Catalog()
    cat.apply("checkout", info("checkout", "db").to_dict())
    assert cat.team("checkout") == "team-checkout" and cat.depends_on("checkout") == ("db",)
    cat.apply("checkout", info("checkout", "cache", tier="CRITICAL").to_dict())
    assert cat.tier("checkout") == "CRITICAL" and cat.depends_on("checkout") == ("cache",)
    cat.apply("checkout", None)
    assert cat.get("checkout") is None and cat.depends_on("checkout") == ()


def test_declared_and_span_edges_both_count_and_self_calls_do_not() -> None:
    cat = Catalog()
    cat.upsert(info("checkout", "orders"))
    cat.add_edge("checkout", "payments", ts_ms=5)
    cat.add_edge("checkout", "checkout", ts_ms=5)
    assert cat.depends_on("checkout") == ("orders", "payments")


def test_dependencies_are_transitive_and_survive_cycles() -> None:
    cat = Catalog()
    cat.upsert(info("a", "b"))
    cat.upsert(info("b", "c"))
    cat.upsert(info("c", "a"))
    assert cat.dependencies("a") == {"b", "c"}
    assert cat.linked("c", "b")


def test_linked_in_either_direction_but_not_between_siblings() -> None:
    cat = Catalog()
    cat.upsert(info("checkout", "orders"))
    cat.upsert(info("orders", "db"))
    cat.upsert(info("search", "db"))
    assert cat.linked("checkout", "db") and cat.linked("db", "checkout")
    assert cat.linked("db", "db")
    assert not cat.linked("checkout", "search")


def test_cached_closures_follow_changes() -> None:
    cat = Catalog()
    cat.upsert(info("checkout"))
    assert not cat.linked("checkout", "db")
    cat.add_edge("checkout", "db", ts_ms=1)
    assert cat.linked("checkout", "db")
    cat.upsert(info("api", "checkout"))
    assert cat.linked("api", "db")
    cat.remove("api")
    assert not cat.linked("api", "db")


def test_prune_edges_forgets_call_paths_not_seen_lately() -> None:
    cat = Catalog()
    cat.add_edge("checkout", "db", ts_ms=1_000)
    cat.add_edge("checkout", "cache", ts_ms=9_000)
    assert cat.linked("checkout", "db")
    assert cat.prune_edges(older_than_ms=5_000) == 1
    assert not cat.linked("checkout", "db") and cat.linked("checkout", "cache")


def test_most_upstream_picks_the_shared_dependency() -> None:
    cat = Catalog()
    cat.upsert(info("checkout", "orders", "db"))
    cat.upsert(info("orders", "db"))
    cat.upsert(info("search", "index"))
    assert cat.most_upstream(["checkout", "orders", "db"]) == "db"
    assert cat.most_upstream(["checkout", "orders"]) == "orders"
    # Unrelated services: both qualify and nobody depends on either, so the name decides.
    assert cat.most_upstream(["search", "checkout"]) == "checkout"


def test_most_upstream_prefers_more_dependents_then_name() -> None:
    cat = Catalog()
    cat.upsert(info("api", "zdb"))
    cat.upsert(info("web", "zdb"))
    cat.upsert(info("batch", "adb"))
    assert cat.most_upstream(["api", "web", "batch", "zdb", "adb"]) == "zdb"


def test_most_upstream_with_a_cycle_falls_back_to_everyone() -> None:
    cat = Catalog()
    cat.upsert(info("a", "b"))
    cat.upsert(info("b", "a"))
    assert cat.most_upstream(["b", "a"]) == "a"


def test_most_upstream_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no services"):
        Catalog().most_upstream([])


def test_round_trip_keeps_services_and_edges() -> None:
    cat = Catalog()
    cat.upsert(info("checkout", "orders", tier="CRITICAL"))
    cat.add_edge("orders", "db", ts_ms=42)
    again = Catalog.from_dict(json.loads(json.dumps(cat.to_dict())))
    assert again.to_dict() == cat.to_dict()
    assert again.linked("checkout", "db")


NAMES = ["s0", "s1", "s2", "s3", "s4", "s5"]


@given(
    edges=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=12),
    members=st.sets(st.sampled_from(NAMES), min_size=1),
)
def test_most_upstream_is_a_member_independent_of_order_and_a_root_if_one_exists(
    edges: list[tuple[int, int]], members: set[str]
) -> None:
    cat = Catalog()
    # Edges only from a higher index to a lower one: a DAG, so a root always exists.
    for a, b in edges:
        if a > b:
            cat.add_edge(NAMES[a], NAMES[b], ts_ms=0)
    chosen = cat.most_upstream(members)
    assert chosen in members
    assert chosen == cat.most_upstream(sorted(members, reverse=True))
    assert not (cat.dependencies(chosen) & members)
