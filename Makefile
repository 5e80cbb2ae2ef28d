# Two entry points: `make demo` (set up, train, serve, simulate, print the table) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := edge,cloud,train,dev

.PHONY: demo test setup lint clean

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

clean:
	rm -rf $(VENV) artifacts .cache .pytest_cache .mypy_cache .ruff_cache
