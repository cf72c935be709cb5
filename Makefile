SHELL := /bin/sh
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: test run bench lint system-deps doctor-deps package freeze test-deb clean

system-deps:
	@scripts/install-system-deps

# Every program pacd and its tests run is here and comes from a package that
# system-deps installs (fails, rather than skips, what is missing).
doctor-deps: $(STAMP)
	CI=true $(PY) -m pytest -q tests/system/test_system_deps.py

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check pacd gui tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider tests/test_suite_hygiene.py

test: system-deps $(STAMP) lint
	scripts/dev-session $(PY) -m pytest $(PYTEST_ARGS)

run: system-deps $(STAMP)
	scripts/run-dev

bench: system-deps $(STAMP)
	scripts/dev-session $(PY) -m bench

# dist/pacd_<version>_<arch>.deb (the wheel in a private venv under /usr/lib/pacd)
# and the frozen one-dir bundles (make freeze)
package: system-deps $(STAMP) freeze
	packaging/linux/build-deb

# dist/freeze/pacd/pacd (daemon and CLI) and dist/freeze/pacd-tray/pacd-tray:
# PyInstaller one-dir bundles of this platform, built offline from the venv
FREEZE := $(VENV)/bin/pyinstaller --noconfirm --log-level WARN --distpath dist/freeze --workpath build/freeze
freeze: $(STAMP)
	$(FREEZE) packaging/freeze/pacd.spec
	$(FREEZE) packaging/freeze/pacd-tray.spec

# Builds, lints, installs, socket-activates and purges the .deb on this host (root).
test-deb: system-deps $(STAMP)
	scripts/dev-session packaging/linux/test-deb

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
