"""Shared fixtures: a fresh `sqlite:///` registry per test, one real `mlflow server` per session.

The session server runs on PostgreSQL with two workers when PostgreSQL answers on
127.0.0.1:5432 (as production servers do); otherwise on sqlite. Set
``MLFLOW_APPROVALS_REQUIRE_POSTGRES=1`` (``.ci/run`` does, where PostgreSQL is installed) to make
its absence an error instead of a fallback.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlflow_approvals import testing
from mlflow_approvals.testing import EXAMPLE_POLICY, MlflowServer, register_versions

__all__ = ["POLICY", "Server", "postgres_available", "register_versions", "unique_name"]

PG_HOST = "127.0.0.1"
PG_PORT = 5432
_counter = itertools.count(1)

POLICY: dict[str, Any] = EXAMPLE_POLICY  # the test policy; `policy_dict` gives a deep copy
Server = MlflowServer  # the session server: .uri, .backend, .workers, .root


def postgres_available() -> bool:
    """True when a PostgreSQL server answers on 127.0.0.1:5432 and psycopg2 is importable."""
    try:
        import psycopg2

        conn = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user="postgres", dbname="test", connect_timeout=3
        )
        conn.close()
        return True
    except Exception:
        return False


def _create_pg_database() -> str:
    import psycopg2

    db = f"mlflow_approvals_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="test")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    conn.close()
    return db


def _drop_pg_database(db: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="test")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    conn.close()


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[Server]:
    """One real `mlflow server` for the whole test session (PostgreSQL when available)."""
    require_pg = os.environ.get("MLFLOW_APPROVALS_REQUIRE_POSTGRES") == "1"
    pg_db = None
    if postgres_available():
        pg_db = _create_pg_database()
        backend_uri = f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{pg_db}"
        workers = 2
    elif require_pg:
        raise RuntimeError(
            "MLFLOW_APPROVALS_REQUIRE_POSTGRES=1 but PostgreSQL does not answer on "
            f"{PG_HOST}:{PG_PORT}: start it, or unset the variable to fall back to sqlite"
        )
    else:
        backend_uri, workers = None, 1  # sqlite in the server's temporary folder
    try:
        with testing.mlflow_server(backend_store_uri=backend_uri, workers=workers) as server:
            yield server
    finally:
        if pg_db:
            with contextlib.suppress(Exception):
                _drop_pg_database(pg_db)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated MLflow sqlite database, made once (migrations take ~1.5 s)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "registry.db"
    uri = f"sqlite:///{path}"
    MlflowClient(uri, uri).search_registered_models()
    return path


def _fresh_sqlite(template: Path, folder: Path) -> str:
    import shutil

    path = folder / "registry.db"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def sqlite_uri(tmp_path: Path, _sqlite_template: Path) -> str:
    """A fresh `sqlite:///` registry in a temp folder."""
    return _fresh_sqlite(_sqlite_template, tmp_path)


@pytest.fixture(params=["sqlite", "server"])
def tracking_uri(request: pytest.FixtureRequest, tmp_path: Path, _sqlite_template: Path) -> str:
    """The same test against a local sqlite registry and against the session's real server."""
    if request.param == "sqlite":
        return _fresh_sqlite(_sqlite_template, tmp_path)
    server: Server = request.getfixturevalue("mlflow_server")
    return server.uri


@pytest.fixture
def policy_dict() -> dict[str, Any]:
    """The test policy as a mapping (a deep copy each time)."""
    import copy

    return copy.deepcopy(EXAMPLE_POLICY)


@pytest.fixture
def policy_file(tmp_path: Path, policy_dict: dict[str, Any]) -> Path:
    """The test policy written to a YAML file."""
    import yaml

    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy_dict))
    return path


def unique_name(prefix: str = "fraud-model") -> str:
    """A registered-model name no other test uses (the session server is shared)."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def make_model(tracking_uri: str) -> Callable[..., tuple[str, list[str]]]:
    """Register a fresh model on `tracking_uri`; returns (name, versions)."""

    def make(count: int = 1, prefix: str = "fraud-model") -> tuple[str, list[str]]:
        name = unique_name(prefix)
        return name, register_versions(tracking_uri, name, count)

    return make
