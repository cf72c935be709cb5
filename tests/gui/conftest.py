import os

# Qt renders offscreen in tests: no display server needed.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
