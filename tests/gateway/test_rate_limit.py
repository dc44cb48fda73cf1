"""The per-key token bucket, on a fake clock."""

from __future__ import annotations

import pytest

from gateway.rate_limit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_lets_a_burst_through_then_says_when_the_next_token_comes() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    clock.now += 0.25
    assert limiter.take("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.take("a") == 0.0


def test_tokens_refill_at_the_rate_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=10.0, burst=2, clock=clock)
    limiter.take("a"), limiter.take("a")
    clock.now += 60.0  # a long pause fills the bucket to the burst, not beyond
    assert [limiter.take("a") for _ in range(3)][2] > 0.0


def test_an_empty_bucket_does_not_slow_another_key() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=FakeClock())
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0.0
    assert limiter.take("b") == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (1.0, 0)])
def test_a_limit_that_lets_nothing_through_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        RateLimiter(rate, burst)
