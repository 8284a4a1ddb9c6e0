"""Checks and evidence in the lifecycle, against a real MLflow: real runs, metrics, tags and logged
files (a sqlite registry, and the session's approvals server)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import PASSWORD, ApprovalsServer, signed_in, unique_name
from mlflow_approvals import ApprovalClient, ChecksFailed, InvalidRequest
from mlflow_approvals.cli import EXIT_CHECKS, EXIT_OK, EXIT_PENDING, main
from mlflow_approvals.lifecycle import Status
from mlflow_approvals.tags import PREFIX
from mlflow_approvals.testing import _model_experiment

CHECKS = [
    {"metric": "val_auc", "min": 0.9},
    {"tag": "validation_status", "equals": "passed"},
    {"artifact": "README.md"},
    {"description": True},
]


def make_version(
    uri: str,
    name: str,
    *,
    auc: float | None = 0.95,
    readme: bool = True,
    status: str | None = "passed",
    description: str | None = "model card: fraud scoring, AUC 0.95 on holdout",
    lr: str = "0.1",
) -> tuple[str, str]:
    """Register a version of ``name`` (created when missing) from a real run; (version, run)."""
    client = MlflowClient(uri, uri)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    run = client.create_run(_model_experiment(client, uri))
    run_id = run.info.run_id
    if auc is not None:
        client.log_metric(run_id, "val_auc", auc)
    client.log_param(run_id, "lr", lr)
    client.set_tag(run_id, "mlflow.source.git.commit", f"commit-{lr}")
    client.log_text(run_id, "artifact_path: model\n", "model/MLmodel")
    if readme:
        client.log_text(run_id, "# fraud model\n", "model/README.md")
    client.set_terminated(run_id)
    tags = {"validation_status": status} if status is not None else None
    mv = client.create_model_version(
        name, f"runs:/{run_id}/model", run_id=run_id, tags=tags, description=description
    )
    return str(mv.version), run_id


class Env:
    """A sqlite registry under the example policy whose production rule demands CHECKS."""

    def __init__(self, uri: str, policy: dict[str, Any]) -> None:
        self.uri = uri
        policy["rules"][0]["checks"] = CHECKS
        self.policy = policy
        self.plain = MlflowClient(uri, uri)
        self.name = unique_name()

    def as_(self, actor: str) -> ApprovalClient:
        return ApprovalClient(self.uri, self.uri, policy=self.policy, actor=actor)

    def reserved(self, version: str) -> dict[str, str]:
        tags = self.plain.get_model_version(self.name, version).tags
        return {k: v for k, v in tags.items() if k.startswith(PREFIX)}

    def events(self) -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory() as tmp:
            return [json.loads(raw) for _, raw in self.as_("x").audit.read(self.name, tmp)]

    def alias(self) -> str | None:
        held = self.plain.get_registered_model(self.name).aliases.get("champion")
        return None if held is None else str(held)

    def level_one(self, version: str) -> None:
        self.as_("alice").request_alias(self.name, version, "champion")
        self.as_("bob").approve(self.name, version)
        self.as_("carol").approve(self.name, version)

    def run_dir(self, run_id: str) -> Path:
        uri = self.plain.get_run(run_id).info.artifact_uri
        return Path(uri.removeprefix("file://"))


@pytest.fixture
def env(sqlite_uri: str, policy_dict: dict[str, Any]) -> Env:
    return Env(sqlite_uri, policy_dict)


def test_passing_checks_are_recorded_in_the_request(env):
    """Every check passes: the request is filed with its results, value and threshold."""
    v, _ = make_version(env.uri, env.name)
    request = env.as_("alice").request_alias(env.name, v, "champion")
    assert request.status is Status.PENDING
    by_name = {r.name: r for r in request.checks}
    assert len(by_name) == 4 and all(r.passed for r in request.checks)
    auc = next(r for r in request.checks if "val_auc" in r.name)
    assert auc.value == pytest.approx(0.95) and auc.threshold is not None
    assert auc.evaluated_at is not None


@pytest.mark.parametrize(
    "kwargs, failing",
    [
        ({"auc": 0.5}, ["val_auc"]),
        ({"auc": None}, ["val_auc"]),
        ({"status": "failed"}, ["validation_status"]),
        ({"status": None}, ["validation_status"]),
        ({"readme": False}, ["README.md"]),
        ({"description": None}, ["description"]),
        (
            {"auc": 0.5, "readme": False, "status": "failed"},
            ["val_auc", "validation_status", "README.md"],
        ),
    ],
)
def test_failing_checks_refuse_the_filing_and_write_nothing(env, kwargs, failing):
    """A failing check refuses the request: ChecksFailed lists every check; no tag is written."""
    v, _ = make_version(env.uri, env.name, **kwargs)
    with pytest.raises(ChecksFailed) as info:
        env.as_("alice").request_alias(env.name, v, "champion")
    failed = [r.name for r in info.value.results.results if not r.passed]
    assert len(failed) == len(failing)
    assert all(any(word in name for name in failed) for word in failing)
    assert len(info.value.results.results) == 4  # all evaluated, none skipped
    assert env.reserved(v) == {}
    assert [e["type"].rsplit(".", 2)[-2:] for e in env.events()] == [["checks", "failed"]]


def test_gated_alias_set_with_failing_checks_raises_checks_failed(env):
    """The drop-in set_registered_model_alias raises ChecksFailed, not ApprovalPending."""
    v, _ = make_version(env.uri, env.name, auc=0.1)
    with pytest.raises(ChecksFailed):
        env.as_("alice").set_registered_model_alias(env.name, "champion", v)
    assert env.alias() is None


def test_dry_run_reports_every_check_and_writes_nothing(env):
    """check() evaluates all checks and writes no tag and no event."""
    v, _ = make_version(env.uri, env.name, auc=0.5, readme=False)
    report = env.as_("alice").check(env.name, v, alias="champion")
    assert not report.passed
    assert len(report.results) == 4 and len(report.failed) == 2
    assert env.reserved(v) == {}
    assert env.as_("x").audit.run_ids(env.name, create=False) == []


def test_dry_run_of_an_ungated_target_has_no_checks(env):
    """No rule gates Staging: the dry run passes with no checks."""
    v, _ = make_version(env.uri, env.name)
    report = env.as_("alice").check(env.name, v, stage="Staging")
    assert report.passed and report.results == ()


def test_a_check_failing_before_the_apply_blocks_it_until_fixed(env):
    """A tag that stopped passing blocks the final sign-off's apply; apply() succeeds after."""
    v, _ = make_version(env.uri, env.name)
    env.level_one(v)
    env.plain.set_model_version_tag(env.name, v, "validation_status", "revoked")
    with pytest.raises(ChecksFailed):
        env.as_("dave").approve(env.name, v)
    assert env.alias() is None
    assert env.as_("x").get_request(env.name, v).status is Status.APPROVED
    env.plain.set_model_version_tag(env.name, v, "validation_status", "passed")
    assert env.as_("dave").apply(env.name, v).status is Status.APPLIED
    assert env.alias() == v
    assert env.as_("x").verify_audit(env.name).ok


