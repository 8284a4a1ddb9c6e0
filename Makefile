# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint unit bench clean compat

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
	@$(BIN)/python -c "import mlflow; print('MLflow', mlflow.__version__)"
	@$(BIN)/python -m pytest -q

## compat: the core client, audit and CLI tests on the oldest MLflow line claimed (2.22), in its
## own virtual environment (`make test` runs on the newest MLflow 3.x that pip resolves)
COMPAT_VENV ?= .venv-mlflow2
COMPAT_PINS ?= "mlflow[auth]==2.22.*" "sqlalchemy<2.1"
COMPAT_STAMP := $(COMPAT_VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
COMPAT_TESTS := tests/test_client.py tests/test_lifecycle.py tests/test_policy.py \
	tests/test_audit_events.py tests/test_audit_intent.py tests/test_audit_verify.py \
	tests/test_audit_reconcile.py tests/test_verify_hostile.py tests/test_facts_hostile.py \
	tests/test_hardening.py tests/test_names.py tests/test_break_glass.py \
	tests/test_cli.py tests/test_cli_render.py tests/test_server_version.py

$(COMPAT_STAMP): pyproject.toml Makefile
	@test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	@$(COMPAT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(COMPAT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]" $(COMPAT_PINS)
	@rm -f $(COMPAT_VENV)/.installed-* && touch $@

compat: $(COMPAT_STAMP)
	@$(COMPAT_VENV)/bin/python -c "import mlflow; print('MLflow', mlflow.__version__)"
	@$(COMPAT_VENV)/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS)

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
	@$(BIN)/python benchmarks/web.py
	@$(BIN)/python benchmarks/listing.py
	-@$(BIN)/python benchmarks/throughput.py  # needs PostgreSQL; says so and exits 2 without it

clean:
	rm -rf $(VENV) $(COMPAT_VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
