"""The `mlflow-approvals` command line: commands, exit codes, the --json shape, start-up.

Commands run through click's CliRunner against a real MLflow (a fresh `sqlite:///` registry, and
the session's `mlflow server` where the test takes `tracking_uri`), and a few as real
subprocesses of the installed console script.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner, Result
from mlflow import MlflowClient

from conftest import register_versions, unique_name
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

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_POLICY = ROOT / "examples" / "policy.yaml"
REQUEST_KEYS = {
    "id", "name", "version", "target", "status", "requester", "requester_display_name",
    "created_at", "expires_at",
    "comment", "rule", "levels", "open_level", "missing", "signoffs", "cancelled", "applied",
    "break_glass", "review_by", "overdue", "emergency", "superseded", "invalidated", "checks",
    "digest", "changes",
}  # fmt: skip
SIGNOFF_KEYS = {
    "actor", "display_name", "decision", "role", "level", "meaning", "comment", "time", "digest",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracking URI, policy or user from the surrounding shell leaks into a command."""
    for var in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_APPROVALS_POLICY",
        "MLFLOW_APPROVALS_WAIT_TIMEOUT",
        "MLFLOW_APPROVALS_WAIT_INTERVAL",
    ):
        monkeypatch.delenv(var, raising=False)


Cli = Callable[..., Result]


def _cli(uri: str | None, policy: Path | None) -> Cli:
    def run(*args: str, actor: str | None = None, as_json: bool = False, **kw: Any) -> Result:
        head: list[str] = []
        if uri is not None:
            head += ["--tracking-uri", uri]
        if policy is not None:
            head += ["--policy", str(policy)]
        if actor is not None:
            head += ["--as", actor]
        if as_json:
            head.append("--json")
        return CliRunner().invoke(main, [*head, *args], **kw)

    return run


@pytest.fixture
def cli(tracking_uri: str, policy_file: Path) -> Cli:
    """Invoke the command line against `tracking_uri` with the test policy."""
    return _cli(tracking_uri, policy_file)


@pytest.fixture
def local_cli(sqlite_uri: str, policy_file: Path) -> Cli:
    """Invoke the command line against a fresh sqlite registry with the test policy."""
    return _cli(sqlite_uri, policy_file)


@pytest.fixture
def local_model(sqlite_uri: str) -> Callable[..., tuple[str, list[str]]]:
    """Register a fresh model on the sqlite registry of `local_cli`."""

    def make(count: int = 1) -> tuple[str, list[str]]:
        name = unique_name()
        return name, register_versions(sqlite_uri, name, count)

    return make


def _doc(result: Result) -> Any:
    """The JSON document on stdout (fails when stdout holds anything else)."""
    return json.loads(result.stdout)


def _sign_all(uri: str, policy: Path, name: str, version: str) -> None:
    for actor in ("bob", "carol", "dave"):
        ApprovalClient(uri, uri, policy=str(policy), actor=actor).approve(name, version)


# ------------------------------------------------------------------------- requests ------
def test_request_pending_exits_3_with_level_view(cli: Cli, make_model: Callable[..., Any]) -> None:
    """`request` on a gated target exits 3 and shows each level, open and missing."""
    name, (version,) = make_model()
    result = cli(
        "request", name, version, "--stage", "production", "-m", "retrained", actor="alice"
    )
    assert result.exit_code == EXIT_PENDING, result.output
    assert "level 1  OPEN     data-scientist 0/1; ml-engineer 0/1" in result.stdout
    assert "level 2  waiting  business-owner 0/1" in result.stdout
    assert f"mlflow-approvals approve {name} {version}" in result.stdout

    status = cli("status", name, version, as_json=True)
    assert status.exit_code == EXIT_PENDING
    doc = _doc(status)
    assert set(doc) == REQUEST_KEYS
    assert doc["status"] == "pending" and doc["open_level"] == 1
    assert doc["target"] == {
        "kind": "stage", "value": "Production", "action": "set", "archive_existing_versions": False
    }  # fmt: skip
    assert doc["requester"] == "alice" and doc["comment"] == "retrained"
    assert doc["missing"] == [
        {"role": "data-scientist", "count": 1},
        {"role": "ml-engineer", "count": 1},
    ]


