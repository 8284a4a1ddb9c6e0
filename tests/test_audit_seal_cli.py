"""Sealing the audit log from the command line and through the approvals server's endpoint.

`mlflow-approvals audit seal MODEL` copies a model's loose audit events into anchored segments
(`AuditStore.seal`): on a local `sqlite:///` registry in this process, and against the session's
`mlflow server --app-name approvals` (basic-auth) on the server, through the `seal` endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner, Result

from conftest import ADMIN, PASSWORD, ApprovalsServer, register_versions, signed_in, unique_name
from mlflow_approvals.cli import EXIT_ERROR, EXIT_NOT_ALLOWED, EXIT_OK, EXIT_USAGE, main
from mlflow_approvals.client import ApprovalClient
from mlflow_approvals.policy import Policy
from mlflow_approvals.testing import RoundTripCounter
from mlflow_approvals.wire import rest_path

Cli = Callable[..., Result]


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


def _doc(result: Result) -> Any:
    return json.loads(result.stdout)


# ------------------------------------------------------------------------- sqlite --------
@pytest.fixture
def local_cli(sqlite_uri: str, policy_file: Path) -> Cli:
    """The command line against a fresh sqlite registry with the test policy."""

    def run(*args: str) -> Result:
        head = ["--tracking-uri", sqlite_uri, "--policy", str(policy_file)]
        return CliRunner().invoke(main, [*head, *args])

    return run


@pytest.fixture
def audited(sqlite_uri: str, policy_dict: dict[str, Any]) -> str:
    """A model of the sqlite registry with three audit events (a request, two sign-offs)."""
    name = unique_name()
    (version,) = register_versions(sqlite_uri, name, 1)
    ApprovalClient(sqlite_uri, policy=policy_dict, actor="alice").request_transition(
        name, version, "Production"
    )
    for signer in ("bob", "carol"):
        ApprovalClient(sqlite_uri, policy=policy_dict, actor=signer).approve(name, version)
    return name


def _verified(local_cli: Cli, name: str) -> set[tuple[str, str, str]]:
    result = local_cli("--json", "audit", "verify", name)
    assert result.exit_code == EXIT_OK, result.output
    return {(e["status"], e["hash"], e["path"]) for e in _doc(result)["events"]}


def test_seal_keeps_verify_passing_with_the_same_events(local_cli: Cli, audited: str) -> None:
    """`audit seal` puts every loose event in a segment; verify then reports the same events."""
    before = _verified(local_cli, audited)
    assert len(before) == 3 and {s for s, _, _ in before} == {"VALID"}
    sealed = local_cli("audit", "seal", audited)
    assert sealed.exit_code == EXIT_OK, sealed.output
    lines = sealed.stdout.splitlines()
    assert lines[0].startswith("SEALED  segments/") and lines[0].endswith(": 3 events")
    assert lines[-1] == f"sealed 3 events of {audited} into 1 segment"
    assert _verified(local_cli, audited) == before


def test_sealing_twice_seals_nothing_new(local_cli: Cli, audited: str) -> None:
    """A second seal writes no segment and says there is nothing new to seal (exit 0)."""
    first = local_cli("--json", "audit", "seal", audited)
    assert first.exit_code == EXIT_OK, first.output
    assert [s["events"] for s in _doc(first)["segments"]] == [3]
    again = local_cli("--json", "audit", "seal", audited)
    assert again.exit_code == EXIT_OK, again.output
    assert _doc(again) == {"name": audited, "min_events": 1, "events": 0, "segments": []}
    text = local_cli("audit", "seal", audited)
    assert text.stdout.strip() == f"nothing new to seal in the audit log of {audited}"


def test_min_events_leaves_a_short_tail_loose(
    local_cli: Cli, audited: str, sqlite_uri: str, policy_dict: dict[str, Any]
) -> None:
    """--min-events N seals nothing while fewer than N events are loose, then seals them."""
    assert local_cli("audit", "seal", audited).exit_code == EXIT_OK
    ApprovalClient(sqlite_uri, policy=policy_dict, actor="dave").approve(audited, "1")
    waiting = local_cli("--json", "audit", "seal", audited, "--min-events", "5")
    assert waiting.exit_code == EXIT_OK, waiting.output
    assert _doc(waiting)["segments"] == []
    tail = local_cli("--json", "audit", "seal", audited, "--min-events", "2")
    assert tail.exit_code == EXIT_OK, tail.output
    # dave's sign-off completes the rule: his approval and the application, two new events
    assert [s["events"] for s in _doc(tail)["segments"]] == [2]
    assert local_cli("audit", "seal", audited, "--min-events", "0").exit_code == EXIT_USAGE


def test_unknown_model_is_a_clear_error_and_writes_nothing(local_cli: Cli, sqlite_uri: str) -> None:
    """A name with no registered model and no audit log exits 1 saying so; nothing is created."""
    from mlflow import MlflowClient

    result = local_cli("--json", "audit", "seal", "no-such-model")
    assert result.exit_code == EXIT_ERROR, result.output
    assert _doc(result)["error"]["type"] == "ModelVersionNotFound"
    assert "no registered model 'no-such-model' and no audit log" in result.stderr
    assert MlflowClient(sqlite_uri).get_experiment_by_name("mlflow-approvals-audit") is None


# ------------------------------------------------------------------------- server --------
@pytest.fixture
def server_cli(approvals_server: ApprovalsServer) -> Cli:
    """The command line in-process against the approvals server, signed in as ``user``."""

    def run(user: str, *args: str) -> Result:
        env = {
            "MLFLOW_TRACKING_URI": approvals_server.uri,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": PASSWORD,
        }
        return CliRunner().invoke(main, list(args), env=env)

    return run


@pytest.fixture
def server_model(approvals_server: ApprovalsServer, server_cli: Cli) -> str:
    """A model on the approvals server with three audit events (a request, two sign-offs)."""
    name = unique_name()
    with signed_in("alice"):
        (version,) = register_versions(approvals_server.uri, name, 1)
    assert server_cli("alice", "request", name, version, "--stage", "Production").exit_code == 3
    for signer in ("bob", "carol"):
        assert server_cli(signer, "approve", name, version).exit_code == EXIT_OK
    return name


def _verify(uri: str, name: str) -> tuple[int, int]:
    """(events, artifact downloads) of one verify of ``name`` through the server, as alice."""
    with signed_in("alice"), RoundTripCounter().count() as calls:
        report = ApprovalClient(uri, policy=Policy()).verify_audit(name)
    assert report.ok and report.valid == report.total, report.lines
    downloads = [c for c in calls if c.method == "GET" and "/mlflow-artifacts/artifacts/" in c.path]
    return report.total, len(downloads)


def test_seal_through_the_server_then_verify_downloads_one_segment(
    approvals_server: ApprovalsServer, server_cli: Cli, server_model: str
) -> None:
    """The endpoint seals on the server; a verify through it then downloads the one segment."""
    events, downloads = _verify(approvals_server.uri, server_model)
    # the request, two sign-offs, and the gate's records of the model's and version's creation
    assert events >= 3 and downloads == events
    sealed = server_cli("alice", "--json", "audit", "seal", server_model)
    assert sealed.exit_code == EXIT_OK, sealed.output
    assert [s["events"] for s in _doc(sealed)["segments"]] == [events]
    assert _verify(approvals_server.uri, server_model) == (events, 1)
    again = server_cli("bob", "audit", "seal", server_model)
    assert again.exit_code == EXIT_OK, again.output
    assert "nothing new to seal" in again.stdout


def test_seal_without_permission_is_refused_and_writes_nothing(
    approvals_server: ApprovalsServer, server_cli: Cli, server_model: str
) -> None:
    """A user denied the model is refused (exit 6) and no segment is written."""
    from mlflow.server.auth.client import AuthServiceClient

    with signed_in(ADMIN):
        AuthServiceClient(approvals_server.uri).grant_user_permission(
            "mallory", "registered_model", server_model, "DENY"
        )
    refused = server_cli("mallory", "--json", "audit", "seal", server_model)
    assert refused.exit_code == EXIT_NOT_ALLOWED, refused.output
    assert _doc(refused)["error"]["type"] == "NotAuthorized"
    assert "READ permission on registered model" in refused.stderr
    # had mallory's seal written anything, alice's would not seal the whole log
    events, _ = _verify(approvals_server.uri, server_model)
    sealed = server_cli("alice", "--json", "audit", "seal", server_model)
    assert [s["events"] for s in _doc(sealed)["segments"]] == [events], sealed.output


def test_endpoint_refuses_bad_input_and_unknown_models(
    approvals_server: ApprovalsServer, server_model: str
) -> None:
    """A bad min_events is a 400 that seals nothing; an unknown model a 404 saying so."""
    url = approvals_server.uri + rest_path("seal")
    auth = ("alice", PASSWORD)
    for bad in (0, -1, "abc", True, [3], "1e3"):
        answer = requests.post(url, json={"name": server_model, "min_events": bad}, auth=auth)
        assert answer.status_code == 400, (bad, answer.text)
        assert answer.json()["mlflow_approvals_error"] == "InvalidRequest"
    missing = requests.post(url, json={"name": "no-such-model-" + server_model}, auth=auth)
    assert missing.status_code == 404, missing.text
    assert "no registered model" in missing.json()["message"]
    sealed = requests.post(url, json={"name": server_model}, auth=auth)
    assert sealed.status_code == 200, sealed.text
    assert sealed.json()["events"] == _verify(approvals_server.uri, server_model)[0]
