"""What both PyInstaller specs share: the tree's root and what never goes in a bundle.

Imported by ``pacd.spec`` and ``pacd-tray.spec`` (PyInstaller runs a spec as
Python with its own directory in ``SPECPATH``).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: the test and lint tools that share the build venv, and standard-library parts
#: pacd does not use: left out so a one-dir build stays small and quick
EXCLUDES = [
    "tkinter", "_tkinter", "turtle", "idlelib", "pydoc_data", "lib2to3", "unittest",
    "pytest", "_pytest", "pytestqt", "hypothesis", "mypy", "ruff", "importlinter",
    "grimp", "schemathesis", "openapi_spec_validator", "jsonschema", "build", "pipx",
    "setuptools", "pkg_resources", "pip", "IPython", "matplotlib", "numpy",
    "dbusmock", "dbus_fast",
    # yarl imports pydantic only if it is there (it is, in the build venv)
    "pydantic", "pydantic_core",
]

#: Qt modules the tray does not load (PySide6's hook would otherwise collect them)
QT_EXCLUDES = [
    # QtNetwork stays: the tray keeps one instance per user with QLocalServer
    "PySide6.QtQml", "PySide6.QtQuick", "PySide6.QtOpenGL",
    "PySide6.QtSql", "PySide6.QtTest", "PySide6.QtXml", "PySide6.QtPdf",
    "PySide6.QtMultimedia", "PySide6.QtWebEngineCore", "PySide6.QtDesigner",
    "PySide6.QtConcurrent", "PySide6.QtDBus", "PySide6.QtPrintSupport",
]
