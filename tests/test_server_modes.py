"""The approvals server app in the modes the session server (basic-auth, enforce) does not cover.

* Refusal to start: settings that cannot be used stop the app factory with one message naming
  what to set (checked on ``create_app()`` in a fresh interpreter, and once on a real
  ``mlflow server --app-name approvals --workers 1``).
* ``report`` mode without authentication (``MLFLOW_APPROVALS_AUTH=none`` +
  ``MLFLOW_APPROVALS_ALLOW_ANONYMOUS=true``): direct promotions go through and are audited as
  bypasses by ``anonymous``.
* ``enforce`` mode with ``MLFLOW_APPROVALS_AUTH=trusted-header`` behind ``--static-prefix
  /mlflow``: the caller is the ``X-Forwarded-User`` header, every route lives under the prefix.

``off`` mode is not covered here: it would need a third server (~6-15 s) for a gate that returns
at its first line. Each server is a real ``mlflow server`` subprocess (sqlite, one worker) in a
temporary folder, started once for this module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from mlflow import MlflowClient

from conftest import unique_name
from mlflow_approvals import ApprovalClient, testing
from mlflow_approvals.audit import TYPE_PREFIX
from mlflow_approvals.lifecycle import Target
from mlflow_approvals.remote import RemoteError, RemoteLifecycle
from mlflow_approvals.testing import EXAMPLE_POLICY, register_versions

pytestmark = pytest.mark.server

HEADER = "X-Forwarded-User"
PREFIX = "/mlflow"
_TIMEOUT = 30  # seconds for one HTTP request
_PRODUCTION = Target("stage", "Production", "set", False)


def _write_policy(folder: Path) -> Path:
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(EXAMPLE_POLICY))
    return path


def _events(uri: str, name: str) -> list[dict[str, Any]]:
    """Every audit event of model ``name``, read from the server's artifact store."""
    with tempfile.TemporaryDirectory() as tmp:
        return [json.loads(raw) for _, raw in ApprovalClient(uri, uri).audit.read(name, tmp)]


def _of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == TYPE_PREFIX + kind]


def _stage(uri: str, name: str, version: str) -> str:
    return str(MlflowClient(uri, uri).get_model_version(name, version).current_stage)


# ------------------------------------------------------------------ refusal to start -------
def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any approvals setting or tracking URI, plus
    ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MLFLOW_APPROVALS_") and k != "MLFLOW_TRACKING_URI"
    }
    env.update(extra)
    return env


@dataclass(frozen=True)
class Exited:
    """How a process that was expected to refuse to start ended."""

    returncode: int | None
    """None when it was still running at the deadline (it was then killed)."""
    output: str
    named: str = ""
    """What the refusal must name: a variable, or the policy file's path."""


_FACTORY = "from mlflow_approvals.server import create_app; create_app()"


def _refusal_cases(folder: Path) -> dict[str, tuple[dict[str, str], str]]:
    """case -> (the server's environment, what the refusal must name)."""
    good = str(_write_policy(folder))
    broken = folder / "broken-policy.yaml"
    broken.write_text("roles:\n  ml-engineer: [carol\nrules: []\n")
    unsatisfiable = folder / "unsatisfiable-policy.yaml"
    policy = json.loads(json.dumps(EXAMPLE_POLICY))
    policy["rules"][0]["levels"][1][0]["count"] = 3  # business-owner has two members
    unsatisfiable.write_text(yaml.safe_dump(policy))
    return {
        "no-auth-while-enforcing": (
            {"MLFLOW_APPROVALS_POLICY": good, "MLFLOW_APPROVALS_AUTH": "none"},
            "MLFLOW_APPROVALS_ALLOW_ANONYMOUS",
        ),
        "no-policy": (
            {"MLFLOW_APPROVALS_AUTH": "none", "MLFLOW_APPROVALS_ALLOW_ANONYMOUS": "true"},
            "MLFLOW_APPROVALS_POLICY",
        ),
        "malformed-policy": ({"MLFLOW_APPROVALS_POLICY": str(broken)}, str(broken)),
        "unsatisfiable-policy": (
            {"MLFLOW_APPROVALS_POLICY": str(unsatisfiable)},
            str(unsatisfiable),
        ),
        "trusted-header-without-header": (
            {"MLFLOW_APPROVALS_POLICY": good, "MLFLOW_APPROVALS_AUTH": "trusted-header"},
            "MLFLOW_APPROVALS_IDENTITY_HEADER",
        ),
    }


