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
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

PG_HOST = "127.0.0.1"
PG_PORT = 5432
_counter = itertools.count(1)

POLICY: dict[str, Any] = {
    "roles": {
        "data-scientist": ["alice", "bob"],
        "ml-engineer": ["carol", "erin"],
        "business-owner": ["dave", "frank"],
        "admin": ["root"],
    },
    "admins": ["admin"],
    "rules": [
        {
            "name": "production",
            "models": ["fraud-*"],
            "stages": ["Production"],
            "aliases": ["champion"],
            "levels": [
                [{"role": "data-scientist", "count": 1}, {"role": "ml-engineer", "count": 1}],
                [{"role": "business-owner", "count": 1}],
            ],
            "expires_after": "7d",
        }
    ],
    "default": "allow",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


@dataclass
class Server:
    """A running `mlflow server` subprocess."""

    uri: str
    backend: str  # "postgresql" or "sqlite"
    workers: int
    root: Path


def _wait_ready(uri: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
            )
        try:
            if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"mlflow server not ready after {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[Server]:
    """One real `mlflow server` for the whole test session (PostgreSQL when available)."""
    root = Path(tempfile.mkdtemp(prefix="mlflow-approvals-server-"))
    require_pg = os.environ.get("MLFLOW_APPROVALS_REQUIRE_POSTGRES") == "1"
    pg_db = None
    if postgres_available():
        pg_db = _create_pg_database()
        backend_uri = f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{pg_db}"
        backend, workers = "postgresql", 2
    elif require_pg:
        raise RuntimeError(
            "MLFLOW_APPROVALS_REQUIRE_POSTGRES=1 but PostgreSQL does not answer on "
            f"{PG_HOST}:{PG_PORT}: start it, or unset the variable to fall back to sqlite"
        )
    else:
        backend_uri = f"sqlite:///{root / 'server.db'}"
        backend, workers = "sqlite", 1
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=root
        )
    try:
        _wait_ready(uri, proc, log)
        yield Server(uri=uri, backend=backend, workers=workers, root=root)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
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

    return copy.deepcopy(POLICY)


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


def register_versions(tracking_uri: str, name: str, count: int = 1) -> list[str]:
    """Register `name` with `count` versions, each backed by a run artifact; return them."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model(name)
    exp_name = "approvals-test-models"
    exp = client.get_experiment_by_name(exp_name)
    if exp is None:
        try:
            artifact_location = None
            if tracking_uri.startswith("sqlite:///"):
                artifact_location = str(Path(tracking_uri[len("sqlite:///") :]).parent / "models")
            exp_id = client.create_experiment(exp_name, artifact_location=artifact_location)
        except Exception:
            exp_id = client.get_experiment_by_name(exp_name).experiment_id  # type: ignore[union-attr]
    else:
        exp_id = exp.experiment_id
    versions = []
    for _ in range(count):
        run = client.create_run(exp_id)
        client.log_text(run.info.run_id, "artifact_path: model\n", "model/MLmodel")
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version(
            name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        )
        versions.append(str(mv.version))
    return versions


@pytest.fixture
def make_model(tracking_uri: str) -> Callable[..., tuple[str, list[str]]]:
    """Register a fresh model on `tracking_uri`; returns (name, versions)."""

    def make(count: int = 1, prefix: str = "fraud-model") -> tuple[str, list[str]]:
        name = unique_name(prefix)
        return name, register_versions(tracking_uri, name, count)

    return make
