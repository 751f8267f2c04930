# Two commands on a fresh machine (only Python 3.11+ needed):
#   make run    set up and run Switchman (daemon + console) on the embedded defaults
#   make test   set up and run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench setup setup-dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

setup: $(BIN)/python
	bash scripts/system-deps.sh
	$(BIN)/pip install -q -e ".[gui]"

setup-dev: $(BIN)/python
	bash scripts/system-deps.sh
	$(BIN)/pip install -q -e ".[gui,dev]"

# daemon + console on the embedded defaults (SQLite, simulated providers); on a
# machine without a display it runs the daemon alone in the foreground
run: setup
	$(BIN)/switchman up $(ARGS)

# .pg.env (written by scripts/postgres.sh, which .ci/run calls) points the
# PostgreSQL tests at a server; without it they are skipped
test: setup-dev
	$(BIN)/ruff check .
	if [ -f .pg.env ]; then . ./.pg.env; fi; \
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest

lint: setup-dev
	$(BIN)/ruff check .

bench: setup-dev
	$(BIN)/python tests/bench/bench_proxy.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