def _run(key: str, cmd: list[str], env: dict[str, str], folder: Path, named: str) -> Exited:
    """Run ``cmd`` in its own process group; kill the group if it is still running after 60 s."""
    log = folder / f"{key}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True
        )
    try:
        returncode: int | None = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        returncode = None
    return Exited(returncode, log.read_text(errors="replace"), named)


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exited]:
    """Each refusal case as ``create_app()`` in a fresh interpreter, and the first case also as
    a real ``mlflow server --app-name approvals --workers 1``; two at a time (more only queue
    for the CPUs: each spends ~2.5 s importing MLflow)."""
    folder = tmp_path_factory.mktemp("refusals")
    cases = _refusal_cases(folder)
    server_env, server_named = cases["no-auth-while-enforcing"]
    server_cmd = [
        *(sys.executable, "-m", "mlflow", "server", "--app-name", "approvals"),
        *("--workers", "1", "--host", "127.0.0.1", "--port", str(testing.free_port())),
        *("--backend-store-uri", f"sqlite:///{folder / 'server.db'}"),
        *("--artifacts-destination", str(folder / "artifacts")),
    ]
    jobs = [  # the longest first
        (
            "mlflow-server",
            server_cmd,
            _clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **server_env),
            server_named,
        ),
        *(
            (case, [sys.executable, "-c", _FACTORY], _clean_env(**env), named)
            for case, (env, named) in cases.items()
        ),
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            key: pool.submit(_run, key, cmd, env, folder, named) for key, cmd, env, named in jobs
        }
        return {key: future.result() for key, future in futures.items()}


@pytest.mark.parametrize(
    "case",
    [
        "no-auth-while-enforcing",
        "no-policy",
        "malformed-policy",
        "unsatisfiable-policy",
        "trusted-header-without-header",
    ],
)
def test_factory_refuses_unusable_settings(refusals: dict[str, Exited], case: str) -> None:
    """create_app() exits non-zero with one message (no traceback) naming what to set or fix."""
    exited = refusals[case]
    assert exited.returncode not in (0, None), exited.output
    assert "mlflow-approvals: cannot start the approvals server" in exited.output
    assert exited.named in exited.output
    assert "Traceback" not in exited.output


def test_mlflow_server_with_unusable_settings_stops_and_says_why(
    refusals: dict[str, Exited],
) -> None:
    """A real `mlflow server --app-name approvals` (one worker) without auth while enforcing
    stops, its log naming MLFLOW_APPROVALS_ALLOW_ANONYMOUS (MLflow itself exits 0 here)."""
    exited = refusals["mlflow-server"]
    assert exited.returncode is not None, "still running after 60 s:\n" + exited.output[-3000:]
    assert "cannot start the approvals server" in exited.output
    assert exited.named in exited.output
    assert "Uvicorn running" not in exited.output


# ------------------------------------------------------------------ report mode, no auth ---
@pytest.fixture(scope="module")
def report_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[testing.MlflowServer]:
    """`mlflow server --app-name approvals` in report mode, nobody authenticated."""
    folder = tmp_path_factory.mktemp("report-server")
    env = {
        "MLFLOW_APPROVALS_POLICY": str(_write_policy(folder)),
        "MLFLOW_APPROVALS_ENFORCEMENT": "report",
        "MLFLOW_APPROVALS_AUTH": "none",
        "MLFLOW_APPROVALS_ALLOW_ANONYMOUS": "true",
    }
    with testing.mlflow_server(folder / "server", app_name="approvals", env=env) as server:
        yield server


def test_report_mode_info_says_report_and_anonymous(report_server: testing.MlflowServer) -> None:
    """The info endpoint reports enforcement=report, auth=none and the caller as anonymous."""
    info = requests.get(
        f"{report_server.uri}/api/2.0/mlflow-approvals/info", timeout=_TIMEOUT
    ).json()
    assert (info["enforcement"], info["auth"], info["user"]) == ("report", "none", "anonymous")


def test_report_mode_without_auth_warns_the_operator(report_server: testing.MlflowServer) -> None:
    """The server log warns that nobody is authenticated and that gated writes are only
    audited."""
    log = (report_server.root / "server.log").read_text(errors="replace")
    assert "MLFLOW_APPROVALS_AUTH=none: nobody is authenticated" in log
    assert "MLFLOW_APPROVALS_ENFORCEMENT=report: direct writes to gated targets are allowed" in log


