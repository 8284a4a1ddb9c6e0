"""reconcile: changes of stages, aliases and reserved tags that bypassed the gate."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from conftest import MLFLOW_MAJOR, register_versions, unique_name
from mlflow_approvals import ApprovalClient
from mlflow_approvals.audit import TYPE_PREFIX


class Env:
    """A registry to act on: clients acting as named users, a plain client, fresh models."""

    def __init__(self, uri: str, policy: dict[str, Any]) -> None:
        self.uri = uri
        self.policy = policy
        self.plain = MlflowClient(uri, uri)

    def as_(self, actor: str) -> ApprovalClient:
        return ApprovalClient(self.uri, self.uri, policy=self.policy, actor=actor)

    def model(self, count: int = 1) -> tuple[str, list[str]]:
        name = unique_name()
        return name, register_versions(self.uri, name, count)

    def promote(self, name: str, version: str, alias: str | None = None) -> None:
        if alias:
            self.as_("alice").request_alias(name, version, alias)
        else:
            self.as_("alice").request_transition(name, version, "Production")
        for actor in ("bob", "carol", "dave"):
            self.as_(actor).approve(name, version)

    def detected(self, name: str) -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory() as tmp:
            files = self.as_("auditor").audit.read(name, tmp)
        events = [json.loads(raw) for _, raw in files]
        found = [e for e in events if e["type"] == TYPE_PREFIX + "change.detected"]
        return sorted(found, key=lambda e: e["time"])


@pytest.fixture
def env(tracking_uri: str, policy_dict: dict[str, Any]) -> Env:
    """The test runs on a sqlite registry and on the session's real server."""
    return Env(tracking_uri, policy_dict)


@pytest.fixture
def local(sqlite_uri: str, policy_dict: dict[str, Any]) -> Env:
    """The test runs on a sqlite registry only."""
    return Env(sqlite_uri, policy_dict)


@pytest.mark.rest
def test_plain_stage_change_is_reported_recorded_and_not_repeated(env):
    """A stage changed by a plain MlflowClient is reported, audited, and reported only once."""
    name, (v,) = env.model()
    env.plain.transition_model_version_stage(name, v, "Production")
    report = env.as_("auditor").reconcile(name)
    assert not report.ok
    (change,) = report.changes
    assert (change.what, change.version, change.expected, change.actual) == (
        "stage",
        v,
        "None",
        "Production",
    )
    assert report.lines == [
        f"CHANGED  v{v} stage: the audit log says 'None', the registry has 'Production'"
    ]
    (event,) = env.detected(name)
    assert event["data"]["actor"]["id"] == "mlflow-approvals"
    assert event["data"]["before"] == {"stage": "None", "version": v}
    assert event["data"]["after"] == {"stage": "Production", "version": v}
    assert event["subject"].endswith(f"/{v}")
    again = env.as_("auditor").reconcile(name)
    assert again.ok and again.changes == ()
    assert len(env.detected(name)) == 1
    assert env.as_("auditor").verify_audit(name).ok


@pytest.mark.rest
def test_plain_alias_change_is_reported_once(env):
    """An alias set, then moved, by a plain MlflowClient is reported each time, once."""
    name, (v1, v2) = env.model(count=2)
    env.plain.set_registered_model_alias(name, "champion", v1)
    (first,) = env.as_("auditor").reconcile(name).changes
    assert (first.what, first.key, first.expected, first.actual) == ("alias", "champion", None, v1)
    env.plain.set_registered_model_alias(name, "champion", v2)
    (moved,) = env.as_("auditor").reconcile(name).changes
    assert (moved.expected, moved.actual) == (v1, v2)
    assert env.as_("auditor").reconcile(name).ok
    after = [e["data"]["after"] for e in env.detected(name)]
    assert after == [
        {"alias": "champion", "version": v1},
        {"alias": "champion", "version": v2},
    ]


def test_approved_promotions_are_not_changes(local):
    """Stages and aliases set through approvals match the log: nothing to report."""
    name, (v1, v2) = local.model(count=2)
    local.promote(name, v1)
    local.promote(name, v2, alias="champion")
    report = local.as_("auditor").reconcile(name)
    assert report.ok, report
    assert report.summary.startswith("0 changes outside the approval gate (2 versions checked")
    assert local.detected(name) == []