@pytest.mark.rest
def test_signoffs_apply_and_status_exits_0(
    cli: Cli, make_model: Callable[..., Any], tracking_uri: str
) -> None:
    """Each `approve` exits 0; the last one applies the stage, and `status` then exits 0."""
    name, (version,) = make_model()
    assert cli("request", name, version, "--stage", "Production", actor="alice").exit_code == 3
    first = cli("approve", name, version, "-m", "metrics ok", actor="bob", as_json=True)
    assert first.exit_code == EXIT_OK, first.output
    (signoff,) = _doc(first)["signoffs"]
    assert set(signoff) == SIGNOFF_KEYS
    assert (signoff["actor"], signoff["role"], signoff["level"]) == ("bob", "data-scientist", 1)
    assert signoff["decision"] == "approve" and signoff["comment"] == "metrics ok"
    assert cli("approve", name, version, actor="carol").exit_code == EXIT_OK
    last = cli("approve", name, version, actor="dave")
    assert last.exit_code == EXIT_OK, last.output
    assert (
        "applied:" in last.stdout and "level 2  done     business-owner 1/1 (dave)" in last.stdout
    )

    status = cli("status", name, version)
    assert status.exit_code == EXIT_OK
    assert "applied by dave" in status.stdout
    mv = MlflowClient(tracking_uri, tracking_uri).get_model_version(name, version)
    assert mv.current_stage == "Production"


def test_ungated_request_applies_at_once_exit_0(
    local_cli: Cli, local_model: Callable[..., Any], sqlite_uri: str
) -> None:
    """`request` for a target no rule gates changes the registry at once and exits 0."""
    name, (version,) = local_model()
    result = local_cli("request", name, version, "--stage", "Staging", actor="alice")
    assert result.exit_code == EXIT_OK, result.output
    assert "applied at once" in result.stdout
    mv = MlflowClient(sqlite_uri, sqlite_uri).get_model_version(name, version)
    assert mv.current_stage == "Staging"


def test_alias_request_and_list_table(local_cli: Cli, local_model: Callable[..., Any]) -> None:
    """`request --alias` files an alias request; `list` shows it in a table and as JSON."""
    name, (v1, v2) = local_model(2)
    assert local_cli("request", name, v1, "--alias", "champion", actor="alice").exit_code == 3
    assert local_cli("request", name, v2, "--stage", "Production", actor="bob").exit_code == 3

    table = local_cli("list", "--model", name)
    assert table.exit_code == EXIT_OK
    lines = table.stdout.splitlines()
    assert re.match(r"REQUEST\s+MODEL\s+VERSION\s+TARGET\s+STATUS\s+NEEDS", lines[0])
    assert len(lines) == 3
    assert "alias champion" in table.stdout and "stage Production" in table.stdout

    doc = _doc(local_cli("list", "--model", name, "--status", "all", as_json=True))
    assert set(doc) == {"count", "requests"} and doc["count"] == 2
    assert {r["target"]["kind"] for r in doc["requests"]} == {"alias", "stage"}
    assert _doc(local_cli("list", "--model", name, "--status", "applied", as_json=True)) == {
        "count": 0,
        "requests": [],
    }
    assert (
        "no applied requests of" in local_cli("list", "--model", name, "--status", "applied").stdout
    )


def test_reject_exits_0_and_status_exits_4(cli: Cli, make_model: Callable[..., Any]) -> None:
    """`reject` needs a reason (else usage error 2), exits 0, and `status` then exits 4."""
    name, (version,) = make_model()
    assert cli("request", name, version, "--stage", "Production", actor="alice").exit_code == 3
    assert cli("reject", name, version, actor="erin").exit_code == EXIT_USAGE
    result = cli("reject", name, version, "--comment", "AUC dropped", actor="erin")
    assert result.exit_code == EXIT_OK, result.output
    assert "rejected by erin" in result.stdout and "AUC dropped" in result.stdout
    status = cli("status", name, version, as_json=True)
    assert status.exit_code == EXIT_ENDED
    assert _doc(status)["status"] == "rejected"


def test_cancel_exits_0_and_status_exits_4(local_cli: Cli, local_model: Callable[..., Any]) -> None:
    """Only the requester may `cancel`; it exits 0 and `status` then exits 4."""
    name, (version,) = local_model()
    filed = local_cli(
        "request", name, version, "--stage", "Production", actor="alice", as_json=True
    )
    rid = _doc(filed)["id"]
    denied = local_cli("cancel", name, version, actor="bob")
    assert denied.exit_code == EXIT_NOT_ALLOWED and "only the requester" in denied.stderr
    done = local_cli("cancel", name, version, "--request", rid, "-m", "wrong run", actor="alice")
    assert done.exit_code == EXIT_OK, done.output
    status = local_cli("status", name, version, "--request", rid, as_json=True)
    assert status.exit_code == EXIT_ENDED
    assert _doc(status)["cancelled"]["comment"] == "wrong run"