def test_report_mode_lets_a_gated_transition_through_and_audits_the_bypass(
    report_server: testing.MlflowServer,
) -> None:
    """A raw transition to gated Production succeeds (200) and is audited as gate.bypassed by
    anonymous, naming the rule it bypassed."""
    uri = report_server.uri
    name = unique_name("fraud-report")
    (v,) = register_versions(uri, name)
    response = requests.post(
        f"{uri}/api/2.0/mlflow/model-versions/transition-stage",
        json={
            "name": name,
            "version": v,
            "stage": "Production",
            "archive_existing_versions": False,
        },
        timeout=_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    assert _stage(uri, name, v) == "Production"
    (bypass,) = _of_type(_events(uri, name), "gate.bypassed")
    data = bypass["data"]
    assert data["actor"]["id"] == "anonymous"
    assert data["change"] == "transition_stage"
    assert data["after"] == {"stage": "Production", "version": v}
    assert "rule 'production'" in data["comment"]


def test_report_mode_ungated_transition_is_a_plain_change(
    report_server: testing.MlflowServer,
) -> None:
    """A Staging move (no rule gates it) is recorded as registry.changed, not as a bypass."""
    uri = report_server.uri
    name = unique_name("fraud-report")
    (v,) = register_versions(uri, name)
    MlflowClient(uri, uri).transition_model_version_stage(name, v, "Staging")
    events = _events(uri, name)
    assert not _of_type(events, "gate.bypassed")
    changes = [e["data"]["change"] for e in _of_type(events, "registry.changed")]
    assert "transition_stage" in changes


def test_report_mode_endpoints_record_anonymous_as_requester(
    report_server: testing.MlflowServer,
) -> None:
    """A request filed through the endpoints is anonymous's; anonymous cannot then approve it."""
    uri = report_server.uri
    name = unique_name("fraud-report")
    (v,) = register_versions(uri, name)
    steps = RemoteLifecycle(uri)
    filed = steps.file(name, v, _PRODUCTION, "ship it")
    assert filed.requester == "anonymous"
    assert steps.get(name, v, None).requester == "anonymous"
    (created,) = _of_type(_events(uri, name), "request.created")
    assert created["data"]["actor"]["id"] == "anonymous"
    with pytest.raises(RemoteError) as refused:
        steps.sign(name, v, "approve", "lgtm", None)
    assert refused.value.status == 403
    assert steps.get(name, v, None).signoffs == ()
    assert _stage(uri, name, v) == "None"


# ------------------------------------------------------------------ trusted header, prefix --
@pytest.fixture(scope="module")
def header_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[testing.MlflowServer]:
    """`mlflow server --app-name approvals --static-prefix /mlflow`, enforcing, the user named
    by the X-Forwarded-User header."""
    folder = tmp_path_factory.mktemp("header-server")
    env = {
        "MLFLOW_APPROVALS_POLICY": str(_write_policy(folder)),
        "MLFLOW_APPROVALS_ENFORCEMENT": "enforce",
        "MLFLOW_APPROVALS_AUTH": "trusted-header",
        "MLFLOW_APPROVALS_IDENTITY_HEADER": HEADER,
    }
    with testing.mlflow_server(
        folder / "server", app_name="approvals", env=env, static_prefix=PREFIX
    ) as server:
        assert server.uri.endswith(PREFIX)
        yield server


def _as(user: str | None) -> dict[str, str]:
    return {} if user is None else {HEADER: user}


def _step(
    server: testing.MlflowServer, user: str | None, action: str, api: str = "api", **params: Any
) -> requests.Response:
    """One approval endpoint call under the prefix, as ``user`` (None: no header)."""
    url = f"{server.uri}/{api}/2.0/mlflow-approvals/{action}"
    if action in ("info", "get", "list"):
        return requests.get(url, params=params, headers=_as(user), timeout=_TIMEOUT)
    return requests.post(url, json=params, headers=_as(user), timeout=_TIMEOUT)


def _register(server: testing.MlflowServer, name: str) -> list[str]:
    """Register ``name`` straight into the server's backend store: through the server, a
    registration without the proxy's header is refused (the next test pins that)."""
    return register_versions(server.backend_store_uri, name)


def test_registry_write_without_the_header_is_refused(
    header_server: testing.MlflowServer,
) -> None:
    """A direct registry write that did not come through the proxy (no header) gets 403."""
    response = requests.post(
        f"{header_server.uri}/api/2.0/mlflow/registered-models/create",
        json={"name": unique_name("fraud-hdr")},
        timeout=_TIMEOUT,
    )
    assert response.status_code == 403, response.text


@pytest.mark.parametrize("api", ["api", "ajax-api"])
def test_header_names_the_caller_under_the_prefix(
    header_server: testing.MlflowServer, api: str
) -> None:
    """The endpoints live under the static prefix and take the user from X-Forwarded-User."""
    response = _step(header_server, "carol", "info", api)
    assert response.status_code == 200, response.text
    assert response.json()["user"] == "carol"
    assert response.json()["auth"] == "trusted-header"
    root = header_server.uri.removesuffix(PREFIX)
    outside = requests.get(
        f"{root}/{api}/2.0/mlflow-approvals/info", headers=_as("carol"), timeout=_TIMEOUT
    )
    assert outside.status_code == 404


@pytest.mark.parametrize("user", [None, ""])
def test_a_request_without_the_header_is_refused(
    header_server: testing.MlflowServer, user: str | None
) -> None:
    """Without the identity header (or with an empty one) the endpoints answer 4xx, file nothing."""
    name = unique_name("fraud-hdr")
    (v,) = _register(header_server, name)
    info = _step(header_server, user, "info")
    assert 400 <= info.status_code < 500
    filed = _step(header_server, user, "request", name=name, version=v, stage="Production")
    assert 400 <= filed.status_code < 500
    assert filed.json()["error_code"] == "PERMISSION_DENIED"
    listed = _step(header_server, "alice", "list", name=name, status="all")
    assert listed.json()["requests"] == []


@pytest.mark.parametrize("api", ["api", "ajax-api"])
def test_raw_transition_under_the_prefix_is_refused(
    header_server: testing.MlflowServer, api: str
) -> None:
    """A raw transition to Production under /mlflow/{api}/2.0 gets 403; the refused attempt is
    audited under the header's user; nothing moves."""
    uri = header_server.uri
    name = unique_name("fraud-hdr")
    (v,) = _register(header_server, name)
    response = requests.post(
        f"{uri}/{api}/2.0/mlflow/model-versions/transition-stage",
        json={
            "name": name,
            "version": v,
            "stage": "Production",
            "archive_existing_versions": False,
        },
        headers=_as("alice"),
        timeout=_TIMEOUT,
    )
    assert response.status_code == 403, response.text
    assert response.json()["error_code"] == "PERMISSION_DENIED"
    assert _stage(uri, name, v) == "None"
    (denied,) = _of_type(_events(uri, name), "attempt.denied")
    assert denied["data"]["actor"]["id"] == "alice"


def test_full_cycle_with_header_identities_applies(header_server: testing.MlflowServer) -> None:
    """alice requests, carol + bob sign level 1, dave level 2: applied, each under their header."""
    uri = header_server.uri
    name = unique_name("fraud-hdr")
    (v,) = _register(header_server, name)
    filed = _step(header_server, "alice", "request", name=name, version=v, stage="Production")
    assert filed.status_code == 200, filed.text
    for user in ("carol", "bob", "dave"):
        signed = _step(header_server, user, "approve", name=name, version=v, comment="ok")
        assert signed.status_code == 200, (user, signed.text)
    request = signed.json()["request"]
    assert request["status"] == "applied"
    assert request["requester"] == "alice"
    assert [s["actor"] for s in request["signoffs"]] == ["carol", "bob", "dave"]
    assert request["applied"]["actor"] == "dave"
    assert _stage(uri, name, v) == "Production"


def test_requester_header_cannot_approve_own_request(header_server: testing.MlflowServer) -> None:
    """Separation of duties holds for the header identity: bob files, bob's approval is 403."""
    name = unique_name("fraud-hdr")
    (v,) = _register(header_server, name)
    filed = _step(header_server, "bob", "request", name=name, version=v, stage="Production")
    assert filed.status_code == 200, filed.text
    signed = _step(header_server, "bob", "approve", name=name, version=v)
    assert signed.status_code == 403, signed.text
    got = _step(header_server, "carol", "get", name=name, version=v)
    assert got.json()["request"]["signoffs"] == []


def test_audit_artifacts_cannot_be_written_with_or_without_the_prefix(
    header_server: testing.MlflowServer,
) -> None:
    """PUT/DELETE into the audit experiment is 403 under /mlflow and at the native artifact
    router MLflow mounts without the prefix; no file appears."""
    uri = header_server.uri
    name = unique_name("fraud-hdr")
    (v,) = _register(header_server, name)
    filed = _step(header_server, "alice", "request", name=name, version=v, stage="Production")
    assert filed.status_code == 200, filed.text  # the request's event creates the audit run
    audit = ApprovalClient(uri, uri).audit
    exp_id, run_id = audit.experiment_id(create=False), audit.run_ids(name, create=False)[0]
    tail = f"mlflow-artifacts/artifacts/{exp_id}/{run_id}/artifacts/events/v{v}/forged.json"
    root = uri.removesuffix(PREFIX)
    for base in (f"{uri}/api/2.0", f"{uri}/ajax-api/2.0", f"{root}/api/2.0"):
        put = requests.put(f"{base}/{tail}", data=b"{}", headers=_as("mallory"), timeout=_TIMEOUT)
        assert put.status_code == 403, (base, put.status_code, put.text[:200])
    for base in (f"{uri}/api/2.0", f"{uri}/ajax-api/2.0"):
        gone = requests.delete(f"{base}/{tail}", headers=_as("mallory"), timeout=_TIMEOUT)
        assert gone.status_code == 403, (base, gone.status_code, gone.text[:200])
    assert not list(header_server.root.rglob("forged.json"))
