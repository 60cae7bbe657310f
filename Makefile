# Keel's developer commands. `make` alone lists them. Everything runs from the project's .venv, which the
# first command that needs it creates and fills.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Touched after a successful install: pip runs again only when pyproject.toml is newer than this.
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The real AI SDK client (npm packages `ai` 5 and 6) for tests/test_ai_sdk_client.py, in a git-ignored
# node_modules; npm runs again only when package.json or its lock is newer than this stamp.
NODE_DIR := tests/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
# The Next.js example, installed and built for tests/test_nextjs_example.py: npm ci runs again only when its
# package files are newer than the first stamp, `next build` only when its sources are newer than the second.
NEXT_APP := examples/nextjs-chat
NEXT_APP_INSTALLED := $(NEXT_APP)/node_modules/.installed
NEXT_APP_BUILT := $(NEXT_APP)/.next/.keel-built
# `[...path]` (the proxy's folder) is a glob to make: its brackets are escaped.
NEXT_APP_SOURCES := $(shell find $(NEXT_APP)/app -type f 2>/dev/null | sed 's/[][]/\\&/g') $(NEXT_APP)/next.config.mjs
# What `make dev` uses for its state (same default as keel.settings).
DATA_DIR := $(or $(KEEL_DATA_DIR),.keel)

.DEFAULT_GOAL := help
.PHONY: help .venv install node-deps nextjs-example promtool dev test lint fmt docs bench clean reset-data

help:
	@echo "make dev         install if needed, then run Temporal, PostgreSQL, worker and gateway (Ctrl-C stops all)"
	@echo "make test        install if needed, then run pytest (extra arguments: PYTEST_ARGS='-k name -x')"
	@echo "make nextjs-example  npm ci and next build in examples/nextjs-chat (make test does it; cached)"
	@echo "make lint        ruff check, ruff format --check and mypy --strict (make test runs ruff check and mypy too)"
	@echo "make fmt         apply ruff's formatting and safe fixes"
	@echo "make docs        build the manual (docs/, mkdocs.yml) offline, strict, into site/"
	@echo "make bench       run the benchmarks (bench/)"
	@echo "make install     create .venv and install Keel with its dev and docs extras (also: make .venv)"
	@echo "make clean       remove .venv and caches; keeps $(DATA_DIR)/"
	@echo "make reset-data  delete $(DATA_DIR)/: every run, the database, Temporal's history (no confirmation)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[dev,docs]'
	touch $@

.venv install: $(STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json $(wildcard $(NODE_DIR)/package-lock.json)
	cd $(NODE_DIR) && if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
	touch $@

# Without npm the AI SDK client tests skip themselves (and fail under CI=true), saying why.
node-deps:
	@if command -v npm >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory -s $(NODE_STAMP); \
	else \
		echo "npm not found: the AI SDK client tests will be skipped"; \
	fi

$(NEXT_APP_INSTALLED): $(NEXT_APP)/package.json $(NEXT_APP)/package-lock.json
	cd $(NEXT_APP) && npm ci --no-audit --no-fund
	touch $@

# NEXT_TELEMETRY_DISABLED: the build reports nothing anywhere; the app has no web fonts to fetch either.
$(NEXT_APP_BUILT): $(NEXT_APP_INSTALLED) $(NEXT_APP_SOURCES)
	cd $(NEXT_APP) && NEXT_TELEMETRY_DISABLED=1 ./node_modules/.bin/next build
	touch $@

# Without npm the example's tests skip themselves (and fail under CI=true), saying why.
nextjs-example:
	@if command -v npm >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory -s $(NEXT_APP_BUILT); \
	else \
		echo "npm not found: the Next.js example's tests will be skipped"; \
	fi

# promtool (Debian's `prometheus` package) checks and unit-tests deploy/prometheus/alerts.yml
# (tests/test_alert_rules.py). Installed with apt-get when missing and this is root on Debian; otherwise the
# alert rule tests skip themselves (and fail under CI=true), saying why. The package's own service is not
# started in a container without systemd; elsewhere `systemctl disable --now prometheus` if unwanted.
promtool:
	@if command -v promtool >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing promtool (apt-get install prometheus)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
		  { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; } || \
		echo "could not install promtool: the alert rule tests will be skipped"; \
	else \
		echo "promtool not found (apt-get install prometheus): the alert rule tests will be skipped"; \
	fi

dev: $(STAMP)
	$(PY) -m keel.stack.dev

# pytest exits 5 when it collects no tests; that stays a failure, so CI can't pass with an empty suite.
# ruff and mypy (strict, [tool.mypy] in pyproject.toml) run first: a lint or type error fails the suite
# like a failing test does.
test: $(STAMP) node-deps nextjs-example promtool
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# --strict: a warning fails the build (a broken link between pages, a missing anchor, a page left out of the
# nav). Nothing is fetched: Material's web fonts are off in mkdocs.yml. The generated reference pages
# (configuration, HTTP API, CLI) are written by docs/hooks/reference.py as the build runs.
# NO_MKDOCS_2_WARNING: Material's banner about its own future, which is not about this build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Not part of `make test`: about 10-12 minutes on 2 cores; writes bench/results/latest.md and latest.json.
bench: $(STAMP)
	$(PY) -m bench

# Keeps $(DATA_DIR) on purpose: it holds your runs, conversations and Temporal history. See reset-data.
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache site build *.egg-info $(NODE_DIR)/node_modules \
		$(NEXT_APP)/node_modules $(NEXT_APP)/.next
	find . -path ./$(DATA_DIR) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# Deletes all local state at once, without asking. Stop `make dev` first: the data dir is in use while it runs.
reset-data:
	rm -rf $(DATA_DIR)
