"""pacd.app's executable on macOS (the tray bundle's entry in packaging/freeze/pacd-tray.spec).

Each start first has the daemon's LaunchAgent written and loaded
(:func:`pacd.launchagent.first_start`: a no-op once it is), so launchd holds
the 0600 owner socket and starts ``Contents/MacOS/pacd/pacd daemon`` on the
first connection; then it runs the tray. A LaunchAgent that cannot be loaded
is reported and the tray starts anyway: it shows the daemon as down and offers
to start it. Runs only on macOS; it has not been run on a Mac yet (README).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pacd import launchagent
from pacd.config import load_config
from pacd.errors import PacdError


def main() -> int:
    if sys.platform == "darwin":
        try:
            launchagent.first_start(Path.home(), load_config().socket, os.getuid(),
                                    launchagent.daemon_command())
        except PacdError as exc:
            print(f"pacd: the daemon's LaunchAgent could not be loaded: {exc.message}",
                  file=sys.stderr)
    from gui.launch import main as tray_main

    return tray_main()


if __name__ == "__main__":
    raise SystemExit(main())