def test_expired_request_status_exits_4(
    local_cli: Cli, local_model: Callable[..., Any], tmp_path: Path, policy_dict: dict[str, Any]
) -> None:
    """A request past the policy's deadline reads as expired, and `status` exits 4."""
    policy_dict["rules"][0]["expires_after"] = "1s"
    short = tmp_path / "short.yaml"
    short.write_text(yaml.safe_dump(policy_dict))
    name, (version,) = local_model()
    assert local_cli("--policy", str(short), "request", name, version, "--stage", "Production",
                     actor="alice").exit_code == EXIT_PENDING  # fmt: skip
    time.sleep(1.2)
    status = local_cli("--policy", str(short), "status", name, version)
    assert status.exit_code == EXIT_ENDED, status.output
    assert "expired at" in status.stdout


def test_approved_not_applied_counts_as_pending() -> None:
    """A request approved by every level but not applied exits 3 and says how to retry."""
    from mlflow_approvals.cli import _exit_for, _status_line
    from mlflow_approvals.lifecycle import RequestRecord, Requirement, SignOff, Target, derive

    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    record = RequestRecord(
        id="abc", name="m", version="1", target=Target("stage", "Production"), requester="a",
        created_at=now, comment=None, rule="r", levels=((Requirement("x", 1),),),
        separation_of_duties=True, expires_at=None, policy_hash="h",
    )  # fmt: skip
    request = derive(record, (SignOff("b", "approve", "x", 1, None, now),), now)
    assert request.status.value == "approved"
    assert _exit_for(request) == EXIT_PENDING
    assert "mlflow-approvals approve m 1" in _status_line(request)


# ------------------------------------------------------------------------- errors --------
def test_usage_errors_exit_2(local_cli: Cli) -> None:
    """Bad or missing arguments exit 2 before any registry call."""
    for args in (
        ["request", "m", "1"],
        ["request", "m", "1", "--stage", "Production", "--alias", "champion"],
        ["request", "m", "1", "--alias", "champion", "--archive-existing"],
        ["list", "--status", "waiting"],
        ["wait", "m", "1", "--timeout", "soon"],
        ["policy", "explain", "m", "--stage", "Prod"],
        ["approve", "m"],
        ["nonsense"],
    ):
        result = local_cli(*args)
        assert result.exit_code == EXIT_USAGE, (args, result.output)
        assert result.stdout == ""


@pytest.mark.rest
def test_expected_errors_exit_1_without_traceback(cli: Cli, make_model: Callable[..., Any]) -> None:
    """A refused sign-off (6) or unknown version (1) exits with one message; --json adds a doc."""
    name, (version,) = make_model()
    assert cli("request", name, version, "--stage", "Production", actor="alice").exit_code == 3
    own = cli("approve", name, version, actor="alice")
    assert own.exit_code == EXIT_NOT_ALLOWED
    assert own.stderr.startswith("error: ") and "separation of duties" in own.stderr
    assert "Traceback" not in own.output and own.stdout == ""

    missing = cli("status", name, "99", as_json=True)
    assert missing.exit_code == EXIT_ERROR
    assert _doc(missing)["error"]["type"] == "ModelVersionNotFound"
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_unreachable_server_names_the_uri() -> None:
    """An unreachable tracking server exits 1 with a message naming its URI."""
    result = _cli("http://127.0.0.1:9", None)(
        "status", "m", "1", env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    )
    assert result.exit_code == EXIT_ERROR
    assert "could not reach the tracking server at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def boom() -> Iterator[str]:
    """A command that fails with an unexpected error, added to the group for one test."""

    @click.command(name="boom-test")
    def cmd() -> None:
        raise RuntimeError("something odd")

    main.add_command(cmd)
    try:
        yield "boom-test"
    finally:
        main.commands.pop("boom-test", None)


def test_unexpected_error_short_message_and_debug_traceback(boom: str) -> None:
    """An unexpected error exits 1 with a short message; --debug adds the traceback."""
    plain = CliRunner().invoke(main, [boom])
    assert plain.exit_code == EXIT_ERROR
    assert "unexpected RuntimeError: something odd" in plain.stderr
    assert "--debug" in plain.stderr and "Traceback" not in plain.stderr
    debug = CliRunner().invoke(main, ["--debug", boom])
    assert debug.exit_code == EXIT_ERROR
    assert "Traceback" in debug.stderr and "something odd" in debug.stderr


