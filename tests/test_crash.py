"""Crash at every step: a process SIGKILLed at each point of a cycle, then the next step.

Each crash is a real SIGKILL of a real process (tests/crash_child.py wraps one port method of
its own engine, from outside the product). The next step runs in this process with a fresh
client; the cycle must complete with nothing lost or doubled, reconcile must record exactly
what the lost tail left behind, and the log must verify.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from conftest import register_versions, unique_name
from mlflow_approvals import ApprovalClient
from mlflow_approvals.audit import TYPE_PREFIX, AuditStore, event_hash, make_event
from mlflow_approvals.reconcile import ReconcileReport, reconcile_model
from mlflow_approvals.testing import free_port, mlflow_server
from mlflow_approvals.verify import VerifyReport

CHILD = Path(__file__).with_name("crash_child.py")
SIGNERS = ("bob", "carol", "dave")  # level 1: a data scientist and an ML engineer; level 2


class Cycle:
    """A model on a registry, clients acting as named users, and a step run to its death."""

    def __init__(self, uri: str, policy: dict[str, Any], folder: Path, versions: int) -> None:
        self.uri = uri
        self.policy = policy
        self.policy_path = folder / "policy.yaml"
        self.policy_path.write_text(yaml.safe_dump(policy))
        self.name = unique_name()
        self.versions = register_versions(uri, self.name, versions)

    def as_(self, actor: str) -> ApprovalClient:
        return ApprovalClient(self.uri, self.uri, policy=self.policy, actor=actor)

    def crash(self, step: str, actor: str, version: str, kill: dict[str, Any], **kw: Any) -> None:
        """Run ``step`` as ``actor`` in a child process and see it die at ``kill``."""
        spec = {
            "uri": self.uri,
            "policy": str(self.policy_path),
            "actor": actor,
            "step": step,
            "name": self.name,
            "version": version,
            "kill": kill,
            **kw,
        }
        done = subprocess.run(
            [sys.executable, str(CHILD), json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        )
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]

    def promote(self, version: str, signers: tuple[str, ...] = SIGNERS, **kw: Any) -> None:
        self.as_("alice").request_transition(self.name, version, "Production", **kw)
        for actor in signers:
            self.as_(actor).approve(self.name, version)

    def events(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """(hash, event) of every event of ``kind`` in the log, oldest first."""
        with tempfile.TemporaryDirectory() as tmp:
            files = self.as_("auditor").audit.read(self.name, tmp)
        found = [(event_hash(e), e) for e in (json.loads(raw) for _, raw in files)]
        found = [(h, e) for h, e in found if e["type"] == TYPE_PREFIX + kind]
        return sorted(found, key=lambda pair: pair[1]["time"])

    def verify(self) -> VerifyReport:
        return self.as_("auditor").verify_audit(self.name)

    def reconcile(self, abandon_after: timedelta = timedelta(0)) -> ReconcileReport:
        return reconcile_model(self.as_("auditor").engine, self.name, abandon_after=abandon_after)

    def tags(self, version: str) -> dict[str, str]:
        return dict(MlflowClient(self.uri, self.uri).get_model_version(self.name, version).tags)

    def stage(self, version: str) -> str:
        return str(
            MlflowClient(self.uri, self.uri).get_model_version(self.name, version).current_stage
        )

    def assert_promoted_once(self, version: str, requests: int = 1) -> None:
        """One application, the stage right, exactly the expected sign-offs, the index idle."""
        request = self.as_("auditor").get_request(self.name, version)
        assert request.status.value == "applied"
        assert sorted(s.actor for s in request.signoffs) == sorted(SIGNERS)
        tags = self.tags(version)
        applied = [k for k in tags if k.endswith(".applied")]
        filed = [k for k in tags if k.count(".") == 2 and k.startswith("mlflow_approvals.r.")]
        assert (len(applied), len(filed)) == (1, requests)
        assert tags["mlflow_approvals.index"] == "idle"
        assert self.stage(version) == "Production"
        applications = {e["id"] for _, e in self.events("stage.transitioned")}
        assert len(applications) == len(self.as_("auditor").list_requests(self.name, "applied"))


def invalid(report: VerifyReport) -> list[tuple[str, str | None]]:
    return [(line.hash, line.problem) for line in report.events if line.status != "VALID"]


@pytest.fixture
def cycle(sqlite_uri: str, tmp_path: Path, policy_dict: dict[str, Any]) -> Cycle:
    return Cycle(sqlite_uri, policy_dict, tmp_path, versions=1)


def test_crash_between_request_event_and_fact(cycle):
    """Killed after the request's event and before its fact: filed again, the cycle completes,
    and reconcile records exactly the orphaned request event as abandoned."""
    (v,) = cycle.versions
    cycle.crash(
        "request", "alice", v, {"call": "append", "match": "request.created", "when": "after"}
    )
    ((orphan, event),) = cycle.events("request.created")
    assert not any(k.startswith("mlflow_approvals.") for k in cycle.tags(v))  # no fact, no index
    assert invalid(cycle.verify()) == [(orphan, "not anchored")]
    young = cycle.reconcile(abandon_after=timedelta(hours=1))  # its step could be in flight
    assert ([i.event for i in young.unsettled], young.abandoned) == ([orphan], ())

    cycle.promote(v)
    cycle.assert_promoted_once(v)
    report = cycle.reconcile()
    (intent,) = report.abandoned
    assert (intent.version, intent.type, intent.event, intent.actor) == (
        v,
        "request.created",
        orphan,
        "alice",
    )
    rid = event["data"]["request_id"]
    assert report.lines == [
        f"ABANDONED  v{v} request.created {orphan[:12]} by alice (request {rid}): written, never "
        f"took effect; recorded as abandoned ({intent.record[:12]})"
    ]
    assert (report.changes, report.unsettled, report.ok, report.log_ok) == ((), (), True, True)
    after = cycle.verify()
    assert after.ok, str(after)
    (line,) = [line for line in after.events if line.hash == orphan]
    assert line.reason == f"(abandoned by {intent.record[:12]}: it never took effect)"
    assert line.abandoned_by == intent.record
    trail = cycle.policy_path.parent / "trail.jsonl"
    cycle.as_("auditor").export_audit(cycle.name, trail)
    records = {r["hash"]: r for r in map(json.loads, trail.read_text().splitlines())}
    assert records[orphan]["abandoned_by"] == intent.record and records[orphan]["verified"]
    again = cycle.reconcile()
    assert (again.abandoned, again.unsettled, again.changes) == ((), (), ())


def test_crash_between_signoff_event_and_fact(cycle):
    """Killed after the final sign-off's event and before its fact: the signer signs again, the
    promotion applies once, and reconcile abandons exactly the orphaned sign-off event."""
    (v,) = cycle.versions
    cycle.promote(v, signers=("bob", "carol"))
    cycle.crash(
        "approve", "dave", v, {"call": "append", "match": "signoff.approved", "when": "after"}
    )
    request = cycle.as_("auditor").get_request(cycle.name, v)
    assert (request.status.value, len(request.signoffs), cycle.stage(v)) == ("pending", 2, "None")
    orphan = cycle.events("signoff.approved")[-1][0]
    assert invalid(cycle.verify()) == [(orphan, "not anchored")]

    cycle.as_("dave").approve(cycle.name, v)
    cycle.assert_promoted_once(v)
    report = cycle.reconcile()
    assert [(i.type, i.event, i.actor) for i in report.abandoned] == [
        ("signoff.approved", orphan, "dave")
    ]
    assert (report.changes, report.unsettled, report.ok) == ((), (), True)
    assert cycle.verify().ok


def test_crash_between_request_fact_and_index(cycle):
    """Killed after the request fact and before the index: the request is not listed; filing
    again returns the same request and lists it, and the cycle completes with nothing to
    reconcile."""
    (v,) = cycle.versions
    cycle.crash("request", "alice", v, {"call": "set_tag", "match": ".index", "when": "before"})
    first = cycle.as_("auditor").get_request(cycle.name, v)
    assert "mlflow_approvals.index" not in cycle.tags(v)
    assert cycle.as_("auditor").list_requests(cycle.name) == []
    again = cycle.as_("alice").request_transition(cycle.name, v, "Production")
    assert again.id == first.id
    assert [r.id for r in cycle.as_("auditor").list_requests(cycle.name)] == [first.id]
    for actor in SIGNERS:
        cycle.as_(actor).approve(cycle.name, v)
    cycle.assert_promoted_once(v)
    report = cycle.reconcile()
    assert (report.abandoned, report.unsettled, report.changes) == ((), (), ())
    assert cycle.verify().ok


def test_crash_between_apply_event_and_registry_change(cycle):
    """Killed after the apply's event and before the stage moves: the request stays approved,
    apply completes it once, and the first apply event counts as a delivery of the second."""
    (v,) = cycle.versions
    cycle.promote(v, signers=("bob", "carol"))
    cycle.crash("approve", "dave", v, {"call": "transition", "when": "before"})
    assert cycle.as_("auditor").get_request(cycle.name, v).status.value == "approved"
    assert cycle.stage(v) == "None"
    ((orphan, _),) = cycle.events("stage.transitioned")
    assert invalid(cycle.verify()) == [(orphan, "not anchored")]

    cycle.as_("dave").apply(cycle.name, v)
    cycle.assert_promoted_once(v)
    report = cycle.verify()
    assert report.ok
    (line,) = [line for line in report.events if line.hash == orphan]
    assert line.duplicate_of is not None
    assert (cycle.reconcile().abandoned, cycle.reconcile().changes) == ((), ())


def test_crash_between_registry_change_and_applied_fact(cycle):
    """Killed after the stage moved and before the applied fact: apply records it (no second
    transition), and nothing is left to reconcile."""
    (v,) = cycle.versions
    cycle.promote(v, signers=("bob", "carol"))
    cycle.crash("approve", "dave", v, {"call": "transition", "when": "after"})
    assert cycle.stage(v) == "Production"
    assert cycle.as_("auditor").get_request(cycle.name, v).status.value == "approved"

    done = cycle.as_("carol").apply(cycle.name, v)
    assert done.applied is not None and done.applied.actor == "carol"
    cycle.assert_promoted_once(v)
    assert cycle.verify().ok
    report = cycle.reconcile()
    assert (report.abandoned, report.unsettled, report.changes) == ((), (), ())


def test_crash_during_archive_of_other_versions(sqlite_uri, tmp_path, policy_dict):
    """Killed after archiving the first of two other Production versions in the log: apply
    archives both and promotes once; the log verifies and nothing is left to reconcile."""
    cycle = Cycle(sqlite_uri, policy_dict, tmp_path, versions=3)
    v1, v2, v3 = cycle.versions
    cycle.promote(v1)
    cycle.promote(v2)
    cycle.promote(v3, signers=("bob", "carol"), archive_existing_versions=True)
    kill = {"call": "append", "match": "version.archived", "nth": 1, "when": "after"}
    cycle.crash("approve", "dave", v3, kill)
    assert [cycle.stage(v) for v in (v1, v2, v3)] == ["Production", "Production", "None"]
    assert len(cycle.events("version.archived")) == 1

    cycle.as_("dave").apply(cycle.name, v3)
    assert [cycle.stage(v) for v in (v1, v2, v3)] == ["Archived", "Archived", "Production"]
    cycle.assert_promoted_once(v3)
    archived = {e["data"]["model"]["version"] for _, e in cycle.events("version.archived")}
    assert archived == {v1, v2}
    assert cycle.verify().ok
    report = cycle.reconcile()
    assert (report.abandoned, report.unsettled, report.changes) == ((), (), ())


# ------------------------------------------------------------------ planted events ------
def _plant(cycle: Cycle, version: str, after: dict[str, Any]) -> str:
    """A stage.transitioned event written straight to the audit run, as an attacker could."""
    event = make_event(
        type="stage.transitioned",
        name=cycle.name,
        version=version,
        actor="mallory",
        before={"stage": "None", "version": version},
        after=after,
        request_id="0123456789ab",
    )
    return cycle.as_("mallory").audit.append(event)


def test_planted_application_abandoned_is_never_replayed(cycle):
    """A planted stage.transitioned event is abandoned as not applied, and a later direct move
    to that stage is still reported as a change around the gate."""
    (v,) = cycle.versions
    planted = _plant(cycle, v, {"stage": "Production", "version": v})
    report = cycle.reconcile()
    assert [(i.type, i.event) for i in report.abandoned] == [("stage.transitioned", planted)]
    assert report.changes == ()
    assert cycle.verify().ok
    (abandonment,) = cycle.events("intent.abandoned")
    assert abandonment[1]["data"]["after"] == {
        "event": planted,
        "status": "abandoned",
        "applied": False,
    }

    MlflowClient(cycle.uri, cycle.uri).transition_model_version_stage(cycle.name, v, "Production")
    moved = cycle.reconcile()
    assert [(c.what, c.expected, c.actual, c.gated) for c in moved.changes] == [
        ("stage", "None", "Production", True)
    ]
    assert not moved.ok


def test_planted_application_matching_the_registry_is_not_abandoned(cycle):
    """A planted application whose stage a plain client set is left unanchored, not abandoned,
    and the move is reported as a change around the gate."""
    (v,) = cycle.versions
    MlflowClient(cycle.uri, cycle.uri).transition_model_version_stage(cycle.name, v, "Production")
    planted = _plant(cycle, v, {"stage": "Production", "version": v})
    report = cycle.reconcile()
    assert report.abandoned == ()
    assert [(i.event, i.why.split(",")[0]) for i in report.unsettled] == [
        (planted, f"v{v} is in stage Production")
    ]
    assert [(c.what, c.expected, c.actual) for c in report.changes] == [
        ("stage", "None", "Production")
    ]
    assert invalid(cycle.verify()) == [(planted, "not anchored")]


def test_abandonment_of_an_applied_event_is_contradicted(cycle):
    """An abandonment planted for an event its fact holds fails verify as contradicted, and the
    application still counts for reconcile."""
    (v,) = cycle.versions
    cycle.promote(v)
    ((applied, _),) = cycle.events("stage.transitioned")
    store: AuditStore = cycle.as_("mallory").audit
    fake = make_event(
        type="intent.abandoned",
        name=cycle.name,
        version=v,
        actor="mallory",
        after={"event": applied, "status": "abandoned", "applied": False},
        parents=[applied],
        extra={"abandoned": applied},
    )
    digest = store.append(fake)
    store.anchor_abandonment(cycle.name, v, applied, digest)
    assert invalid(cycle.verify()) == [(digest, "contradicted")]
    report = cycle.reconcile()
    assert (report.changes, report.abandoned) == ((), ())


# ------------------------------------------------------------------ the tracking server ----
def test_tracking_server_killed_and_restarted_mid_cycle(tmp_path, policy_dict, monkeypatch):
    """The tracking server SIGKILLed between a sign-off's event and its fact: the signer gets
    an error naming the server, and once it is back on the same store and port the cycle
    completes, and reconcile abandons exactly the orphaned sign-off."""
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once, not in minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    root, port = tmp_path / "server", free_port()
    with mlflow_server(root, port=port) as server:
        cycle = Cycle(server.uri, policy_dict, tmp_path, versions=1)
        (v,) = cycle.versions
        cycle.promote(v, signers=("bob",))
        carol = cycle.as_("carol")
        append = carol.engine.audit.append

        def append_then_kill(event: dict[str, Any], run_id: str | None = None) -> str:
            digest = append(event, run_id)
            os.killpg(server.pid, signal.SIGKILL)
            return digest

        carol.engine.audit.append = append_then_kill  # type: ignore[method-assign]
        with pytest.raises(MlflowException) as failed:
            carol.approve(cycle.name, v)
        message = str(failed.value)  # the server and the write that failed
        assert f"http://127.0.0.1:{port}/api/2.0/mlflow/model-versions/set-tag" in message

    with mlflow_server(root, port=port) as again:
        assert again.uri == server.uri
        request = cycle.as_("auditor").get_request(cycle.name, v)
        assert (request.status.value, [s.actor for s in request.signoffs]) == ("pending", ["bob"])
        orphan = cycle.events("signoff.approved")[-1][0]
        assert invalid(cycle.verify()) == [(orphan, "not anchored")]
        cycle.as_("carol").approve(cycle.name, v)
        cycle.as_("dave").approve(cycle.name, v)
        cycle.assert_promoted_once(v)
        report = cycle.reconcile()
        assert [(i.type, i.event, i.actor) for i in report.abandoned] == [
            ("signoff.approved", orphan, "carol")
        ]
        assert (report.changes, report.ok) == ((), True)
        assert cycle.verify().ok
