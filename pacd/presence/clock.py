"""Time sources for presence checks.

Two clocks on purpose: a monotonic one that a changed system time cannot move
(expiry while the process runs) and the wall clock (expiry stored across
restarts, and times shown to people).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class SettableClock:
    """A clock moved by hand, for deterministic tests and simulations."""

    def __init__(self, wall: float = 1_700_000_000.0, monotonic: float = 1000.0) -> None:
        self._wall = wall
        self._monotonic = monotonic

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        """Real time passes: both clocks move forward."""
        if seconds < 0:
            raise ValueError("time only moves forward; use set_wall for a clock change")
        self._monotonic += seconds
        self._wall += seconds

    def set_wall(self, wall: float) -> None:
        """Someone changed the system time: only the wall clock jumps."""
        self._wall = wall
