"""``python -m pacd``: the same as the ``pacd`` command."""

from pacd.cli import main

raise SystemExit(main())
