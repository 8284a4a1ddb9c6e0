"""Helpers shipped for users' own tests: a real MLflow, no fakes.

Test the code around your promotions (a pipeline step that requests Production, a job that
signs off, a check that reads the audit log) against a real ``mlflow server`` in a temporary
folder, the way it will run in production::

    from mlflow_approvals import ApprovalClient
    from mlflow_approvals.testing import EXAMPLE_POLICY, mlflow_server, register_versions

    with mlflow_server() as server:
        (version,) = register_versions(server.uri, "fraud-model")
        alice = ApprovalClient(server.uri, server.uri, policy=EXAMPLE_POLICY, actor="alice")
        alice.request_transition("fraud-model", version, "Production")

What is here:

* :data:`EXAMPLE_POLICY`, a two-level policy with named people, as a mapping;
* :func:`mlflow_server`, a real ``mlflow server`` subprocess on a free loopback port;
* :func:`register_versions`, registered model versions backed by a real run artifact;
* :class:`RoundTripCounter`, which records every HTTP request ``requests`` sends.

Importing this module does no work: MLflow and ``requests`` are imported by the functions that
use them. :func:`mlflow_server` needs a POSIX system (the server runs in its own process group).
See ``docs/testing.md``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

__all__ = [
    "EXAMPLE_POLICY",
    "MlflowServer",
    "RoundTrip",
    "RoundTripCounter",
    "free_port",
    "mlflow_server",
    "register_versions",
]

EXAMPLE_POLICY: dict[str, Any] = {
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
            "break_glass": {"roles": ["admin"], "review_within": "24h"},
        }
    ],
    "default": "allow",
}
"""An example policy: promoting ``fraud-*`` to Production (or ``@champion``) needs one
data-scientist and one ml-engineer at level 1, then one business-owner at level 2, within 7 days;
everything else is allowed. People: alice, bob (data-scientist); carol, erin (ml-engineer);
dave, frank (business-owner); root (admin, may cancel any request, and may apply a promotion at
once in an emergency: break-glass, reviewed by the rule's levels within 24 hours).

A plain mapping, shared by everyone who imports it: pass ``copy.deepcopy(EXAMPLE_POLICY)`` to
code that changes it.
"""

_LOOPBACK = "127.0.0.1"
_LOG_TAIL = 4000  # characters of the server log quoted in an error
_STOP_GRACE = 20.0  # seconds between SIGTERM and SIGKILL


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind((_LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class MlflowServer:
    """A running ``mlflow server`` started by :func:`mlflow_server`."""

    uri: str
    """The tracking URI, ``http://127.0.0.1:<port>``."""
    root: Path
    """The server's folder: its log (``server.log``), artifacts and, by default, its database."""
    backend_store_uri: str
    """The ``--backend-store-uri`` the server was started with."""
    workers: int
    """The number of server workers."""
    ready_after: float
    """Seconds from starting the process to the first healthy ``/health`` answer."""
    pid: int = 0
    """The server's process id, which is also its process group's (to stop it the hard way:
    ``os.killpg(server.pid, signal.SIGKILL)``)."""

    @property
    def backend(self) -> str:
        """The backend store's kind: ``sqlite``, ``postgresql``, ``mysql``, ... or ``file``."""
        scheme = urlsplit(self.backend_store_uri).scheme
        return scheme.split("+", 1)[0] or "file"


@contextlib.contextmanager
def mlflow_server(
    root: Path | None = None,
    *,
    backend_store_uri: str | None = None,
    workers: int = 1,
    timeout: float = 120,
    app_name: str | None = None,
    env: Mapping[str, str] | None = None,
    static_prefix: str | None = None,
    port: int | None = None,
) -> Iterator[MlflowServer]:
    """Run a real ``mlflow server`` on a free loopback port for the duration of the block.

    ``root`` is the server's folder (created if missing; kept afterwards). Without it a
    temporary folder is used and removed afterwards. The backend store is
    ``backend_store_uri``, by default a sqlite database in ``root``; artifacts are proxied by the
    server and kept in ``root/artifacts``. The server runs with ``workers`` workers, job
    execution off and no ``MLFLOW_TRACKING_URI`` from this process, in its own process group,
    with ``root`` as its working directory and its output in ``root/server.log``.

    ``app_name`` starts an ``mlflow.app`` (``--app-name``; ``"approvals"`` for the approvals
    server), ``env`` adds environment variables for the server (its policy, basic-auth's
    settings), and ``static_prefix`` serves everything under that path prefix. ``port`` fixes the
    port (default: a free one): a server restarted on the same ``root`` and ``port`` is the same
    tracking URI and store.

    Yields once ``GET /health`` answers 200. On leaving the block the process group gets
    SIGTERM, then SIGKILL if it has not exited within 20 seconds.

    Raises:
        RuntimeError: the server exited, or did not answer within ``timeout`` seconds; the
            message ends with the tail of its log.
    """
    own_root = root is None
    folder = (
        Path(tempfile.mkdtemp(prefix="mlflow-approvals-server-"))
        if root is None
        else Path(root).resolve()  # the server runs in this folder: relative paths would move
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        backend = backend_store_uri or f"sqlite:///{folder / 'server.db'}"
        port = port or free_port()
        uri = f"http://{_LOOPBACK}:{port}"
        log = folder / "server.log"
        server_env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        server_env.pop("MLFLOW_TRACKING_URI", None)
        server_env.update(env or {})
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            _LOOPBACK,
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
        if app_name:
            cmd += ["--app-name", app_name]
        if static_prefix:
            cmd += ["--static-prefix", static_prefix]
        started = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=server_env,
                start_new_session=True,
                cwd=folder,
            )
        try:
            health = f"{uri}{static_prefix.rstrip('/')}" if static_prefix else uri
            _wait_ready(health, proc, log, started + timeout, timeout)
            yield MlflowServer(
                uri=health,
                root=folder,
                backend_store_uri=backend,
                workers=workers,
                ready_after=time.monotonic() - started,
                pid=proc.pid,
            )
        finally:
            _stop(proc)
    finally:
        if own_root:
            shutil.rmtree(folder, ignore_errors=True)


def _log_tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-_LOG_TAIL:]
    except OSError as exc:
        return f"(no log: {exc})"


