"""The machine's load average around a benchmark: other work moves every number."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


def load() -> str:
    """1/5/15-minute load averages, as ``0.52/0.61/0.70``."""
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def reports_load(main: Callable[P, T]) -> Callable[P, T]:
    """``main`` printing the load average before it starts and after it ends
    (also when it fails: a failed run on a busy machine says so)."""

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        print(f"load average before: {load()} ({os.cpu_count()} CPUs)", flush=True)
        try:
            return main(*args, **kwargs)
        finally:
            print(f"load average after: {load()}", flush=True)

    return wrapper
