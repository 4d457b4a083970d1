# Two commands: `make demo` runs the main job on the embedded default, `make test` runs the test suite.
# Both install everything they need first (uv + the locked dependencies into .venv).
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV := .venv

.PHONY: setup demo test lint bench

setup:
	@command -v uv >/dev/null 2>&1 || test -x $(UV) || $(PYTHON) -m pip install --user --quiet uv==0.13.8 \
		|| $(PYTHON) -m pip install --user --quiet --break-system-packages uv==0.13.8  # PEP 668 distro Pythons
	$(UV) sync --frozen --python 3.11
	@# The audit page is tested in a real headless browser: Debian's chromium, installed only where it is
	@# missing and apt-get exists (CI runs as root on a fresh machine); elsewhere install it by hand.
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
		|| ! command -v apt-get >/dev/null 2>&1 \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

demo: setup
	$(VENV)/bin/cscore demo

test: setup
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: setup
	$(VENV)/bin/cscore bench