# ------------------------------------------------------------------------- wait ----------
def test_wait_follows_progress_and_exits_0_when_applied(
    cli: Cli, make_model: Callable[..., Any], tracking_uri: str, policy_file: Path
) -> None:
    """`wait` prints a line when something changes and exits 0 once the request is applied."""
    name, (version,) = make_model()
    assert cli("request", name, version, "--stage", "Production", actor="alice").exit_code == 3

    def sign() -> None:
        time.sleep(1.5)
        _sign_all(tracking_uri, policy_file, name, version)

    signer = threading.Thread(target=sign)
    signer.start()
    result = cli("wait", name, version, "--interval", "1s", "--timeout", "2m", as_json=True)
    signer.join()
    assert result.exit_code == EXIT_OK, result.output
    doc = _doc(result)
    assert set(doc) == {"outcome", "waited_seconds", "request"}
    assert doc["outcome"] == "applied" and doc["request"]["status"] == "applied"
    progress = result.stderr.splitlines()
    assert "pending at level 1 of 2; needs 1 of data-scientist, 1 of ml-engineer" in progress[0]
    assert "applied by dave" in progress[-1]
    assert len(progress) == len(set(line[12:] for line in progress))  # only changes are printed


def test_wait_exits_4_on_rejection(
    local_cli: Cli, local_model: Callable[..., Any], sqlite_uri: str, policy_file: Path
) -> None:
    """`wait` exits 4 when the request is rejected while it waits."""
    name, (version,) = local_model()
    assert local_cli("request", name, version, "--alias", "champion", actor="alice").exit_code == 3

    def reject() -> None:
        time.sleep(1.2)
        ApprovalClient(sqlite_uri, policy=str(policy_file), actor="erin").reject(
            name, version, "drift"
        )

    signer = threading.Thread(target=reject)
    signer.start()
    result = local_cli("wait", name, version, "--interval", "1s", "--timeout", "1m")
    signer.join()
    assert result.exit_code == EXIT_ENDED, result.output
    assert "rejected by erin" in result.stdout


def test_wait_times_out_with_exit_3(local_cli: Cli, local_model: Callable[..., Any]) -> None:
    """`wait` exits 3 when --timeout passes with the request still pending."""
    name, (version,) = local_model()
    filed = local_cli(
        "request", name, version, "--stage", "Production", actor="alice", as_json=True
    )
    started = time.monotonic()
    result = local_cli("wait", name, version, "--timeout", "1s", "--interval", "1s", as_json=True)
    assert result.exit_code == EXIT_PENDING, result.output
    assert time.monotonic() - started < 10
    assert _doc(result)["outcome"] == "timeout"
    assert _doc(result)["request"]["id"] == _doc(filed)["id"]


# ------------------------------------------------------------------------- audit ---------
def _needs_audit(method: str) -> None:
    if not hasattr(ApprovalClient, method):
        pytest.skip(f"ApprovalClient.{method} has not landed yet")


