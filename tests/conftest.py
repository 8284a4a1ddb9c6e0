"""Shared fixtures: a fresh `sqlite:///` registry per test, one real `mlflow server` per session.

The session server runs on PostgreSQL with two workers when PostgreSQL answers on
127.0.0.1:5432 (as production servers do); otherwise on sqlite. Set
``MLFLOW_APPROVALS_REQUIRE_POSTGRES=1`` (``.ci/run`` does, where PostgreSQL is installed) to make
its absence an error instead of a fallback.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import itertools
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlflow_approvals import testing
from mlflow_approvals.testing import EXAMPLE_POLICY, MlflowServer, register_versions

__all__ = [
    "CANONICAL_YAML",
    "MLFLOW_MAJOR",
    "POLICY",
    "Server",
    "postgres_available",
    "register_versions",
    "unique_name",
]

MLFLOW_MAJOR = int(importlib.metadata.version("mlflow").split(".")[0])  # 2 in `make compat`
PG_HOST = "127.0.0.1"
PG_PORT = 5432
_counter = itertools.count(1)

# The policy the docs show (docs/policy.md, policy.py's docstring), as YAML: its content hash is
# pinned by the tests of fields added later (checks, notifications), which must not change it.
CANONICAL_YAML = """\
roles:
  data-scientist: [alice, bob]
  ml-engineer: [carol, erin]
  business-owner: [dave]
admins: [ml-engineer]
rules:
  - name: production
    models: ["fraud-*"]
    stages: [Production]
    aliases: [champion]
    levels:
      - [{role: data-scientist, count: 1}, {role: ml-engineer, count: 1}]
      - [{role: business-owner, count: 1}]
    expires_after: 7d
default: allow
"""

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


ADMIN = "admin"
PASSWORD = "approvals-test-password"  # every test user's (>= 12 characters, as basic-auth asks)
SERVER_USERS = ("alice", "bob", "carol", "erin", "dave", "frank", "mallory", "root")


@dataclass(frozen=True)
class ApprovalsServer:
    """The session's `mlflow server --app-name approvals` with basic-auth and its users."""

    server: MlflowServer
    policy_path: Path

    @property
    def uri(self) -> str:
        return self.server.uri

    def creds(self, user: str) -> tuple[str, str]:
        """(username, password) of a test user (or the admin)."""
        return (user, PASSWORD)


@pytest.fixture(scope="session")
def approvals_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApprovalsServer]:
    """One real `mlflow server --app-name approvals` (basic-auth) for the whole session, on
    PostgreSQL with two workers when available."""
    import yaml

    folder = tmp_path_factory.mktemp("approvals-server")
    policy_path = folder / "policy.yaml"
    checked = {  # a rule with checks for `checked-*` models (tests/test_checks_flow.py)
        "name": "checked",
        "models": ["checked-*"],
        "stages": ["Production"],
        "levels": [[{"role": "data-scientist", "count": 1}]],
        "checks": [{"metric": "val_auc", "min": 0.9}, {"artifact": "README.md"}],
    }
    server_policy = {**EXAMPLE_POLICY, "rules": [*EXAMPLE_POLICY["rules"], checked]}
    policy_path.write_text(yaml.safe_dump(server_policy))
    auth_ini = folder / "basic_auth.ini"
    auth_ini.write_text(
        "[mlflow]\n"
        "default_permission = EDIT\n"
        f"database_uri = sqlite:///{folder / 'auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Each password check costs ~85 ms of scrypt, several per request; cache them, as a
        # busy production server would (docs/performance.md).
        "auth_cache_ttl_seconds = 300\n"
    )
    env = {
        "MLFLOW_APPROVALS_POLICY": str(policy_path),
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "approvals-test-secret",
    }
    pg_db = _create_pg_database() if postgres_available() else None
    backend = f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{pg_db}" if pg_db else None
    try:
        with testing.mlflow_server(
            folder / "server",
            backend_store_uri=backend,
            workers=2 if pg_db else 1,
            app_name="approvals",
            env=env,
        ) as server:
            _create_users(server.uri)
            yield ApprovalsServer(server, policy_path)
    finally:
        if pg_db:
            with contextlib.suppress(Exception):
                _drop_pg_database(pg_db)


@contextlib.contextmanager
def signed_in(user: str) -> Iterator[None]:
    """MLflow's client credentials for ``user`` (a test user or the admin) while the block runs."""
    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict(zip(keys, (user, PASSWORD), strict=True)))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _create_users(uri: str) -> None:
    from mlflow.server.auth.client import AuthServiceClient

    with signed_in(ADMIN):
        admin = AuthServiceClient(uri)
        for user in SERVER_USERS:
            admin.create_user(user, PASSWORD)


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run a `tracking_uri` test against the session server only where the REST path differs.

    ApprovalClient drives one engine over one registry adapter whatever the store; what the
    REST path changes (errors over HTTP, `mlflow-artifacts:` files, search over REST, tags
    round-tripped through JSON) is pinned by the tests marked `rest`, which keep their
    `[server]` variant. MLFLOW_APPROVALS_ALL_STORES=1 runs every `[server]` variant.
    """
    if os.environ.get("MLFLOW_APPROVALS_ALL_STORES") == "1":
        return
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        on_server = params.get("tracking_uri") == "server"
        (dropped if on_server and item.get_closest_marker("rest") is None else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


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


@pytest.fixture
def install_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """Install custom checks for one test: a module and a `.dist-info` folder on sys.path."""
    modules: list[str] = []

    def install_(entries: dict[str, str], source: str) -> str:
        module = f"approvals_test_checks_{uuid.uuid4().hex[:8]}"
        root = tmp_path / module
        root.mkdir()
        (root / f"{module}.py").write_text(source, encoding="utf-8")
        info = root / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n", encoding="utf-8"
        )
        lines = [f"{name} = {module}:{func}" for name, func in entries.items()]
        (info / "entry_points.txt").write_text(
            "[mlflow_approvals.checks]\n" + "\n".join(lines) + "\n", encoding="utf-8"
        )
        monkeypatch.syspath_prepend(str(root))  # also invalidates the import caches
        modules.append(module)
        return module

    yield install_
    for module in modules:
        sys.modules.pop(module, None)
    importlib.invalidate_caches()


class Receiver:
    """A real HTTP receiver on a free loopback port (a threaded ``http.server``): it records
    every POST and answers ``fail_first`` 500s before its 200s."""

    def __init__(self, fail_first: int = 0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.fail_first = fail_first
        self.received: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.received.append((dict(self.headers.items()), body))
                status = 500 if len(outer.received) <= outer.fail_first else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(body) for _, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A loopback webhook receiver that answers 200."""
    r = Receiver()
    yield r
    r.close()


def dead_url() -> str:
    """A loopback URL where nothing listens (a port just closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"
