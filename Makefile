# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint unit bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,dev]"
	@rm -f $(VENV)/.installed-* && touch $@

## demo: install, then tell the whole story on a temporary sqlite registry
demo: $(STAMP)
	@$(BIN)/mlflow-approvals demo

## test: install what the tests need, check style and types, run the suite
test: $(STAMP) lint
	@$(BIN)/python -m pytest -q

## lint: ruff and mypy
lint: $(STAMP)
	@$(BIN)/ruff check src tests benchmarks
	@$(BIN)/ruff format --check src tests benchmarks
	@$(BIN)/mypy

## bench: the benchmarks (they print ratios against plain MlflowClient, measured in the same run)
bench: $(STAMP)
	@$(BIN)/python benchmarks/cycle.py
	@$(BIN)/python benchmarks/cli_startup.py
	@$(BIN)/python benchmarks/audit_verify.py
	@$(BIN)/python benchmarks/evidence.py
	@$(BIN)/python benchmarks/server.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
