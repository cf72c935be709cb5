"""How the daemon hears "stop": SIGTERM and SIGINT, delivered to its event loop.

POSIX: ``loop.add_signal_handler`` (the loop reads the signal from its wakeup
fd and runs ``stop`` as a callback). Windows' proactor loop does not support
that, and Windows has no SIGTERM from outside: there ``signal.signal`` installs
handlers for SIGINT (Ctrl+C) and SIGBREAK (Ctrl+Break, also what a console
close sends) that only *schedule* ``stop`` with ``call_soon_threadsafe`` —
a Python signal handler runs between bytecodes of the main thread, possibly in
the middle of the loop's own code, and ``call_soon_threadsafe`` also wakes a
proactor blocked in its completion-port wait.

The platform is passed in, so the Windows branch runs (and is tested) here too,
with ``signal.raise_signal``; that Ctrl+C and Ctrl+Break reach a daemon started
by the Windows installer is shown only on Windows.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable


def _windows_signals() -> list[signal.Signals]:
    sigs = [signal.SIGINT, signal.SIGTERM]
    brk = getattr(signal, "SIGBREAK", None)  # Windows only
    if brk is not None:
        sigs.append(brk)
    return sigs


def on_stop_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None],
                    platform: str = sys.platform) -> Callable[[], None]:
    """Have SIGTERM/SIGINT (and SIGBREAK on Windows) call ``stop`` on ``loop``.

    Call from the loop's thread, the main thread. Returns what undoes it.
    """
    if platform != "win32":
        posix = (signal.SIGTERM, signal.SIGINT)
        for sig in posix:
            loop.add_signal_handler(sig, stop)

        def remove_posix() -> None:
            for sig in posix:
                loop.remove_signal_handler(sig)

        return remove_posix

    def handler(signum: int, frame: object) -> None:
        del signum, frame
        loop.call_soon_threadsafe(stop)

    previous = {sig: signal.signal(sig, handler) for sig in _windows_signals()}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
