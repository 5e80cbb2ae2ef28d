# Two entry points: `make demo` (set up, train, serve, simulate, print the table) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := edge,cloud,train,dev

.PHONY: demo test test-install setup lint clean

$(BIN)/tandem: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; install Python 3.11 or run make PY=/path/to/python3.11"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	@touch $@

setup: $(BIN)/tandem

demo: setup
	$(BIN)/tandem data
	$(BIN)/tandem demo --dataset ml-100k

lint: setup
	$(BIN)/ruff check tandem_contract tandemrec cloud_service edge_client tests bench scripts
	$(BIN)/mypy tandem_contract tandemrec cloud_service edge_client
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q

# Fresh venvs outside the checkout (minutes, from the package index): the edge extra alone on
# Python 3.10 and 3.13 (no torch, typer, rich or yaml; the SDK's tests pass), and the wheel's CLI.
test-install: setup
	TANDEM_VENV_TESTS=1 $(BIN)/python -m pytest -q tests/integration/test_install.py

clean:
	rm -rf $(VENV) artifacts .cache .pytest_cache .mypy_cache .ruff_cache
