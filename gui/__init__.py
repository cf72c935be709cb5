"""The pacd tray app (PySide6). Talks to the daemon only through pacd.client."""
