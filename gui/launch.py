"""``pacd-tray``: starts the tray, or says how to get Qt when it is missing.

The tray's Qt (PySide6) is the ``gui`` extra, so a plain ``pipx install pacd``
has the daemon and CLI but no Qt; this says so instead of a traceback.
"""

from __future__ import annotations

import sys

QT_MISSING_EXIT = 2


def main() -> int:
    try:
        from gui import tray
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("PySide6", "shiboken6"):
            raise
        print("pacd-tray: Qt (PySide6) is not installed; install pacd with its gui extra, "
              "e.g. pipx install 'pacd[gui]'", file=sys.stderr)
        return QT_MISSING_EXIT
    return tray.main()


if __name__ == "__main__":
    raise SystemExit(main())