def test_changed_model_file_invalidates_the_request(env):
    """A model file changed between filing and the final sign-off: invalidated, not promoted."""
    v, run_id = make_version(env.uri, env.name)
    env.level_one(v)
    (env.run_dir(run_id) / "model" / "README.md").write_text("# a different model card\n")
    with pytest.raises(InvalidRequest, match="invalidated"):
        env.as_("dave").approve(env.name, v)
    assert env.alias() is None
    after = env.as_("x").get_request(env.name, v)
    assert after.status is Status.INVALIDATED
    assert env.as_("x").verify_audit(env.name).ok


def test_signoffs_carry_the_digest_of_the_files(env):
    """The request and every sign-off record the evidence digest of the model files."""
    v, _ = make_version(env.uri, env.name)
    env.level_one(v)
    request = env.as_("x").get_request(env.name, v)
    assert request.digest and request.digest.startswith("sha256:")
    assert [s.digest for s in request.signoffs] == [request.digest] * 2


def test_request_records_what_changed_against_the_holder(env):
    """The request shows parameter, metric and commit changes against the current holder."""
    v1, _ = make_version(env.uri, env.name, lr="0.1", auc=0.93)
    env.level_one(v1)
    env.as_("dave").approve(env.name, v1)
    v2, _ = make_version(env.uri, env.name, lr="0.05", auc=0.96)
    request = env.as_("alice").request_alias(env.name, v2, "champion")
    changes = dict(request.changes or {})
    assert changes["against"] == v1
    assert changes["params"]["changed"]["lr"] == ["0.1", "0.05"]
    assert changes["code"]["commit"] == ["commit-0.1", "commit-0.05"]
    created = [e for e in env.events() if e["type"].endswith("request.created")][-1]
    assert created["data"]["changes"]["against"] == v1
    assert created["data"]["evidence"]["digest"] == request.digest


