"""Safe to rerun: the command line a CI pipeline scripts, run again and again.

Each step says what happened and exits the same way on a rerun: `request` returns the open or
applied request instead of filing another, `approve` by someone who signed already is a no-op,
`wait` on a target already in effect exits 0. Exit codes a script can branch on (2 for a bad
argument value, 6 for "not allowed"), global options after the command, and no promotion
without a policy unless asked for. Commands run in-process with click's CliRunner against a
real MLflow (a fresh `sqlite:///` registry, the session's approvals server); the real console
script runs where its exit code is the point, and the docs/ci.md pipelines run as written.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from mlflow import MlflowClient

from conftest import PASSWORD, ApprovalsServer, Server, register_versions, unique_name
from mlflow_approvals.cli import (
    EXIT_ENDED,
    EXIT_ERROR,
    EXIT_NOT_ALLOWED,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_USAGE,
    main,
)
from mlflow_approvals.client import ApprovalClient
from test_cli_ci_example import (
    Approvers,
    documented_yaml,
    pipeline_setup,  # noqa: F401 (a fixture)
    run_github,
    run_gitlab,
)

PREFIX = "mlflow_approvals."
ENV_VARS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_APPROVALS_POLICY",
    "MLFLOW_APPROVALS_NO_POLICY",
    "MLFLOW_APPROVALS_SERVER",
    "MLFLOW_APPROVALS_WAIT_TIMEOUT",
    "MLFLOW_APPROVALS_WAIT_INTERVAL",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracking URI, policy or user from the surrounding shell leaks into a command."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


Cli = Callable[..., Result]


@pytest.fixture
def cli(sqlite_uri: str, policy_file: Path) -> Cli:
    """The command line on a fresh sqlite registry with the test policy; options after the
    command, as people type them."""

    def run(*args: str, actor: str | None = None, as_json: bool = False, **kw: Any) -> Result:
        tail = ["--tracking-uri", sqlite_uri, "--policy", str(policy_file)]
        if actor is not None:
            tail += ["--as", actor]
        if as_json:
            tail.append("--json")
        return CliRunner().invoke(main, [*args, *tail], **kw)

    return run


@pytest.fixture
def model(sqlite_uri: str) -> Callable[..., tuple[str, list[str]]]:
    def make(count: int = 1) -> tuple[str, list[str]]:
        name = unique_name()
        return name, register_versions(sqlite_uri, name, count)

    return make


def _doc(result: Result) -> Any:
    return json.loads(result.stdout)


def _reserved(uri: str, name: str, version: str) -> dict[str, str]:
    tags = MlflowClient(uri, uri).get_model_version(name, version).tags
    return {k: v for k, v in tags.items() if k.startswith(PREFIX)}


def _requests(facts: dict[str, str]) -> list[str]:
    """The request fact keys among a version's reserved tags."""
    return [k for k in facts if k.count(".") == 2 and k.startswith(PREFIX + "r.")]


