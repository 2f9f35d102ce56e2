import itertools
import json
import random

from pipeline.watermark import WatermarkMerge

SKEW = 1_000_000


def origin_streams(seed: int) -> dict[str, list[tuple[str, int]]]:
    """Two alert partitions: each a sequence of ("t", clock) and ("a", alert time) records,
    alerts dated between the clock before and after them."""
    rng = random.Random(seed)
    streams = {}
    for origin in ("alerts/0", "alerts/1"):
        clock, records = 0, [("t", 0)]
        for _ in range(40):
            clock += rng.choice((10, 10, 20))
            records += [("a", clock - rng.randrange(10))] * rng.randrange(3) + [("t", clock)]
        streams[origin] = records
    return streams


def feed(merge: WatermarkMerge, order: list[tuple[str, int, tuple[str, int]]]) -> list:
    out = []
    for origin, number, (kind, ts) in order:
        if kind == "t":
            merge.clock(origin, number, ts, [origin, kind, ts])
        else:
            merge.hold(origin, number, [origin, kind, ts])
        out += merge.ready()
    return out


def interleaving(streams: dict[str, list[tuple[str, int]]], seed: int) -> list:
    """The streams merged in a random arrival order, each origin's own order kept, after
    every origin's first record (an origin holds others back from its first record on)."""
    rng = random.Random(seed)
    queues = {o: list(enumerate(records, 1)) for o, records in streams.items()}
    order = [(origin, *queue.pop(0)) for origin, queue in queues.items()]
    while any(queues.values()):
        origin = rng.choice([o for o, q in queues.items() if q])
        number, record = queues[origin].pop(0)
        order.append((origin, number, record))
    return order


def test_release_order_does_not_depend_on_arrival_order() -> None:
    streams = origin_streams(seed=1)
    outcomes = []
    for seed in range(20):
        merge = WatermarkMerge(SKEW)
        outcomes.append(feed(merge, interleaving(streams, seed)) + merge.drain())
    assert all(o == outcomes[0] for o in outcomes)
    assert len(outcomes[0]) == sum(len(r) for r in streams.values())  # nothing lost


def test_a_record_is_released_only_when_every_origin_has_passed_it() -> None:
    merge = WatermarkMerge(SKEW)
    merge.clock("alerts/0", 1, 100, "t0")
    merge.hold("alerts/0", 2, "a0")
    assert merge.ready() == []  # alerts/0 is the only origin, and not past 100 yet
    merge.clock("alerts/1", 1, 250, "t1")
    assert merge.ready() == []  # the watermark is 100: alerts/0 may still send at 100
    merge.clock("alerts/0", 3, 300, "t0'")
    assert merge.ready() == ["t0", "a0"]  # alerts/1 may still send at 250
    assert merge.watermark() == 250 and len(merge) == 2


def test_a_lagging_origin_holds_back_no_more_than_the_skew() -> None:
    merge = WatermarkMerge(max_skew_ms=60)
    merge.clock("alerts/0", 1, 10, "quiet")  # never speaks again
    merge.clock("alerts/1", 1, 50, "a")
    assert merge.ready() == []
    merge.clock("alerts/1", 2, 80, "b")
    assert merge.ready() == ["quiet"]  # 80 - 60 = 20 > 10
    merge.clock("alerts/1", 3, 200, "c")
    assert merge.ready() == ["a", "b"]


def test_feedback_applies_after_everything_announced_before_it() -> None:
    merge = WatermarkMerge(SKEW)
    merge.clock("alerts/0", 1, 100, "t")
    merge.hold_now("feedback/0", 7, "ack")
    merge.hold("alerts/0", 2, "alert")  # stamped 100, the origin's clock: before the ack
    merge.clock("alerts/0", 3, 110, "t'")
    assert merge.ready() == ["t", "alert", "ack"]
    assert merge.watermark() == 110  # feedback has no clock of its own


def test_snapshot_round_trip_keeps_order_and_clocks() -> None:
    streams = origin_streams(seed=2)
    order = interleaving(streams, seed=3)
    straight = WatermarkMerge(SKEW)
    expected = feed(straight, order) + straight.drain()
    for cut in (5, len(order) // 2, len(order) - 1):
        first = WatermarkMerge(SKEW)
        out = feed(first, order[:cut])
        again = WatermarkMerge.from_dict(json.loads(json.dumps(first.to_dict())), SKEW)
        out += feed(again, order[cut:]) + again.drain()
        assert out == expected


def test_nothing_is_released_before_any_origin_has_a_clock() -> None:
    merge = WatermarkMerge(SKEW)
    merge.hold("alerts/0", 1, "first")
    assert merge.ready() == [] and merge.drain() == ["first"]
    assert list(itertools.chain(merge.ready(), merge.drain())) == []


def any_interleaving(streams: dict[str, list[tuple[str, int]]], seed: int) -> list:
    """The streams merged in a random arrival order, each origin's own order kept; an
    origin may first speak after the others have sent everything."""
    rng = random.Random(seed)
    queues = {o: list(enumerate(records, 1)) for o, records in streams.items()}
    order = []
    while any(queues.values()):
        origin = rng.choice([o for o, q in queues.items() if q])
        number, record = queues[origin].pop(0)
        order.append((origin, number, record))
    order.sort(key=lambda entry: entry[0] == "alerts/1" and seed % 3 == 0)  # alerts/1 last
    return order


def test_an_expected_origin_is_waited_for_however_late_it_first_speaks() -> None:
    streams = origin_streams(seed=4)
    outcomes = []
    for seed in range(21):
        merge = WatermarkMerge(SKEW, expected=streams)
        outcomes.append(feed(merge, any_interleaving(streams, seed)) + merge.drain())
    assert all(o == outcomes[0] for o in outcomes)
    assert len(outcomes[0]) == sum(len(r) for r in streams.values())


def test_an_origin_said_quiet_holds_nothing_back_until_it_speaks() -> None:
    merge = WatermarkMerge(SKEW, expected=("alerts/0", "alerts/1"))
    merge.clock("alerts/0", 1, 100, "t")
    merge.clock("alerts/0", 2, 200, "t'")
    assert merge.ready() == [] and merge.waiting() == {"alerts/1"}
    merge.quiet(["alerts/1"])  # nothing upstream of it: a partition without services
    assert merge.ready() == ["t"]
    merge.quiet([])  # input for it arrived upstream: it may speak, from where it is
    merge.clock("alerts/0", 3, 300, "t''")
    assert merge.ready() == []
    merge.clock("alerts/1", 1, 250, "u")
    assert merge.ready() == ["t'"] and merge.waiting() == frozenset()


def test_records_sort_by_their_own_time_whatever_clock_their_origin_had_announced() -> None:
    # Seen in the fault tests: how far each alert partition had announced its time when
    # an alert was made depends on how its input was batched; the alerts' order must not.
    outcomes = set()
    for clock_1, clock_3 in ((165, 165), (115, 165), (165, 145)):
        merge = WatermarkMerge(SKEW, expected=("alerts/1", "alerts/3"))
        merge.clock("alerts/1", 1, clock_1, "t1")
        merge.hold("alerts/1", 2, "ErrorRatioHigh", at=225)
        merge.clock("alerts/3", 1, clock_3, "t3")
        merge.hold("alerts/3", 2, "CpuHot", at=175)
        merge.clock("alerts/1", 3, 500, "t1'")
        merge.clock("alerts/3", 3, 500, "t3'")
        outcomes.add(tuple(r for r in merge.ready() if not r.startswith("t")))
    assert outcomes == {("CpuHot", "ErrorRatioHigh")}
