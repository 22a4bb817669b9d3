# Two commands for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FLASK := $(BIN)/flask --app app
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run test test-fast test-postgres assets venv deps test-deps browser db demo bench clean

run: deps assets db demo
	$(FLASK) run --host $(HOST) --port $(PORT)

test: test-deps assets browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The suite without the browser tests, for a quick loop.
test-fast: test-deps assets
	$(BIN)/python -m pytest -m "not browser" $(PYTEST_ARGS)

# The same suite on PostgreSQL (each run makes and drops its own database).
test-postgres: test-deps assets browser
	DATABASE_URL=$${DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test} $(BIN)/python -m pytest $(PYTEST_ARGS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python

# Re-install only when pyproject.toml changes.
$(VENV)/.deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(VENV)/.deps $@

deps: $(VENV)/.deps
test-deps: $(VENV)/.test-deps

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# htmx and Pico come from npm at set-up time; they are never committed.
assets: node_modules/.installed
	mkdir -p spheremail/static/vendor
	cp node_modules/htmx.org/dist/htmx.min.js spheremail/static/vendor/htmx.min.js
	cp node_modules/@picocss/pico/css/pico.min.css spheremail/static/vendor/pico.min.css

# Debian's Chromium for the Playwright browser tests (Playwright's own download cannot work here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

db: deps
	$(FLASK) db upgrade

demo: deps
	$(FLASK) seed-demo

bench: test-deps assets
	$(BIN)/python bench/pages.py
	$(BIN)/python bench/bill_run.py
	$(BIN)/python bench/officernd_sync.py
	$(BIN)/python bench/nexudus_export.py

clean:
	rm -rf $(VENV) node_modules spheremail/static/vendor