# -- the command line ------------------------------------------------------------------------


def _cli(env: Env, tmp_path: Path, *args: str) -> Any:
    import yaml

    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(env.policy))
    head = ["--tracking-uri", env.uri, "--policy", str(policy), "--as", "alice"]
    return CliRunner().invoke(main, [*head, *args])


def test_cli_check_exits_0_when_all_pass_and_5_when_one_fails(env, tmp_path):
    """`mlflow-approvals check` exits 0 when every check passes, 5 when any fails."""
    good, _ = make_version(env.uri, env.name)
    bad, _ = make_version(env.uri, env.name, auc=0.2)
    assert _cli(env, tmp_path, "check", env.name, good, "--alias", "champion").exit_code == EXIT_OK
    failed = _cli(env, tmp_path, "check", env.name, bad, "--alias", "champion")
    assert failed.exit_code == EXIT_CHECKS
    assert "val_auc" in failed.output


def test_cli_request_exits_5_when_checks_fail(env, tmp_path):
    """`mlflow-approvals request` exits 5 on failing checks, 3 once they pass."""
    bad, _ = make_version(env.uri, env.name, readme=False)
    good, _ = make_version(env.uri, env.name)
    failed = _cli(env, tmp_path, "request", env.name, bad, "--alias", "champion")
    assert failed.exit_code == EXIT_CHECKS
    assert "README.md" in failed.output
    ok = _cli(env, tmp_path, "request", env.name, good, "--alias", "champion")
    assert ok.exit_code == EXIT_PENDING


# -- the approvals server ----------------------------------------------------------------------


def test_server_refuses_a_filing_whose_checks_fail(approvals_server: ApprovalsServer):
    """On the server, the rule's checks run there: ChecksFailed reaches the client with results."""
    name = unique_name("checked")
    with signed_in("alice"):
        bad, _ = make_version(approvals_server.uri, name, readme=False)
        good, _ = make_version(approvals_server.uri, name)
    alice = ApprovalClient(
        approvals_server.uri, approvals_server.uri, server_auth=("alice", PASSWORD)
    )
    with pytest.raises(ChecksFailed) as info:
        alice.request_transition(name, bad, "Production")
    assert [r.passed for r in info.value.results.results].count(False) == 1
    assert alice.check(name, good, stage="Production").passed
    assert alice.request_transition(name, good, "Production").digest


RAISING = """
def broken(context):
    raise RuntimeError("the fairness service is down")


def fair(context):
    return context.run.data.metrics.get("val_auc", 0) >= context.options["threshold"], "ok"
"""


def test_custom_checks_from_entry_points_gate_the_filing(env, install_checks):
    """A custom check that raises refuses the filing with its error; a passing one lets it in."""
    install_checks({"broken": "broken", "fair": "fair"}, RAISING)
    v, _ = make_version(env.uri, env.name)
    env.policy["rules"][0]["checks"] = [{"custom": "broken"}]
    with pytest.raises(ChecksFailed) as info:
        env.as_("alice").request_alias(env.name, v, "champion")
    assert "the fairness service is down" in info.value.results.results[0].detail
    env.policy["rules"][0]["checks"] = [{"custom": "fair", "threshold": 0.9}]
    assert env.as_("alice").request_alias(env.name, v, "champion").checks[0].passed


def test_server_invalidates_a_request_whose_files_changed(approvals_server: ApprovalsServer):
    """On the server, a model file changed after filing invalidates the request at the apply."""
    name = unique_name("checked")
    with signed_in("alice"):
        v, run_id = make_version(approvals_server.uri, name)
    alice = ApprovalClient(
        approvals_server.uri, approvals_server.uri, server_auth=("alice", PASSWORD)
    )
    alice.request_transition(name, v, "Production")
    (readme,) = (approvals_server.server.root / "artifacts").rglob(f"{run_id}/**/README.md")
    readme.write_text("# another model card\n")
    bob = ApprovalClient(approvals_server.uri, approvals_server.uri, server_auth=("bob", PASSWORD))
    with pytest.raises(InvalidRequest, match="invalidated"):
        bob.approve(name, v)
    assert bob.get_request(name, v).status is Status.INVALIDATED
    with signed_in("bob"):
        assert MlflowClient(approvals_server.uri).get_model_version(name, v).current_stage == "None"