def _wait_ready(
    uri: str, proc: subprocess.Popen[bytes], log: Path, deadline: float, timeout: float
) -> None:
    import requests

    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({proc.returncode}):\n{_log_tail(log)}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server not ready after {timeout:g} s:\n{_log_tail(log)}")
        time.sleep(0.3)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group; SIGKILL it if it has not exited in time."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=_STOP_GRACE)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def register_versions(tracking_uri: str, name: str, count: int = 1) -> list[str]:
    """Register the model ``name`` with ``count`` versions; return the versions, as strings.

    Each version comes from its own finished run in the experiment ``approvals-test-models``
    (created when missing; on a ``sqlite:///`` registry its artifacts go into a ``models``
    folder beside the database) that has logged a ``model/MLmodel`` artifact, and is created
    from ``runs:/<run id>/model``, as a model logged by a training job is. The registered model
    must not exist yet.
    """
    from mlflow import MlflowClient

    from mlflow_approvals.artifacts import log_text, run_repository

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model(name)
    exp_id = _model_experiment(client, tracking_uri)
    versions = []
    for _ in range(count):
        run = client.create_run(exp_id)
        log_text(run_repository(client, run.info.run_id), "artifact_path: model\n", "model/MLmodel")
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version(
            name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        )
        versions.append(str(mv.version))
    return versions


def _model_experiment(client: Any, tracking_uri: str) -> str:
    exp_name = "approvals-test-models"
    exp = client.get_experiment_by_name(exp_name)
    if exp is not None:
        return str(exp.experiment_id)
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = str(Path(tracking_uri[len("sqlite:///") :]).parent / "models")
    try:
        return str(client.create_experiment(exp_name, artifact_location=location))
    except Exception:  # created meanwhile by another process
        exp = client.get_experiment_by_name(exp_name)
        if exp is None:
            raise
        return str(exp.experiment_id)


class RoundTrip(NamedTuple):
    """One HTTP request: where it went and what it asked."""

    host: str
    """The URL's network location, ``host[:port]``."""
    method: str
    """``GET``, ``POST``, ..."""
    path: str
    """The URL's path, without the query, such as ``/api/2.0/mlflow/model-versions/get``."""


class RoundTripCounter:
    """Records every HTTP request sent through ``requests`` (so every MLflow REST call).

    It wraps ``requests.adapters.HTTPAdapter.send`` while installed, process-wide, and records
    a :class:`RoundTrip` per request sent inside :meth:`count`::

        counter = RoundTripCounter()
        with counter.count() as calls:
            client.get_model_version("fraud-model", "1")
        assert [(c.method, c.path) for c in calls] == [
            ("GET", "/api/2.0/mlflow/model-versions/get")
        ]

    :meth:`count` installs the wrapper for its own duration when it is not installed. To keep
    the wrapper in place between counts (so that what is timed in between goes through the
    same code), call :meth:`install` and :meth:`uninstall`, or use the counter as a context
    manager. Counters installed on top of each other are uninstalled in reverse order.
    """

    def __init__(self) -> None:
        self._calls: list[RoundTrip] | None = None
        self._original: Callable[..., Any] | None = None

    @property
    def installed(self) -> bool:
        """Whether the wrapper is in place."""
        return self._original is not None

    def install(self) -> None:
        """Put the wrapper in place (no-op when it is)."""
        if self._original is not None:
            return
        from requests.adapters import HTTPAdapter

        original = HTTPAdapter.send
        counter = self

        def send(adapter: HTTPAdapter, request: Any, *args: Any, **kwargs: Any) -> Any:
            calls = counter._calls
            if calls is not None:
                url = urlsplit(str(request.url))
                calls.append(RoundTrip(url.netloc, str(request.method), url.path))
            return original(adapter, request, *args, **kwargs)

        HTTPAdapter.send = send  # type: ignore[method-assign, assignment]
        self._original = original

    def uninstall(self) -> None:
        """Restore ``HTTPAdapter.send`` as it was before :meth:`install` (no-op when not)."""
        if self._original is None:
            return
        from requests.adapters import HTTPAdapter

        HTTPAdapter.send = self._original  # type: ignore[method-assign]
        self._original = None

    @contextlib.contextmanager
    def count(self) -> Iterator[list[RoundTrip]]:
        """Record the requests sent inside the block into the list it yields."""
        installed_here = not self.installed
        self.install()
        previous = self._calls
        calls: list[RoundTrip] = []
        self._calls = calls
        try:
            yield calls
        finally:
            self._calls = previous
            if installed_here:
                self.uninstall()

    def __enter__(self) -> RoundTripCounter:
        self.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()
