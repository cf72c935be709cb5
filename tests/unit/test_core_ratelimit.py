from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacd.core.ratelimit import TokenBucket


def test_burst_then_refill_at_the_rate() -> None:
    bucket = TokenBucket(60, 10, now=0.0)  # one token per second
    assert bucket.rate_per_second == 1.0
    assert [bucket.try_acquire(0.0) for _ in range(11)] == [True] * 10 + [False]
    assert bucket.retry_after(0.0) == pytest.approx(1.0)
    assert not bucket.try_acquire(0.5)
    assert bucket.retry_after(0.5) == pytest.approx(0.5)
    assert bucket.try_acquire(1.0)
    assert not bucket.try_acquire(1.0)
    assert bucket.tokens(100.0) == 10.0  # never above the burst


def test_first_use_starts_full_when_no_start_time_is_given() -> None:
    bucket = TokenBucket(6, 2)
    assert bucket.try_acquire(1000.0)
    assert bucket.try_acquire(1000.0)
    assert not bucket.try_acquire(1000.0)
    assert bucket.retry_after(1000.0) == pytest.approx(10.0)


def test_cost_and_retry_after_edges() -> None:
    bucket = TokenBucket(120, 4, now=0.0)
    assert bucket.retry_after(0.0, cost=4) == 0.0
    assert bucket.retry_after(0.0, cost=5) == math.inf
    assert not bucket.try_acquire(0.0, cost=5)
    assert bucket.try_acquire(0.0, cost=3)
    assert not bucket.try_acquire(0.0, cost=2)  # a refused request takes nothing
    assert bucket.tokens(0.0) == pytest.approx(1.0)
    wait = bucket.retry_after(0.0, cost=2)
    assert wait == pytest.approx(0.5)
    assert bucket.try_acquire(wait, cost=2)  # retry_after is a promise that holds
    with pytest.raises(ValueError):
        bucket.try_acquire(1.0, cost=0)


def test_clock_going_backwards_mints_nothing() -> None:
    bucket = TokenBucket(60, 1, now=10.0)
    assert bucket.try_acquire(10.0)
    assert not bucket.try_acquire(5.0)
    assert not bucket.try_acquire(10.5)  # the stamp stayed at 10, not 5
    assert bucket.try_acquire(11.0)


@pytest.mark.parametrize(("rpm", "burst"), [(0, 1), (1, 0), (-5, 10)])
def test_invalid_limits_are_refused(rpm: int, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rpm, burst)


@given(
    st.integers(1, 600),
    st.integers(1, 50),
    st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.integers(1, 5)), max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rpm: int, burst: int, steps: list[tuple[float, int]]
) -> None:
    bucket = TokenBucket(rpm, burst, now=0.0)
    now = 0.0
    granted = 0
    for dt, cost in steps:
        now += dt
        if bucket.try_acquire(now, cost):
            granted += cost
        assert granted <= burst + rpm / 60.0 * now + 1e-6
        assert 0.0 <= bucket.tokens(now) <= burst


@given(st.integers(1, 600), st.integers(1, 50), st.floats(0, 100, allow_nan=False),
       st.integers(1, 50))
def test_retry_after_is_exact(rpm: int, burst: int, start: float, cost: int) -> None:
    bucket = TokenBucket(rpm, burst, now=0.0)
    while bucket.try_acquire(start):
        pass
    wait = bucket.retry_after(start, cost)
    if cost > burst:
        assert wait == math.inf
        return
    assert wait > 0
    if wait * bucket.rate_per_second > 1e-6:  # half-way there is still too early
        assert not bucket.try_acquire(start + wait / 2, cost)
    assert bucket.try_acquire(start + wait, cost)