def _events(uri: str, name: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        files = ApprovalClient(uri, uri, policy={}, actor="x").audit.read(name, tmp)
    return [json.loads(raw) for _, raw in files]


# ------------------------------------------------------------------------- pipelines -----
@pytest.mark.server
def test_github_workflow_rerun_is_green_and_files_nothing(
    pipeline_setup: tuple[str, str, dict[str, str], Path, str],  # noqa: F811
    mlflow_server: Server,
) -> None:
    """The documented GitHub workflow run twice: the second run is all green and files nothing."""
    name, version, overrides, work, policy = pipeline_setup
    workflow = documented_yaml("github-actions")
    signer = Approvers(mlflow_server.uri, policy, name, version, "approve")
    signer.start()
    first = run_github(workflow, work, overrides)
    signer.finish()
    assert first.failed is None, first.log
    facts = _reserved(mlflow_server.uri, name, version)
    events = len(_events(mlflow_server.uri, name))
    (work / "deployed.txt").unlink()

    second = run_github(workflow, work, overrides)
    assert second.failed is None, second.log
    assert list(second.codes) == list(first.codes)
    assert (work / "deployed.txt").read_text().strip() == f"models:/{name}/{version}"
    assert "already" in second.log and "nothing was filed" in second.log
    assert _reserved(mlflow_server.uri, name, version) == facts
    assert len(_events(mlflow_server.uri, name)) == events


@pytest.mark.server
def test_gitlab_job_on_a_promoted_version_is_green_and_files_nothing(
    pipeline_setup: tuple[str, str, dict[str, str], Path, str],  # noqa: F811
    mlflow_server: Server,
) -> None:
    """The documented GitLab job rerun on a version already promoted deploys and files nothing."""
    name, version, overrides, work, policy = pipeline_setup
    uri = mlflow_server.uri
    ApprovalClient(uri, uri, policy=policy, actor="ci-bot").request_transition(
        name, version, "Production", archive_existing_versions=True
    )
    for actor in ("bob", "carol", "dave"):
        ApprovalClient(uri, uri, policy=policy, actor=actor).approve(name, version)
    facts = _reserved(uri, name, version)
    run = run_gitlab(documented_yaml("gitlab-ci"), work, overrides)
    assert run.failed is None, run.log
    assert (work / "deployed.txt").read_text().strip() == f"models:/{name}/{version}"
    assert _reserved(uri, name, version) == facts


# ------------------------------------------------------------------------- request -------
def test_request_repeated_returns_the_open_one_and_says_so(
    cli: Cli, model: Any, sqlite_uri: str
) -> None:
    """A repeated `request` exits 3 with the same request, created false, its comment unrecorded."""
    name, (version,) = model()
    first = cli("request", name, version, "--stage", "Production", "-m", "run 1", actor="alice",
                as_json=True)  # fmt: skip
    assert first.exit_code == EXIT_PENDING, first.output
    assert _doc(first)["created"] is True and _doc(first)["already"] is None

    again = cli("request", name, version, "--stage", "Production", "-m", "run 2", actor="alice",
                as_json=True)  # fmt: skip
    assert again.exit_code == EXIT_PENDING, again.output
    doc = _doc(again)
    assert doc["id"] == _doc(first)["id"] and doc["created"] is False
    assert doc["already"] == "open" and doc["comment"] == "run 1"
    assert "not recorded" in again.stderr and "run 2" in again.stderr

    text = cli("request", name, version, "--stage", "Production", actor="alice")
    assert text.exit_code == EXIT_PENDING
    assert text.stdout.startswith(f"not new: request {doc['id']} ")
    assert len(_requests(_reserved(sqlite_uri, name, version))) == 1


def test_archive_flag_does_not_open_a_second_request(cli: Cli, model: Any, sqlite_uri: str) -> None:
    """A request differing only in --archive-existing returns the open one; list shows the flag."""
    name, (version,) = model()
    first = cli("request", name, version, "--stage", "Production", actor="alice", as_json=True)
    other = cli("request", name, version, "--stage", "Production", "--archive-existing",
                actor="alice", as_json=True)  # fmt: skip
    assert other.exit_code == EXIT_PENDING, other.output
    assert _doc(other)["id"] == _doc(first)["id"] and _doc(other)["created"] is False
    assert _doc(other)["target"]["archive_existing_versions"] is False
    assert "--archive-existing" in other.stderr and "cancel" in other.stderr
    assert len(_requests(_reserved(sqlite_uri, name, version))) == 1
    assert cli("approve", name, version, actor="bob").exit_code == EXIT_OK  # one open: no --request

    archiving, (v2,) = model()
    cli("request", archiving, v2, "--stage", "Production", "--archive-existing", actor="alice")
    table = cli("list", "--status", "all", "--model", archiving)
    assert "stage Production (archive existing)" in table.stdout, table.output
    plain = cli("list", "--status", "all", "--model", name)
    assert "stage Production" in plain.stdout and "archive" not in plain.stdout


def test_request_for_a_target_in_effect_exits_0_and_files_nothing(
    cli: Cli, model: Any, sqlite_uri: str
) -> None:
    """`request` after the promotion was applied exits 0, says so, and files nothing new."""
    name, (version,) = model()
    filed = _doc(cli("request", name, version, "--stage", "Production", actor="alice",
                     as_json=True))  # fmt: skip
    for actor in ("bob", "carol", "dave"):
        assert cli("approve", name, version, actor=actor).exit_code == EXIT_OK
    facts = _reserved(sqlite_uri, name, version)
    again = cli("request", name, version, "--stage", "Production", actor="alice", as_json=True)
    assert again.exit_code == EXIT_OK, again.output
    doc = _doc(again)
    assert doc["created"] is False and doc["already"] == "in effect"
    assert doc["id"] == filed["id"] and doc["status"] == "applied"
    text = cli("request", name, version, "--stage", "Production", actor="alice")
    assert text.exit_code == EXIT_OK and "already has stage Production" in text.stdout
    assert "nothing was filed" in text.stdout
    assert _reserved(sqlite_uri, name, version) == facts


# ------------------------------------------------------------------------- approve -------
def test_approve_twice_is_a_no_op_that_says_so(cli: Cli, model: Any, sqlite_uri: str) -> None:
    """A retried `approve` exits 0, says the approver had signed, and writes no fact or event."""
    name, (version,) = model()
    cli("request", name, version, "--stage", "Production", actor="alice")
    first = cli("approve", name, version, actor="bob", as_json=True)
    assert first.exit_code == EXIT_OK and _doc(first)["already"] is None
    facts, events = _reserved(sqlite_uri, name, version), len(_events(sqlite_uri, name))
    again = cli("approve", name, version, "-m", "retry", actor="bob", as_json=True)
    assert again.exit_code == EXIT_OK, again.output
    assert _doc(again)["already"] == "signed" and len(_doc(again)["signoffs"]) == 1
    text = cli("approve", name, version, actor="bob")
    assert text.exit_code == EXIT_OK
    assert text.stdout.startswith("bob had already signed request ")
    assert _reserved(sqlite_uri, name, version) == facts
    assert len(_events(sqlite_uri, name)) == events

    cli("approve", name, version, actor="carol")
    assert cli("approve", name, version, actor="dave").exit_code == EXIT_OK  # applies it
    after = cli("approve", name, version, actor="dave", as_json=True)  # a rerun after the apply
    assert after.exit_code == EXIT_OK, after.output
    assert _doc(after)["already"] == "signed" and _doc(after)["status"] == "applied"


def test_reject_after_own_approval_is_refused_and_audited(
    cli: Cli, model: Any, sqlite_uri: str
) -> None:
    """Rejecting after one's own approval exits 6, changes nothing, and is an attempt.denied."""
    name, (version,) = model()
    cli("request", name, version, "--stage", "Production", actor="alice")
    cli("approve", name, version, actor="bob")
    facts = _reserved(sqlite_uri, name, version)
    refused = cli("reject", name, version, "-m", "changed my mind", actor="bob", as_json=True)
    assert refused.exit_code == EXIT_NOT_ALLOWED, refused.output
    assert _doc(refused)["error"]["type"] == "NotAuthorized"
    assert "already signed" in refused.stderr
    assert _reserved(sqlite_uri, name, version) == facts
    denied = [e for e in _events(sqlite_uri, name) if e["type"].endswith(".attempt.denied")]
    assert [(e["data"]["actor"]["id"], e["data"]["attempted"]) for e in denied] == [
        ("bob", "reject")
    ]


# ------------------------------------------------------------------------- wait, status --
def test_wait_on_a_target_applied_at_once_exits_0(cli: Cli, model: Any) -> None:
    """`wait --stage` on a target applied at once (ungated) exits 0; without it, 1 says why."""
    name, (version,) = model()
    assert cli("request", name, version, "--stage", "Staging", actor="alice").exit_code == EXIT_OK
    done = cli("wait", name, version, "--stage", "staging", as_json=True)
    assert done.exit_code == EXIT_OK, done.output
    assert _doc(done)["outcome"] == "in effect"
    unnamed = cli("wait", name, version)
    assert unnamed.exit_code == EXIT_ERROR and "--stage" in unnamed.stderr
    missing = cli("wait", name, version, "--alias", "champion")
    assert missing.exit_code == EXIT_ERROR and "champion" in missing.stderr


def test_the_obvious_request(cli: Cli, model: Any) -> None:
    """Without --request: the open one, else the latest applied, else the newest; two open: say."""
    name, (version,) = model()
    applied = _doc(cli("request", name, version, "--stage", "Production", actor="alice",
                       as_json=True))  # fmt: skip
    for actor in ("bob", "carol", "dave"):
        cli("approve", name, version, actor=actor)
    later = _doc(cli("request", name, version, "--alias", "champion", actor="alice", as_json=True))
    assert cli("cancel", name, version, actor="alice").exit_code == EXIT_OK
    status = cli("status", name, version, as_json=True)
    assert status.exit_code == EXIT_OK, status.output
    assert _doc(status)["id"] == applied["id"]
    assert cli("wait", name, version).exit_code == EXIT_OK
    assert cli("status", name, version, "--request", later["id"]).exit_code == EXIT_ENDED

    two, (v,) = model()
    stage = _doc(cli("request", two, v, "--stage", "Production", actor="alice", as_json=True))
    alias = _doc(cli("request", two, v, "--alias", "champion", actor="alice", as_json=True))
    for command in ("status", "approve", "wait"):
        result = cli(command, two, v, actor="bob")
        assert result.exit_code == EXIT_ERROR, (command, result.output)
        assert "`--request ID`" in result.stderr
        assert stage["id"] in result.stderr and alias["id"] in result.stderr
    assert cli("wait", two, v, "--alias", "champion", "--timeout", "1s").exit_code == EXIT_PENDING


# ------------------------------------------------------------------------- exit codes ----
@pytest.mark.parametrize(
    "args",
    [
        ["request", "m", "v2", "--stage", "Production"],
        ["request", "m", "1", "--stage", "prod"],
        ["request", "m", "1", "--alias", "bad alias!"],
        ["approve", "m", "1.5"],
        ["status", "m", "latest"],
        ["wait", "m", "1", "--stage", "live"],
    ],
)
def test_invalid_values_exit_2_before_any_registry_call(args: list[str]) -> None:
    """An invalid argument value is a usage error (2) naming the argument; nothing is sent."""
    result = CliRunner().invoke(main, [*args, "--tracking-uri", "http://127.0.0.1:9"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "Invalid value" in result.stderr and result.stdout == ""


def test_not_allowed_exits_6(cli: Cli, model: Any, tmp_path: Path) -> None:
    """Separation of duties, a missing role and a denied target exit 6; other errors stay 1."""
    name, (version,) = model()
    cli("request", name, version, "--stage", "Production", actor="alice")
    own = cli("approve", name, version, actor="alice")
    assert own.exit_code == EXIT_NOT_ALLOWED and "separation of duties" in own.stderr
    assert cli("approve", name, version, actor="mallory").exit_code == EXIT_NOT_ALLOWED
    assert cli("cancel", name, version, actor="bob").exit_code == EXIT_NOT_ALLOWED
    assert cli("status", name, "99").exit_code == EXIT_ERROR


def test_tracking_uri_without_scheme_is_a_usage_error() -> None:
    """A tracking URI without a scheme exits 2 with the whole message: what to write instead."""
    for uri in ("localhost:5000", "127.0.0.1:5000", "/tmp/mlruns"):
        result = CliRunner().invoke(main, ["status", "m", "1", "--tracking-uri", uri])
        assert result.exit_code == EXIT_USAGE, result.output
        message = " ".join(result.stderr.split())
        assert f"'{uri}' has no scheme" in message
        assert "http://" in message and "sqlite:///" in message
        assert message.rstrip().endswith(".")


def test_console_script_exit_codes(approvals_server: ApprovalsServer) -> None:
    """The installed entry point exits 2 on a bad value and 6 on a refused sign-off."""
    script = str(Path(sys.executable).parent / "mlflow-approvals")
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    bad = subprocess.run([script, "approve", "m", "v2"], capture_output=True, text=True, env=env,
                         timeout=60)  # fmt: skip
    assert bad.returncode == EXIT_USAGE, bad.stderr
    env.update(MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD=PASSWORD)
    name = unique_name()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        mp.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        (version,) = register_versions(approvals_server.uri, name, 1)
    env["MLFLOW_TRACKING_URI"] = approvals_server.uri
    filed = subprocess.run([script, "request", name, version, "--stage", "Production"],
                           capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert filed.returncode == EXIT_PENDING, filed.stderr
    own = subprocess.run([script, "approve", name, version], capture_output=True, text=True,
                         env=env, timeout=60)  # fmt: skip
    assert own.returncode == EXIT_NOT_ALLOWED, own.stderr
    assert "separation of duties" in own.stderr


# ------------------------------------------------------------------------- options -------
def test_global_options_before_or_after_the_command(
    sqlite_uri: str, policy_file: Path, model: Any
) -> None:
    """--tracking-uri, --policy, --as and --json work after the command as before it."""
    name, (version,) = model()
    head = ["--tracking-uri", sqlite_uri, "--policy", str(policy_file)]
    filed = CliRunner().invoke(
        main, [*head, "--as", "alice", "request", name, version, "--stage", "Production"]
    )
    assert filed.exit_code == EXIT_PENDING, filed.output
    after = CliRunner().invoke(main, ["approve", name, version, *head, "--as", "bob", "--json"])
    assert after.exit_code == EXIT_OK, after.output
    assert _doc(after)["signoffs"][0]["actor"] == "bob"
    mixed = CliRunner().invoke(main, ["--json", *head, "status", name, version, "--as", "carol"])
    assert mixed.exit_code == EXIT_PENDING and _doc(mixed)["id"]
    nested = CliRunner().invoke(main, ["audit", "verify", name, *head, "--json"])
    assert nested.exit_code == EXIT_OK, nested.output
    assert _doc(nested)["ok"] is True


# ------------------------------------------------------------------------- no policy -----
def test_request_without_a_policy_is_refused_unless_told(sqlite_uri: str, model: Any) -> None:
    """No policy: `request` exits 1 and changes nothing; --no-policy (or its variable) applies."""
    name, (v1, v2, v3) = model(3)
    base = ["--tracking-uri", sqlite_uri, "--as", "alice"]
    refused = CliRunner().invoke(main, [*base, "request", name, v1, "--stage", "Production"])
    assert refused.exit_code == EXIT_ERROR, refused.output
    assert "no policy" in refused.stderr and "--no-policy" in refused.stderr
    assert "MLFLOW_APPROVALS_POLICY" in refused.stderr
    plain = MlflowClient(sqlite_uri, sqlite_uri)
    assert plain.get_model_version(name, v1).current_stage == "None"

    told = CliRunner().invoke(main, [*base, "request", name, v2, "--stage", "Production",
                                     "--no-policy"])  # fmt: skip
    assert told.exit_code == EXIT_OK, told.output
    assert "no policy" in told.stderr
    assert plain.get_model_version(name, v2).current_stage == "Production"
    env = CliRunner().invoke(main, [*base, "request", name, v3, "--stage", "Staging"],
                             env={"MLFLOW_APPROVALS_NO_POLICY": "true"})  # fmt: skip
    assert env.exit_code == EXIT_OK, env.output
    assert plain.get_model_version(name, v3).current_stage == "Staging"


def test_client_without_a_policy_logs_one_warning(
    sqlite_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """ApprovalClient with no policy logs one warning that nothing is gated; with one, none."""
    with caplog.at_level(logging.WARNING, logger="mlflow_approvals"):
        ApprovalClient(sqlite_uri, sqlite_uri, actor="alice")
        ApprovalClient(sqlite_uri, sqlite_uri, actor="bob")
        ApprovalClient(sqlite_uri, sqlite_uri, policy={}, actor="carol")
    found = [r for r in caplog.records if "no policy" in r.getMessage()]
    assert len(found) == 2 and "nothing is gated" in found[0].getMessage()


# ------------------------------------------------------------------------- server mode ---
@pytest.fixture
def server_cli(approvals_server: ApprovalsServer) -> Cli:
    """The command line against the approvals server, signed in as ``user`` (no local policy)."""

    def run(user: str, *args: str) -> Result:
        env = {
            "MLFLOW_TRACKING_URI": approvals_server.uri,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": PASSWORD,
        }
        return CliRunner().invoke(main, list(args), env=env)

    return run


@pytest.fixture
def server_model(approvals_server: ApprovalsServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        env.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        name = unique_name()
        return name, register_versions(approvals_server.uri, name, 1)[0]


def test_rerun_through_the_approvals_server(server_cli: Cli, server_model: Any) -> None:
    """Against the approvals server (its policy decides): repeated request and approve say so."""
    name, version = server_model
    filed = server_cli("alice", "request", name, version, "--stage", "Production", "--json")
    assert filed.exit_code == EXIT_PENDING, filed.output
    again = server_cli("alice", "request", name, version, "--stage", "Production",
                       "--archive-existing", "--json")  # fmt: skip
    assert again.exit_code == EXIT_PENDING, again.output
    assert _doc(again)["id"] == _doc(filed)["id"] and _doc(again)["created"] is False
    assert server_cli("bob", "approve", name, version).exit_code == EXIT_OK
    retry = server_cli("bob", "approve", name, version, "--json")
    assert retry.exit_code == EXIT_OK, retry.output
    assert _doc(retry)["already"] == "signed" and len(_doc(retry)["signoffs"]) == 1
    flip = server_cli("bob", "reject", name, version, "-m", "no", "--json")
    assert flip.exit_code == EXIT_NOT_ALLOWED, flip.output
    assert _doc(flip)["error"]["type"] == "NotAuthorized"
    for signer in ("carol", "dave"):
        assert server_cli(signer, "approve", name, version).exit_code == EXIT_OK
    done = server_cli("alice", "request", name, version, "--stage", "Production", "--json")
    assert done.exit_code == EXIT_OK, done.output
    assert _doc(done)["already"] == "in effect" and _doc(done)["id"] == _doc(filed)["id"]
    assert server_cli("dave", "approve", name, version).exit_code == EXIT_OK
    assert server_cli("alice", "wait", name, version, "--timeout", "1s").exit_code == EXIT_OK