def test_audit_verify_passes_then_catches_tampering(
    local_cli: Cli, local_model: Callable[..., Any], sqlite_uri: str, policy_file: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    """`audit verify` exits 0 on an intact log and 1, naming the event, after one is edited."""
    _needs_audit("verify_audit")
    name, (version,) = local_model()
    local_cli("request", name, version, "--stage", "Production", actor="alice")
    _sign_all(sqlite_uri, policy_file, name, version)

    ok = local_cli("audit", "verify", name, version)
    assert ok.exit_code == EXIT_OK, ok.output
    assert "5/5 events valid" in ok.stdout
    assert _doc(local_cli("audit", "verify", name, as_json=True))["ok"] is True

    event = next(
        p for p in tmp_path.rglob("*.json")
        if "signoff.approved" in p.read_text() and '"bob"' in p.read_text()
    )  # fmt: skip
    event.write_text(event.read_text().replace('"bob"', '"mallory"'))
    bad = local_cli("audit", "verify", name, as_json=True)
    assert bad.exit_code == EXIT_ERROR
    assert _doc(bad)["ok"] is False
    assert "does not verify" in bad.stderr
    human = local_cli("audit", "verify", name)
    assert "INVALID" in human.stdout and human.exit_code == EXIT_ERROR


@pytest.mark.rest
def test_audit_export_writes_every_event(
    cli: Cli, make_model: Callable[..., Any], tmp_path: Path
) -> None:
    """`audit export` writes one line per event, in jsonl and in cloudevents format."""
    _needs_audit("export_audit")
    name, (version,) = make_model()
    cli("request", name, version, "--stage", "Production", actor="alice")
    cli("approve", name, version, actor="bob")
    for fmt in ("jsonl", "cloudevents"):
        out = tmp_path / f"trail.{fmt}"
        result = cli("audit", "export", name, "--out", str(out), "--format", fmt, as_json=True)
        assert result.exit_code == EXIT_OK, result.output
        assert _doc(result) == {"name": name, "path": str(out), "format": fmt, "events": 2}
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(lines) == 2
    assert lines[0]["specversion"] == "1.0"
    unwritable = cli("audit", "export", name, "--out", str(tmp_path / "no" / "such" / "f"))
    assert unwritable.exit_code == EXIT_ERROR and "could not write" in unwritable.stderr


def test_audit_reconcile_reports_changes_around_the_gate(
    local_cli: Cli, local_model: Callable[..., Any], sqlite_uri: str
) -> None:
    """`audit reconcile` exits 1 listing a stage change made around the gate, then 0."""
    _needs_audit("reconcile")
    name, (version,) = local_model()
    local_cli("request", name, version, "--stage", "Production", actor="alice")
    MlflowClient(sqlite_uri, sqlite_uri).transition_model_version_stage(name, version, "Production")
    found = local_cli("audit", "reconcile", name)
    assert found.exit_code == EXIT_ERROR, found.output
    assert "CHANGED" in found.stdout and "Production" in found.stdout
    again = local_cli("audit", "reconcile", name, as_json=True)
    assert again.exit_code == EXIT_OK, again.output
    assert _doc(again)["changes"] == []


# ------------------------------------------------------------------------- policy --------
def test_policy_validate(tmp_path: Path, policy_dict: dict[str, Any]) -> None:
    """`policy validate` exits 0 for a good file, 1 naming the file and field for a bad one."""
    good = CliRunner().invoke(main, ["policy", "validate", str(EXAMPLE_POLICY)])
    assert good.exit_code == EXIT_OK, good.output
    assert "valid (3 roles, 1 rule, default allow)" in good.stdout
    assert "level 1: 1 of data-scientist, 1 of ml-engineer" in good.stdout

    policy_dict["rules"][0]["levels"][1][0]["count"] = 5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(policy_dict))
    result = CliRunner().invoke(main, ["--json", "policy", "validate", str(bad)])
    assert result.exit_code == EXIT_ERROR
    doc = _doc(result)
    assert doc["valid"] is False and doc["path"] == str(bad)
    assert str(bad) in result.stderr and "count" in result.stderr


def test_policy_explain(tmp_path: Path, policy_dict: dict[str, Any]) -> None:
    """`policy explain` names the rule and who signs, in order; or says why nothing gates."""
    run = _cli(None, EXAMPLE_POLICY)
    gated = run("policy", "explain", "fraud-model", "--stage", "production")
    assert gated.exit_code == EXIT_OK, gated.output
    assert "rule 'production' applies" in gated.stdout
    assert gated.stdout.index("level 1: 1 of data-scientist") < gated.stdout.index("level 2")
    assert "data-scientist: alice, bob" in gated.stdout

    doc = _doc(run("policy", "explain", "fraud-model", "--alias", "champion", as_json=True))
    assert doc["rule"] == "production" and doc["outcome"] == "sign-off"
    assert doc["levels"][1] == [{"role": "business-owner", "count": 1, "members": ["dave"]}]
    assert doc["expires_after"] == "7d"

    ungated = run("policy", "explain", "churn-model", "--stage", "Production", as_json=True)
    assert _doc(ungated)["outcome"] == "allow" and _doc(ungated)["rule"] is None

    policy_dict["default"] = "deny"
    deny = tmp_path / "deny.yaml"
    deny.write_text(yaml.safe_dump(policy_dict))
    refused = _cli(None, deny)("policy", "explain", "churn-model", "--alias", "x")
    assert "refused (the policy's default is deny)" in refused.stdout

    none = _cli(None, None)("policy", "explain", "fraud-model", "--stage", "Production")
    assert none.exit_code == EXIT_ERROR and "no policy to explain" in none.stderr


# ------------------------------------------------------------------------- demo, help ----
def test_demo_exits_with_the_story_result() -> None:
    """`demo` runs the whole story on a temporary registry and exits 0."""
    pytest.importorskip("mlflow_approvals.demo", reason="mlflow_approvals.demo has not landed")
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == EXIT_OK, result.output
    assert "events valid" in result.stdout


