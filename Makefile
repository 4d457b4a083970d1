# Two commands: `make demo` runs the main job on the embedded default, `make test` runs the test suite.
# Both install everything they need first (uv + the locked dependencies into .venv).
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV := .venv

.PHONY: setup demo test lint bench

setup:
	@command -v uv >/dev/null 2>&1 || test -x $(UV) || $(PYTHON) -m pip install --user --quiet uv==0.13.8 \
		|| $(PYTHON) -m pip install --user --quiet --break-system-packages uv==0.13.8  # PEP 668 distro Pythons
	@# Bytecode compiled once here (pip does this, uv does not): without it every process compiles its imports
	@# from source where PYTHONDONTWRITEBYTECODE is set (importing airflow: 4.6-5.2 CPU s, not 2.4; pandas 1.9, not 0.6).
	$(UV) sync --frozen --compile-bytecode --python 3.11
	@# The audit page is tested in a real headless browser (Debian's chromium) and infra/deploy/compose.yaml by a
	@# real compose client (Debian's docker-compose, without the Docker engine: `config` needs none), each
	@# installed only where it is missing and apt-get exists (CI runs as root on a fresh machine); elsewhere
	@# install them by hand. The owner's Spark path (pyspark, locked) runs on a JDK 17+ whose javac builds the
	@# KMS client (sdk/spark): Debian's openjdk-17-jdk-headless likewise. One `apt-get update` for all.
	@command -v apt-get >/dev/null 2>&1 || exit 0; \
	browser=1; command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || browser=; \
	compose=1; command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || compose=; \
	jdk=1; command -v javac >/dev/null 2>&1 || jdk=; \
	test -n "$$browser" -a -n "$$compose" -a -n "$$jdk" || apt-get update -q || exit 1; \
	test -n "$$browser" || DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || exit 1; \
	test -n "$$jdk" || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		openjdk-17-jdk-headless || exit 1; \
	test -n "$$compose" || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose

demo: setup
	$(VENV)/bin/cscore demo

test: setup
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: setup
	$(VENV)/bin/cscore bench
