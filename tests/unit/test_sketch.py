"""QuantileSketch: error bound against numpy, exact merges, bounded size, serialisation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.sketch import ALPHA, MAX_BUCKETS, QuantileSketch, bucket_codes, code_values

QS = (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)

# Within the span the sketch keeps unfolded (about 2e13 between smallest and largest
# magnitude), every quantile is within ALPHA; 1e-6..1e6 stays well inside it.
magnitudes = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)
values_strategy = st.lists(
    st.one_of(magnitudes, magnitudes.map(lambda x: -x), st.just(0.0)), min_size=1, max_size=300
)
wide_values = st.lists(
    st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64),
    min_size=0,
    max_size=200,
)


def sketch_of(values: list[float] | np.ndarray) -> QuantileSketch:
    sketch = QuantileSketch()
    sketch.add_many(np.asarray(values, dtype=np.float64))
    return sketch


@settings(max_examples=150, deadline=None)
@given(values_strategy, st.floats(min_value=0.0, max_value=1.0))
def test_quantiles_within_one_percent_of_numpy_lower(values: list[float], q: float) -> None:
    data = np.array(values)
    sketch = sketch_of(data)
    for quantile in (*QS, q):
        # method='lower' is the rank floor(q * (n - 1)) the sketch answers for.
        true = float(np.quantile(data, quantile, method="lower"))
        estimate = sketch.quantile(quantile)
        assert abs(estimate - true) <= 0.01 * abs(true), (quantile, true, estimate)


def test_relative_error_on_a_large_seeded_sample_is_under_alpha() -> None:
    rng = np.random.default_rng(7)
    data = rng.lognormal(mean=-3.0, sigma=2.0, size=200_000)
    sketch = sketch_of(data)
    assert sketch.count == data.size
    estimates = sketch.quantiles(QS)
    truth = np.quantile(data, QS, method="lower")
    assert np.all(np.abs(estimates - truth) <= ALPHA * 1.0001 * truth)
    assert sketch.quantile(0.0) == data.min() and sketch.quantile(1.0) == data.max()


@settings(max_examples=100, deadline=None)
@given(wide_values, wide_values, wide_values)
def test_merge_is_exact_commutative_and_associative(
    a: list[float], b: list[float], c: list[float]
) -> None:
    whole = sketch_of(a + b + c)
    left = sketch_of(a)
    left.merge(sketch_of(b))
    left.merge(sketch_of(c))
    right = sketch_of(c)
    bc = sketch_of(b)
    bc.merge(sketch_of(a))
    right.merge(bc)
    assert left == whole
    assert right == whole


@settings(max_examples=100, deadline=None)
@given(wide_values)
def test_bytes_round_trip(values: list[float]) -> None:
    sketch = sketch_of(values)
    again = QuantileSketch.from_bytes(sketch.to_bytes())
    assert again == sketch
    if values:
        assert np.array_equal(again.quantiles(QS), sketch.quantiles(QS))


def test_size_is_bounded_and_only_the_smallest_values_lose_accuracy() -> None:
    rng = np.random.default_rng(11)
    outliers = np.geomspace(1e-300, 1e-30, 500)
    data = np.concatenate([outliers, rng.lognormal(0.0, 3.0, 100_000)])
    sketch = sketch_of(data)
    codes, counts = sketch.buckets()
    assert codes.size <= MAX_BUCKETS
    assert counts.sum() == data.size
    assert sketch.quantile(0.001) > 1e-30  # folded upwards
    for q in (0.05, 0.5, 0.9, 0.99):
        true = float(np.quantile(data, q, method="lower"))
        assert abs(sketch.quantile(q) - true) <= 0.01 * true
    assert len(sketch.to_bytes()) < 12 * MAX_BUCKETS


def test_negative_store_is_bounded_too() -> None:
    data = -np.geomspace(1e-300, 1e300, 50_000)
    sketch = sketch_of(data)
    assert sketch.buckets()[0].size <= MAX_BUCKETS
    true = float(np.quantile(data, 0.0001, method="lower"))
    assert abs(sketch.quantile(0.0001) - true) <= 0.01 * abs(true)


def test_bucket_estimates_are_within_alpha_of_every_member() -> None:
    rng = np.random.default_rng(3)
    spread = np.exp(rng.uniform(-700, 700, 10_000))
    values = np.concatenate([rng.uniform(-1e9, 1e9, 10_000), spread])
    estimates = code_values(bucket_codes(values))
    assert np.all(np.abs(estimates - values) <= ALPHA * 1.000001 * np.abs(values))


def test_zero_and_tiny_values_share_the_zero_bucket() -> None:
    codes = bucket_codes(np.array([0.0, -0.0, 1e-320, 1.0, -1.0]))
    assert codes[0] == codes[1] == codes[2] == 0
    assert codes[3] > 0 > codes[4] and codes[3] == -codes[4]


def test_count_at_most_answers_latency_slis() -> None:
    sketch = sketch_of(np.linspace(0.001, 1.0, 1000))
    assert sketch.count_at_most(0.3) in range(298, 303)
    assert sketch.count_at_most(2.0) == 1000
    assert sketch.count_at_most(0.0) == 0


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="empty"):
        QuantileSketch().quantile(0.5)
    with pytest.raises(ValueError, match="finite"):
        QuantileSketch().add_many(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="not a serialised sketch"):
        QuantileSketch.from_bytes(b"x" * 40)


def test_docstring_examples_run() -> None:
    import doctest

    import pipeline.sketch

    assert doctest.testmod(pipeline.sketch).failed == 0