def test_help_documents_the_exit_codes() -> None:
    """`--help` lists every exit code and the environment variables."""
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == EXIT_OK
    for code in (
        "0  success", "1  error", "2  usage error", "3  still pending", "4  rejected",
        "6  not allowed",
    ):  # fmt: skip
        assert code in result.stdout
    assert "MLFLOW_TRACKING_USERNAME" in result.stdout


def _commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def _long_options(cmd: click.Command) -> list[str]:
    opts = (opt for param in cmd.params for opt in getattr(param, "opts", []))
    return [opt for opt in opts if opt.startswith("--") and opt != "--help"]


def test_docs_describe_every_command_and_option() -> None:
    """docs/cli.md has a section for every command, naming each of its options."""
    text = (ROOT / "docs" / "cli.md").read_text()
    for opt in _long_options(main):
        assert f"`{opt}" in text, f"docs/cli.md does not mention the global option {opt}"
    global_options = set(_long_options(main))  # accepted after every command too
    for path, cmd in _commands(main):
        found = re.search(rf"^### `{re.escape(path)}\b.*?(?=^#)", text, flags=re.S | re.M)
        assert found, f"docs/cli.md has no section for `{path}`"
        for opt in set(_long_options(cmd)) - global_options:
            assert opt in found.group(0), f"docs/cli.md: section `{path}` does not name {opt}"


# ------------------------------------------------------------------------- start-up ------
@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["policy", "validate", str(EXAMPLE_POLICY)],
        [
            "--policy",
            str(EXAMPLE_POLICY),
            "policy",
            "explain",
            "fraud-model",
            "--stage",
            "Production",
        ],
    ],
    ids=["help", "version", "policy-validate", "policy-explain"],
)
def test_registry_free_commands_do_not_import_mlflow(args: list[str]) -> None:
    """--help, --version, `policy validate` and `policy explain` never import MLflow."""
    code = (
        "import sys; from click.testing import CliRunner; from mlflow_approvals.cli import main; "
        f"r = CliRunner().invoke(main, {args!r}); "
        "assert r.exit_code == 0, r.output; "
        "loaded = sorted(m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.')); "
        "assert not loaded, loaded"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def _console_script() -> str:
    script = shutil.which("mlflow-approvals", path=str(Path(sys.executable).parent))
    assert script, "the mlflow-approvals console script is not installed next to the interpreter"
    return script


def test_console_script_prints_only_json_on_stdout(
    local_model: Callable[..., Any], sqlite_uri: str, policy_file: Path
) -> None:
    """The installed console script: --json stdout parses as one document, exit codes hold."""
    name, (version,) = local_model()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": sqlite_uri,
        "MLFLOW_APPROVALS_POLICY": str(policy_file),
        "MLFLOW_TRACKING_USERNAME": "alice",
    }
    proc = subprocess.run(
        [_console_script(), "--json", "request", name, version, "--stage", "Production"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == EXIT_PENDING, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "pending" and doc["requester"] == "alice"

    version_proc = subprocess.run(
        [_console_script(), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version_proc.returncode == 0 and "mlflow-approvals" in version_proc.stdout


def test_break_glass_applies_now_and_exits_3_for_the_review(
    cli: Cli, make_model: Callable[..., Any], tracking_uri: str
) -> None:
    """`break-glass` by root moves the version now and exits 3 while its review waits."""
    name, (version,) = make_model()
    result = cli(
        "break-glass", name, version, "--stage", "Production", "--reason", "rollback", actor="root"
    )
    assert result.exit_code == EXIT_PENDING, result.output
    assert "applied now by break-glass" in result.stdout
    mv = ApprovalClient(tracking_uri, tracking_uri).get_model_version(name, version)
    assert mv.current_stage == "Production"


def test_break_glass_by_another_role_is_refused(
    cli: Cli, make_model: Callable[..., Any], tracking_uri: str
) -> None:
    """`break-glass` by alice (not in the break-glass roles) is refused (6) and moves nothing."""
    name, (version,) = make_model()
    result = cli(
        "break-glass", name, version, "--stage", "Production", "--reason", "hurry", actor="alice"
    )
    assert result.exit_code == EXIT_NOT_ALLOWED, result.output
    mv = ApprovalClient(tracking_uri, tracking_uri).get_model_version(name, version)
    assert mv.current_stage == "None"
