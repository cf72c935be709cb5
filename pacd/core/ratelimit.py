"""Token bucket for plugin endpoint rate limits (the seed's RateLimit).

The bucket holds at most ``burst_size`` tokens and refills at
``requests_per_minute / 60`` tokens per second. The caller passes the time
(a monotonic clock reading in seconds), so the rule stays pure and testable.
"""

from __future__ import annotations

import math

# Float refill can land a hair below a whole token at exactly the moment
# retry_after promised; this slack keeps that promise without letting more
# than a billionth of a token through.
_SLACK = 1e-9


class TokenBucket:
    def __init__(self, requests_per_minute: int, burst_size: int, now: float | None = None) -> None:
        if requests_per_minute < 1 or burst_size < 1:
            raise ValueError("requests_per_minute and burst_size must be at least 1")
        self.requests_per_minute = requests_per_minute
        self.burst_size = burst_size
        self._rate = requests_per_minute / 60.0
        self._tokens = float(burst_size)
        self._stamp: float | None = now

    @property
    def rate_per_second(self) -> float:
        return self._rate

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (does not consume)."""
        self._refill(now)
        return self._tokens

    def _refill(self, now: float) -> None:
        if self._stamp is None:
            self._stamp = now
            return
        # A clock that goes backwards must not mint tokens, nor move the stamp
        # back (which would mint them later).
        if now > self._stamp:
            self._tokens = min(float(self.burst_size),
                               self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now

    def try_acquire(self, now: float, cost: int = 1) -> bool:
        """Takes ``cost`` tokens if available; False (and takes nothing) otherwise."""
        if cost < 1:
            raise ValueError("cost must be at least 1")
        self._refill(now)
        if self._tokens + _SLACK >= cost:
            self._tokens = max(0.0, self._tokens - cost)
            return True
        return False

    def retry_after(self, now: float, cost: int = 1) -> float:
        """Seconds until ``cost`` tokens are available: 0 if now, inf if never."""
        if cost > self.burst_size:
            return math.inf
        self._refill(now)
        missing = cost - self._tokens
        if missing <= _SLACK:
            return 0.0
        return missing / self._rate
