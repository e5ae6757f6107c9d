# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000

.PHONY: run test lint bench install install-dev browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"

## run: create the virtualenv, install, and start Tolstoy on the embedded default (SQLite + in-process bus)
run: install
	$(BIN)/tolstoy serve --port $(PORT)

## browser: Debian's Chromium for the dashboard tests (Playwright drives it; no browser download)
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

## test: install the dev dependencies and run the whole suite (sqlite+memory and postgres+redis)
test: install-dev browser
	$(BIN)/pytest -q

## lint: ruff and mypy (strict)
lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## bench: the benchmarks; prints a table per benchmark
bench: install-dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
