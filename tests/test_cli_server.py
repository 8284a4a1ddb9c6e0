"""The command line against an enforcing server: the approval endpoints, without MLflow.

Against the session's `mlflow server --app-name approvals` (basic-auth, the test policy), the
registry commands go straight to the server's approval endpoints: one HTTP request a step, the
same output, `--json` documents and exit codes as through `ApprovalClient`, and no MLflow import.
Most commands run in-process with click's CliRunner; the MLflow-free start-up is checked in
subprocesses that fail when any `mlflow` module was imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner, Result

from conftest import PASSWORD, ApprovalsServer, Server, register_versions, unique_name
from mlflow_approvals.cli import (
    APPROVAL_ERRORS,
    EXIT_ENDED,
    EXIT_ERROR,
    EXIT_NOT_ALLOWED,
    EXIT_OK,
    EXIT_PENDING,
    main,
)
from mlflow_approvals.testing import RoundTripCounter

ENDPOINTS = "/api/2.0/mlflow-approvals/"

# Runs the command line in a fresh interpreter, prints each HTTP request it sent to stderr
# ("request: GET /path"), then exits 99 if any `mlflow` module was imported (else with the
# command's own exit code).
_NO_MLFLOW = """
import sys
from mlflow_approvals.cli import main
from mlflow_approvals.testing import RoundTripCounter
with RoundTripCounter().count() as calls:
    try:
        main(args=sys.argv[1:], prog_name="mlflow-approvals")
        code = 0
    except SystemExit as exit:
        code = exit.code or 0
for call in calls:
    print(f"request: {call.method} {call.path}", file=sys.stderr)
loaded = sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow."))
if loaded:
    print("mlflow was imported: " + ", ".join(loaded[:5]), file=sys.stderr)
    sys.exit(99)
sys.exit(code)
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracking URI, user, policy or server mode from the surrounding shell leaks in."""
    for var in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_APPROVALS_POLICY",
        "MLFLOW_APPROVALS_SERVER",
    ):
        monkeypatch.delenv(var, raising=False)


def _env(uri: str, user: str, password: str = PASSWORD, **extra: str) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_PASSWORD": password,
        **extra,
    }


Cli = Callable[..., Result]


@pytest.fixture
def cli(approvals_server: ApprovalsServer) -> Cli:
    """Run the command line in-process against the approvals server, signed in as ``user``."""

    def run(user: str, *args: str, password: str = PASSWORD, **extra: str) -> Result:
        env = _env(approvals_server.uri, user, password, **extra)
        return CliRunner().invoke(main, list(args), env=env)

    return run


@pytest.fixture
def model(approvals_server: ApprovalsServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Register a fresh gated model (``fraud-...``) on the approvals server, as alice."""

    def make(count: int = 1) -> tuple[str, list[str]]:
        with monkeypatch.context() as env:
            env.setenv("MLFLOW_TRACKING_USERNAME", "alice")
            env.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
            name = unique_name()
            return name, register_versions(approvals_server.uri, name, count)

    return make


def _doc(result: Result) -> Any:
    return json.loads(result.stdout)


