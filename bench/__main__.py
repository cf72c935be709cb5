"""Run every benchmark (``make bench``), or the ones named on the command line."""

from __future__ import annotations

import importlib
import sys
import time

BENCHES = ("vault_bench", "audit_bench", "api_bench", "start_bench", "agent_bench",
           "soak_bench", "tray_bench")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    failed = []
    for name in names:
        print(f"== {name} ==", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            module.main()
        except Exception as exc:  # report and go on: one broken bench must not hide the others
            failed.append(name)
            print(f"{name} FAILED: {type(exc).__name__}: {exc}", flush=True)
        print(f"({name}: {time.perf_counter() - started:.1f} s)\n", flush=True)
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