def test_change_after_an_approved_promotion_is_reported(local):
    """Moving an approved Production version away with a plain client is reported."""
    name, (v,) = local.model()
    local.promote(name, v)
    local.plain.transition_model_version_stage(name, v, "Archived")
    (change,) = local.as_("auditor").reconcile(name).changes
    assert (change.expected, change.actual) == ("Production", "Archived")


def test_deleting_an_approved_version_is_reported_with_its_alias(local):
    """Deleting a version (which silently drops its aliases) is reported, alias included."""
    name, (v1, _) = local.model(count=2)
    local.promote(name, v1, alias="champion")
    local.plain.delete_model_version(name, v1)
    report = local.as_("auditor").reconcile(name)
    # MLflow 3 drops the version's aliases; MLflow 2.x leaves the alias naming the deleted version.
    alias_gone = [("alias", v1, "champion", v1, None)] if MLFLOW_MAJOR >= 3 else []
    assert [(c.what, c.version, c.key, c.expected, c.actual) for c in report.changes] == [
        ("version", v1, None, "exists", "deleted"),
        *alias_gone,
    ]
    assert local.as_("auditor").reconcile(name).ok
    # Its deletion was never recorded: verify fails on every event of it (docs/audit.md).
    verified = local.as_("auditor").verify_audit(name)
    assert {line.problem for line in verified.events if line.version == v1} == {"orphaned"}
    assert not verified.ok


def test_ungated_change_is_recorded_but_not_a_bypass(local):
    """A change to a target no rule gates is reported and recorded, but leaves the report ok."""
    name, (v,) = local.model()
    local.as_("alice").transition_model_version_stage(name, v, "Staging")
    report = local.as_("auditor").reconcile(name)
    (change,) = report.changes
    assert (change.expected, change.actual, change.gated) == ("None", "Staging", False)
    assert report.ok
    assert "1 ungated change recorded" in report.summary
    assert report.lines[0].startswith("UNGATED")


def test_gated_change_around_the_gate_is_a_bypass(local):
    """A plain MlflowClient moving a version to a gated stage makes the report not ok."""
    name, (v,) = local.model()
    local.plain.transition_model_version_stage(name, v, "Production")
    report = local.as_("auditor").reconcile(name)
    (change,) = report.changes
    assert change.gated and not report.ok
    assert report.lines[0].startswith("CHANGED")


def test_forged_reserved_tag_is_reported_once(local):
    """A reserved tag written by a plain client is reported once, with its key."""
    name, (v,) = local.model()
    local.plain.set_model_version_tag(name, v, "mlflow_approvals.r.0123456789ab.approved", "yes")
    (change,) = local.as_("auditor").reconcile(name).changes
    assert (change.what, change.version, change.key) == (
        "tag",
        v,
        "mlflow_approvals.r.0123456789ab.approved",
    )
    assert local.as_("auditor").reconcile(name).ok
    (event,) = local.detected(name)
    assert event["data"]["after"]["value"] == "yes"


def test_deleted_change_record_is_reported_again(local):
    """Deleting a change.detected event does not hide the change: it is reported again."""
    name, (v,) = local.model()
    local.plain.transition_model_version_stage(name, v, "Staging")
    (first,) = local.as_("auditor").reconcile(name).changes
    run_id = local.as_("auditor").audit.run_ids(name, create=False)[0]
    root = Path(local.plain.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    (path,) = root.glob(f"events/v{v}/*-{first.event}.json")
    path.unlink()
    (again,) = local.as_("auditor").reconcile(name).changes
    assert (again.expected, again.actual) == ("None", "Staging")


def test_model_without_changes_writes_nothing(local):
    """Reconciling a model nothing bypassed writes no event and creates no audit run."""
    name, _ = local.model(count=2)
    assert local.as_("auditor").reconcile(name).ok
    assert local.plain.get_experiment_by_name("mlflow-approvals-audit") is None


def test_report_to_dict_has_a_stable_shape(local):
    """The --json view of reconcile lists each change with what, version, key, values and event."""
    name, (v,) = local.model()
    local.plain.transition_model_version_stage(name, v, "Staging")
    data = local.as_("auditor").reconcile(name).to_dict()
    assert set(data) == {
        "ok",
        "name",
        "summary",
        "log_ok",
        "versions_checked",
        "events_replayed",
        "changes",
        "reviews",
        "abandoned",
        "unsettled",
    }
    (change,) = data["changes"]
    assert set(change) == {"what", "version", "key", "expected", "actual", "event", "gated"}
    json.dumps(data)