def _sent(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The requests a `_no_mlflow` process sent: "METHOD /path" each."""
    return [line[9:] for line in proc.stderr.splitlines() if line.startswith("request: ")]


def _no_mlflow(uri: str, user: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **_env(uri, user, **extra)}
    return subprocess.run(
        [sys.executable, "-c", _NO_MLFLOW, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


# ------------------------------------------------------------------------- the cycle -----
def test_full_cycle_through_the_endpoints_with_exit_codes(cli: Cli, model: Any) -> None:
    """request exits 3, approve 0, status 3 then 0, list shows it; the actors are who signed in."""
    name, (version,) = model()
    filed = cli("alice", "request", name, version, "--stage", "Production", "-m", "retrained")
    assert filed.exit_code == EXIT_PENDING, filed.output
    assert "pending at level 1 of 2" in filed.stdout
    assert f"mlflow-approvals approve {name} {version}" in filed.stdout

    bob = cli("bob", "approve", name, version, "-m", "AUC ok")
    assert bob.exit_code == EXIT_OK, bob.output
    assert bob.stdout.startswith("bob signed request ")
    assert "approval as data-scientist (level 1)" in bob.stdout
    assert cli("carol", "approve", name, version).exit_code == EXIT_OK

    pending = cli("frank", "status", name, version)
    assert pending.exit_code == EXIT_PENDING, pending.output
    assert "pending at level 2 of 2 (needs 1 of business-owner)" in pending.stdout
    assert "level 1  done" in pending.stdout and "(bob)" in pending.stdout

    listed = cli("mallory", "list", "--model", name)
    assert listed.exit_code == EXIT_OK, listed.output
    assert name in listed.stdout and "level 2: 1 of business-owner" in listed.stdout

    last = cli("dave", "approve", name, version)
    assert last.exit_code == EXIT_OK, last.output
    assert f"applied: {name} v{version} -> stage Production" in last.stdout
    done = cli("alice", "status", name, version)
    assert done.exit_code == EXIT_OK, done.output
    assert "applied by dave" in done.stdout
    assert "no pending requests of" in cli("alice", "list", "--model", name).stdout


def test_json_documents_through_the_endpoints(cli: Cli, model: Any) -> None:
    """--json prints one request document (list: count and requests) with the server's actors."""
    name, (version,) = model()
    filed = cli("alice", "--json", "request", name, version, "--alias", "champion")
    assert filed.exit_code == EXIT_PENDING, filed.output
    doc = _doc(filed)
    assert doc["status"] == "pending" and doc["requester"] == "alice"
    assert doc["target"] == {
        "kind": "alias",
        "value": "champion",
        "action": "set",
        "archive_existing_versions": False,
    }
    signed = _doc(cli("erin", "--json", "approve", name, version, "-m", "fine"))
    assert [(s["actor"], s["role"], s["comment"]) for s in signed["signoffs"]] == [
        ("erin", "ml-engineer", "fine")
    ]
    status = cli("bob", "--json", "status", name, version)
    assert status.exit_code == EXIT_PENDING and _doc(status)["id"] == doc["id"]
    listed = _doc(cli("bob", "--json", "list", "--model", name, "--status", "all"))
    assert listed["count"] == 1 and listed["requests"][0]["id"] == doc["id"]


def test_reject_and_cancel_through_the_endpoints(cli: Cli, model: Any) -> None:
    """reject and cancel exit 0 naming the signed-in actor; status then exits 4."""
    name, (v1, v2) = model(2)
    assert cli("alice", "request", name, v1, "--stage", "Production").exit_code == EXIT_PENDING
    rejected = cli("erin", "reject", name, v1, "-m", "drift on May data")
    assert rejected.exit_code == EXIT_OK, rejected.output
    assert rejected.stdout.startswith("erin rejected request ")
    ended = cli("alice", "status", name, v1)
    assert ended.exit_code == EXIT_ENDED and "rejected by erin" in ended.stdout

    assert cli("bob", "request", name, v2, "--alias", "champion").exit_code == EXIT_PENDING
    cancelled = cli("bob", "cancel", name, v2, "-m", "wrong version")
    assert cancelled.exit_code == EXIT_OK, cancelled.output
    assert cancelled.stdout.startswith("bob cancelled request ")
    assert cli("bob", "status", name, v2).exit_code == EXIT_ENDED


def test_ungated_request_applies_at_once_exit_0(cli: Cli, model: Any) -> None:
    """A target no rule gates is applied at once by the server: exit 0, status applied."""
    name, (version,) = model()
    result = cli("alice", "--json", "request", name, version, "--stage", "Staging")
    assert result.exit_code == EXIT_OK, result.output
    doc = _doc(result)
    assert doc["status"] == "applied" and doc["id"] == "" and doc["requester"] == "alice"


def test_wait_polls_the_endpoint_until_applied(cli: Cli, model: Any) -> None:
    """wait exits 0 on an applied request and 3 when --timeout passes while pending."""
    name, (v1, v2) = model(2)
    assert cli("alice", "request", name, v1, "--stage", "Production").exit_code == EXIT_PENDING
    for signer in ("bob", "carol", "dave"):
        assert cli(signer, "approve", name, v1).exit_code == EXIT_OK
    applied = cli("alice", "--json", "wait", name, v1, "--timeout", "5s", "--interval", "1s")
    assert applied.exit_code == EXIT_OK, applied.output
    assert _doc(applied)["outcome"] == "applied"

    assert cli("alice", "request", name, v2, "--stage", "Production").exit_code == EXIT_PENDING
    timeout = cli("alice", "--json", "wait", name, v2, "--timeout", "1s", "--interval", "1s")
    assert timeout.exit_code == EXIT_PENDING, timeout.output
    assert _doc(timeout)["outcome"] == "timeout"


# ------------------------------------------------------------------------- one request ---
def test_each_step_is_one_request_in_a_new_process(
    approvals_server: ApprovalsServer, model: Any
) -> None:
    """Without --as, a new process sends one request: request, approve, status, list."""
    uri = approvals_server.uri
    name, (version,) = model()
    steps = [
        ("alice", ["request", name, version, "--stage", "Production"], EXIT_PENDING, "request"),
        ("bob", ["approve", name, version], EXIT_OK, "approve"),
        ("bob", ["status", name, version], EXIT_PENDING, "get"),
        ("bob", ["list", "--model", name], EXIT_OK, "list"),
    ]
    for user, args, code, action in steps:
        proc = _no_mlflow(uri, user, *args)
        assert proc.returncode == code, proc.stderr
        method = "GET" if action in ("get", "list") else "POST"
        assert _sent(proc) == [f"{method} {ENDPOINTS}{action}"], proc.stderr


# ------------------------------------------------------------------------- refusals ------
def test_not_authorized_approve_exits_6_with_the_error_type(cli: Cli, model: Any) -> None:
    """A sign-off the policy refuses (mallory has no role) exits 6 as NotAuthorized."""
    name, (version,) = model()
    assert cli("alice", "request", name, version, "--stage", "Production").exit_code == 3
    refused = cli("mallory", "--json", "approve", name, version)
    assert refused.exit_code == EXIT_NOT_ALLOWED, refused.output
    assert _doc(refused)["error"]["type"] == "NotAuthorized"
    assert "mallory" in refused.stderr and refused.stderr.startswith("error: ")
    assert "Traceback" not in refused.stderr
    own = cli("alice", "approve", name, version)  # separation of duties
    assert own.exit_code == EXIT_NOT_ALLOWED and "Traceback" not in own.stderr
    assert _doc(cli("bob", "--json", "status", name, version))["signoffs"] == []


def test_as_another_name_is_refused_before_anything_is_sent(cli: Cli, model: Any) -> None:
    """--as NAME other than the authenticated user exits 6 (NotAuthorized); nothing is signed."""
    name, (version,) = model()
    assert cli("alice", "request", name, version, "--stage", "Production").exit_code == 3
    with RoundTripCounter().count() as calls:
        claimed = cli("bob", "--json", "--as", "carol", "approve", name, version)
    assert claimed.exit_code == EXIT_NOT_ALLOWED, claimed.output
    assert _doc(claimed)["error"]["type"] == "NotAuthorized"
    assert "authenticated you as 'bob'" in claimed.stderr and "'carol'" in claimed.stderr
    assert {c.path for c in calls} <= {ENDPOINTS + "info"}  # (info is asked once a process)
    assert _doc(cli("bob", "--json", "status", name, version))["signoffs"] == []


def test_as_the_authenticated_name_is_accepted(cli: Cli, model: Any) -> None:
    """--as NAME equal to the authenticated user signs as that user (info, then the step)."""
    name, (version,) = model()
    assert cli("alice", "request", name, version, "--stage", "Production").exit_code == 3
    with RoundTripCounter().count() as calls:
        signed = cli("bob", "--as", "bob", "approve", name, version)
    assert signed.exit_code == EXIT_OK, signed.output
    assert signed.stdout.startswith("bob signed request ")
    paths = [c.path for c in calls]  # info, unless this process asked it already
    assert paths in ([ENDPOINTS + "info", ENDPOINTS + "approve"], [ENDPOINTS + "approve"])


def test_unknown_request_exits_1_as_request_not_found(cli: Cli, model: Any) -> None:
    """The endpoint's own 404 (no request on the version) is an error, not a plain server."""
    name, (version,) = model()
    with RoundTripCounter().count() as calls:
        result = cli("alice", "--json", "status", name, version)
    assert result.exit_code == EXIT_ERROR, result.output
    assert _doc(result)["error"]["type"] == "RequestNotFound"
    assert [c.path for c in calls] == [ENDPOINTS + "get"]  # no fallback to ApprovalClient


def test_wrong_password_exits_1_naming_the_credentials(cli: Cli, model: Any) -> None:
    """A password basic-auth refuses (401) exits 1 with a message about the credentials."""
    name, (version,) = model()
    result = cli("bob", "status", name, version, password="not-the-password")
    assert result.exit_code == EXIT_ERROR, result.output
    assert "did not accept the credentials (HTTP 401)" in result.stderr


def test_approval_error_names_match_the_error_classes() -> None:
    """The CLI's copy of the error class names is exactly mlflow_approvals.errors' tree."""
    from mlflow_approvals import errors

    def tree(cls: type[Any]) -> set[str]:
        names = {cls.__name__}
        for sub in cls.__subclasses__():
            names |= tree(sub)
        return names

    assert tree(errors.ApprovalError) == APPROVAL_ERRORS


# ------------------------------------------------------------------------- modes ---------
def test_required_mode_refuses_a_plain_server(mlflow_server: Server) -> None:
    """MLFLOW_APPROVALS_SERVER=1 against a plain server exits 1 instead of going client-gated."""
    result = CliRunner().invoke(
        main,
        ["--json", "status", "fraud-model", "1"],
        env=_env(mlflow_server.uri, "alice", MLFLOW_APPROVALS_SERVER="1"),
    )
    assert result.exit_code == EXIT_ERROR, result.output
    assert _doc(result)["error"]["type"] == "NoApprovalsServer"
    assert "does not run the approvals app (HTTP 404" in result.stderr


def test_off_mode_goes_through_approval_client(
    approvals_server: ApprovalsServer, model: Any
) -> None:
    """MLFLOW_APPROVALS_SERVER=0 skips the direct path: ApprovalClient (and MLflow) is used."""
    name, (version,) = model()
    uri = approvals_server.uri
    assert _no_mlflow(uri, "alice", "request", name, version, "--alias", "champion").returncode == 3
    result = _no_mlflow(uri, "bob", "status", name, version, MLFLOW_APPROVALS_SERVER="0")
    assert result.returncode == 99 and "mlflow was imported" in result.stderr


# ------------------------------------------------------------------------- no MLflow -----
def test_commands_never_import_mlflow(approvals_server: ApprovalsServer, model: Any) -> None:
    """request, approve, status, list, reject, --as and a refusal run without importing MLflow."""
    uri = approvals_server.uri
    name, (v1, v2) = model(2)
    filed = _no_mlflow(uri, "alice", "--json", "request", name, v1, "--stage", "Production")
    assert filed.returncode == EXIT_PENDING, filed.stderr
    assert json.loads(filed.stdout)["requester"] == "alice"
    signed = _no_mlflow(uri, "bob", "approve", name, v1, "-m", "ok")
    assert signed.returncode == EXIT_OK, signed.stderr
    assert signed.stdout.startswith("bob signed request ")
    status = _no_mlflow(uri, "carol", "--as", "carol", "status", name, v1)
    assert status.returncode == EXIT_PENDING, status.stderr
    listed = _no_mlflow(uri, "carol", "--json", "list", "--model", name)
    assert listed.returncode == EXIT_OK and json.loads(listed.stdout)["count"] == 1
    refused = _no_mlflow(uri, "mallory", "--json", "approve", name, v1)
    assert refused.returncode == EXIT_NOT_ALLOWED, refused.stderr
    assert json.loads(refused.stdout)["error"]["type"] == "NotAuthorized"
    claimed = _no_mlflow(uri, "mallory", "--as", "dave", "approve", name, v1)
    assert claimed.returncode == EXIT_NOT_ALLOWED
    assert "authenticated you as 'mallory'" in claimed.stderr
    assert _no_mlflow(uri, "alice", "request", name, v2, "--alias", "champion").returncode == 3
    rejected = _no_mlflow(uri, "dave", "reject", name, v2, "-m", "not yet")
    assert rejected.returncode == EXIT_OK, rejected.stderr
    assert _no_mlflow(uri, "dave", "status", name, v2).returncode == EXIT_ENDED


def test_wrapper_detects_an_mlflow_import(approvals_server: ApprovalsServer) -> None:
    """The subprocess check fails (99) when a command imports MLflow: here, `audit verify`."""
    result = _no_mlflow(approvals_server.uri, "alice", "audit", "verify", "fraud-none")
    assert result.returncode == 99 and "mlflow was imported" in result.stderr
