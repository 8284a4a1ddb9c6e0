"""Every step writes an audit event carrying what Part 11 / Annex 11 ask; export and history."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from typing import Any

import pytest
from mlflow import MlflowClient

from conftest import register_versions, unique_name
from mlflow_approvals import ApprovalClient, InvalidRequest, NotAuthorized
from mlflow_approvals.audit import (
    DEFAULT_EXPERIMENT,
    MODEL_TAG,
    TYPE_PREFIX,
    canonical,
    event_path,
    make_event,
)
from mlflow_approvals.lifecycle import format_history
from mlflow_approvals.tags import PREFIX

ENVELOPE = ("specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


class Env:
    """A registry to act on: clients acting as named users, a plain client, fresh models."""

    def __init__(self, uri: str, policy: dict[str, Any]) -> None:
        self.uri = uri
        self.policy = policy
        self.plain = MlflowClient(uri, uri)

    def as_(self, actor: str, **kw: Any) -> ApprovalClient:
        return ApprovalClient(self.uri, self.uri, policy=self.policy, actor=actor, **kw)

    def model(self, count: int = 1) -> tuple[str, list[str]]:
        name = unique_name()
        return name, register_versions(self.uri, name, count)


@pytest.fixture
def env(tracking_uri: str, policy_dict: dict[str, Any]) -> Env:
    """The test runs on a sqlite registry and on the session's real server."""
    return Env(tracking_uri, policy_dict)


@pytest.fixture
def local(sqlite_uri: str, policy_dict: dict[str, Any]) -> Env:
    """The test runs on a sqlite registry only (the server adds nothing to what it checks)."""
    return Env(sqlite_uri, policy_dict)


def events_of(client: ApprovalClient, name: str) -> list[dict[str, Any]]:
    """Every stored event of ``name``, oldest first, each with its file path under "_path"."""
    with tempfile.TemporaryDirectory() as tmp:
        files = client.audit.read(name, tmp)
    found = []
    for path, raw in files:
        event = json.loads(raw)
        event["_path"], event["_hash"] = path, hashlib.sha256(raw).hexdigest()
        found.append(event)
    return sorted(found, key=lambda e: e["time"])


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"].removeprefix(TYPE_PREFIX) for e in events]


def of_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == TYPE_PREFIX + kind]


def reserved(plain: MlflowClient, name: str, version: str) -> dict[str, str]:
    tags = plain.get_model_version(name, version).tags
    return {k: v for k, v in tags.items() if k.startswith(PREFIX)}


def assert_required_fields(event: dict[str, Any], name: str, mv: Any, policy_hash: str) -> None:
    """The fields §11.10(e), §11.50 and Annex 11 §9 ask of each event."""
    assert set(ENVELOPE) <= set(event)
    assert event["specversion"] == "1.0" and event["id"]
    assert event["source"] == f"/mlflow-approvals/registered-models/{name}"
    assert event["subject"] == f"models:/{name}/{mv.version}"
    assert TIME.match(event["time"])
    data = event["data"]
    assert data["actor"]["id"] and data["actor"]["display_name"]
    assert data["meaning"]
    assert {"comment", "before", "after", "request_id", "parents"} <= set(data)
    assert data["request_id"]
    assert data["policy"] == {"hash": policy_hash, "rule": "production"}
    assert data["model"] == {
        "name": name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "source": mv.source,
    }
    assert event["_path"] == f"events/v{mv.version}/" + event["_path"].rsplit("/", 1)[1]
    assert event["_path"].endswith(f"-{event['_hash']}.json")


# -- each kind of event ---------------------------------------------------------------------


@pytest.mark.rest
def test_promotion_writes_request_signoff_apply_and_archive_events(env):
    """A full promotion writes request, three sign-offs, the apply, and one archive event."""
    name, (old, new) = env.model(count=2)
    env.plain.transition_model_version_stage(name, old, "Production")
    alice = env.as_("alice")
    alice.request_transition(
        name, new, "Production", archive_existing_versions=True, comment="better recall"
    )
    env.as_("bob").approve(name, new, comment="metrics ok")
    env.as_("carol").approve(name, new)
    env.as_("dave", display_name="Dave Example").approve(name, new, comment="go")
    events = events_of(alice, name)
    assert kinds(events) == [
        "request.created",
        "signoff.approved",
        "signoff.approved",
        "signoff.approved",
        "version.archived",
        "stage.transitioned",
    ]
    mv_new, mv_old = env.plain.get_model_version(name, new), env.plain.get_model_version(name, old)
    policy_hash = alice.policy.content_hash
    for event in events:
        mv = mv_old if event["type"].endswith("version.archived") else mv_new
        assert_required_fields(event, name, mv, policy_hash)
    request, bob, _, dave, archived, applied = events
    rid = request["data"]["request_id"]
    assert {e["data"]["request_id"] for e in events} == {rid}
    assert request["data"]["actor"] == {"id": "alice", "display_name": "alice"}
    assert request["data"]["meaning"] == "request"
    assert request["data"]["comment"] == "better recall"
    assert request["data"]["before"] == {"stage": "None", "version": new}
    assert request["data"]["after"] == {"stage": "Production", "version": new}
    assert (bob["data"]["meaning"], bob["data"]["comment"]) == ("approval", "metrics ok")
    assert (bob["data"]["role"], bob["data"]["level"]) == ("data-scientist", 1)
    assert dave["data"]["actor"] == {"id": "dave", "display_name": "Dave Example"}
    assert (dave["data"]["role"], dave["data"]["level"]) == ("business-owner", 2)
    assert archived["data"]["actor"]["id"] == "mlflow-approvals"
    assert archived["subject"] == f"models:/{name}/{old}"
    assert archived["data"]["before"] == {"stage": "Production", "version": old}
    assert archived["data"]["after"] == {"stage": "Archived", "version": old}
    assert applied["data"]["meaning"] == "application"
    assert applied["data"]["before"] == {"stage": "None", "version": new}
    assert applied["data"]["after"] == {"stage": "Production", "version": new}
    # each event names the newest anchored events its writer saw
    assert bob["data"]["parents"] == [request["_hash"]]
    assert request["_hash"] in dave["data"]["parents"]


def test_archive_events_are_anchored_and_verify(env):
    """The system events of archive_existing_versions are anchored: the log verifies."""
    name, (old, new) = env.model(count=2)
    env.plain.transition_model_version_stage(name, old, "Production")
    env.as_("alice").request_transition(name, new, "Production", archive_existing_versions=True)
    for actor in ("bob", "carol", "dave"):
        env.as_(actor).approve(name, new)
    report = env.as_("auditor").verify_audit(name)
    assert report.ok, report


def test_each_version_archived_gets_its_own_event(local):
    """With two versions in Production, archive_existing_versions writes an event for each."""
    name, (a, b, new) = local.model(count=3)
    local.plain.transition_model_version_stage(name, a, "Production")
    local.plain.transition_model_version_stage(name, b, "Production")
    local.as_("alice").request_transition(name, new, "Production", archive_existing_versions=True)
    for actor in ("bob", "carol", "dave"):
        local.as_(actor).approve(name, new)
    archived = of_kind(events_of(local.as_("x"), name), "version.archived")
    assert sorted(e["data"]["model"]["version"] for e in archived) == sorted([a, b])


def test_rejection_event_carries_the_reason(env):
    """A rejection is audited with its meaning and reason."""
    name, (v,) = env.model()
    env.as_("alice").request_transition(name, v, "Production")
    env.as_("carol").reject(name, v, comment="drift on segment B")
    (event,) = of_kind(events_of(env.as_("x"), name), "signoff.rejected")
    assert event["data"]["meaning"] == "rejection"
    assert event["data"]["comment"] == "drift on segment B"
    assert event["data"]["actor"]["id"] == "carol"
    assert env.as_("x").verify_audit(name).ok


def test_cancellation_event_records_before_and_after(env):
    """A cancellation is audited with who, why and the status before and after."""
    name, (v,) = env.model()
    env.as_("alice").request_transition(name, v, "Production")
    env.as_("alice").cancel(name, v, comment="wrong version")
    (event,) = of_kind(events_of(env.as_("x"), name), "request.cancelled")
    assert event["data"]["meaning"] == "cancellation"
    assert event["data"]["comment"] == "wrong version"
    assert event["data"]["before"] == {"status": "pending"}
    assert event["data"]["after"] == {"status": "cancelled"}
    assert env.as_("x").verify_audit(name).ok


def test_expiry_event_is_a_system_event(env):
    """An expiry noticed by a later step is audited as a system event at the deadline."""
    env.policy["rules"][0]["expires_after"] = "1s"
    name, (v,) = env.model()
    request = env.as_("alice").request_transition(name, v, "Production")
    time.sleep(1.1)
    with pytest.raises(InvalidRequest, match="expired"):
        env.as_("bob").approve(name, v, request_id=request.id)
    (event,) = of_kind(events_of(env.as_("x"), name), "request.expired")
    assert event["data"]["actor"]["id"] == "mlflow-approvals"
    assert event["data"]["meaning"] == "expiry"
    assert event["data"]["after"] == {"status": "expired"}
    assert event["time"].startswith(request.expires_at.isoformat()[:19])
    assert env.as_("x").verify_audit(name).ok


@pytest.mark.rest
def test_alias_set_and_deleted_events(env):
    """Setting and deleting a gated alias are audited with the alias before and after."""
    name, (v,) = env.model()
    env.as_("alice").request_alias(name, v, "champion")
    for actor in ("bob", "carol", "dave"):
        env.as_(actor).approve(name, v)
    env.as_("alice").request_alias_deletion(name, "champion", comment="retire")
    for actor in ("bob", "carol", "dave"):
        env.as_(actor).approve(name, v)
    assert "champion" not in env.plain.get_registered_model(name).aliases
    events = events_of(env.as_("x"), name)
    (set_,) = of_kind(events, "alias.set")
    (deleted,) = of_kind(events, "alias.deleted")
    assert set_["data"]["before"] == {"alias": "champion", "version": None}
    assert set_["data"]["after"] == {"alias": "champion", "version": v}
    assert deleted["data"]["before"] == {"alias": "champion", "version": v}
    assert deleted["data"]["after"] == {"alias": "champion", "version": None}
    assert set_["data"]["request_id"] != deleted["data"]["request_id"]
    report = env.as_("x").verify_audit(name)
    assert report.ok, report
    assert env.as_("x").reconcile(name).ok


@pytest.mark.rest
def test_refused_attempts_are_audited_and_change_no_tag(env):
    """Self-approval, a missing role and an out-of-turn sign-off are audited; no tag changes."""
    name, (v,) = env.model()
    env.as_("alice").request_transition(name, v, "Production")
    before = reserved(env.plain, name, v)
    attempts = [
        ("alice", "separation of duties"),
        ("mallory", "holds no role"),
        ("dave", "opens once level 1"),
    ]
    for actor, why in attempts:
        with pytest.raises(NotAuthorized, match=why):
            env.as_(actor).approve(name, v)
    assert reserved(env.plain, name, v) == before
    denied = of_kind(events_of(env.as_("x"), name), "attempt.denied")
    assert [e["data"]["actor"]["id"] for e in denied] == ["alice", "mallory", "dave"]
    for event, (_, why) in zip(denied, attempts, strict=True):
        assert event["data"]["meaning"] == "denied attempt"
        assert event["data"]["attempted"] == "approve"
        assert why in event["data"]["comment"]
        assert event["data"]["request_id"]
    report = env.as_("x").verify_audit(name)
    assert report.ok, report
    assert sum("(unanchored" in line.reason for line in report.events) == 3


def test_audit_log_lives_in_its_own_run_named_by_hash(local):
    """Events go to one audit run per model, one file per event named by its hash, never
    among the model version's own artifacts."""
    name, (v,) = local.model()
    local.as_("alice").request_transition(name, v, "Production")
    local.as_("bob").approve(name, v)
    exp = local.plain.get_experiment_by_name(DEFAULT_EXPERIMENT)
    runs = local.plain.search_runs([exp.experiment_id], f"tags.`{MODEL_TAG}` = '{name}'")
    assert len(runs) == 1
    files = [f.path for f in local.plain.list_artifacts(runs[0].info.run_id, f"events/v{v}")]
    assert len(files) == 2
    for event in events_of(local.as_("x"), name):
        assert event["_path"].rsplit("-", 1)[1] == f"{event['_hash']}.json"
        raw = canonical({k: x for k, x in event.items() if not k.startswith("_")})
        assert hashlib.sha256(raw).hexdigest() == event["_hash"]
    model_run = local.plain.get_model_version(name, v).run_id
    assert [f.path for f in local.plain.list_artifacts(model_run)] == ["model"]
    assert [f.path for f in local.plain.list_artifacts(model_run, "model")] == ["model/MLmodel"]


# -- human-readable history (§11.50) ---------------------------------------------------------


def test_signoff_history_shows_printed_name_time_and_meaning(local):
    """get_request shows each sign-off's printed name, date and time, and meaning."""
    name, (v,) = local.model()
    local.as_("alice", display_name="Alice Adams").request_transition(name, v, "Production")
    local.as_("bob", display_name="Bob Brown").approve(name, v, comment="metrics ok")
    local.as_("carol", display_name="Carol Chen").approve(name, v)
    local.as_("dave", display_name="Dave Example").approve(name, v, comment="go")
    request = local.as_("x").get_request(name, v)
    view = request.to_dict()["signoffs"]
    assert [(s["display_name"], s["meaning"]) for s in view] == [
        ("Bob Brown", "approval as data-scientist (level 1)"),
        ("Carol Chen", "approval as ml-engineer (level 1)"),
        ("Dave Example", "approval as business-owner (level 2)"),
    ]
    assert all(TIME.match(s["time"]) for s in view)
    history = format_history(request)
    assert history == request.history()
    assert len(history) == 5
    assert "  Alice Adams (alice)  request for stage Production" in history[0]
    assert re.match(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  Dave Example \(dave\)  "
        r'approval as business-owner \(level 2\): "go"$',
        history[3],
    )
    assert history[4].endswith("Dave Example (dave)  application")


# -- export ----------------------------------------------------------------------------------


def test_export_jsonl_writes_ordered_flat_records(local, tmp_path):
    """export_audit(format="jsonl") writes every event once, in time order, as flat records."""
    name, (v,) = local.model()
    local.as_("alice").request_transition(name, v, "Production", comment="ship")
    for actor in ("bob", "carol", "dave"):
        local.as_(actor).approve(name, v)
    out = tmp_path / "trail.jsonl"
    assert local.as_("x").export_audit(name, out) == 5
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["type"] for r in records] == [
        "request.created",
        "signoff.approved",
        "signoff.approved",
        "signoff.approved",
        "stage.transitioned",
    ]
    assert [r["time"] for r in records] == sorted(r["time"] for r in records)
    first = records[0]
    for key in (
        "time",
        "type",
        "subject",
        "actor",
        "display_name",
        "meaning",
        "comment",
        "before",
        "after",
        "request_id",
        "policy_hash",
        "rule",
        "run_id",
        "source",
        "hash",
    ):
        assert key in first
    assert (first["actor"], first["comment"], first["rule"]) == ("alice", "ship", "production")
    assert all(r["verified"] for r in records)


def test_export_cloudevents_lines_are_the_stored_events(local, tmp_path):
    """export_audit(format="cloudevents") writes each stored structured-mode CloudEvent per line."""
    name, (v,) = local.model()
    local.as_("alice").request_transition(name, v, "Production")
    local.as_("bob").approve(name, v)
    out = tmp_path / "trail.ce.jsonl"
    assert local.as_("x").export_audit(name, out, format="cloudevents") == 2
    lines = out.read_bytes().splitlines()
    stored = {e["_hash"] for e in events_of(local.as_("x"), name)}
    assert {hashlib.sha256(line).hexdigest() for line in lines} == stored
    for line in lines:
        assert set(ENVELOPE) <= set(json.loads(line))


def test_export_keeps_one_of_two_deliveries(local, tmp_path):
    """A second delivery of an event (same CloudEvents id) is exported once: the anchored one."""
    name, (v,) = local.model()
    local.as_("alice").request_transition(name, v, "Production")
    for actor in ("bob", "carol", "dave"):
        local.as_(actor).approve(name, v)
    events = events_of(local.as_("x"), name)
    applied = {k: x for k, x in events[-1].items() if not k.startswith("_")}
    second = json.loads(json.dumps(applied))
    second["data"]["actor"] = {"id": "carol", "display_name": "carol"}
    second["time"] = "2099-01-01T00:00:00.001000Z"
    local.as_("carol").audit.append(second)
    report = local.as_("x").verify_audit(name)
    assert report.ok and report.duplicates == 1, report
    out = tmp_path / "trail.jsonl"
    assert local.as_("x").export_audit(name, out) == 5
    last = json.loads(out.read_text().splitlines()[-1])
    assert (last["hash"], last["actor"]) == (events[-1]["_hash"], "dave")


def test_export_refuses_an_unknown_format(local, tmp_path):
    """An unknown export format is a clear error, and no file is written."""
    name, _ = local.model()
    with pytest.raises(InvalidRequest, match="jsonl"):
        local.as_("x").export_audit(name, tmp_path / "out", format="csv")
    assert not (tmp_path / "out").exists()


def test_event_times_sort_as_text_even_on_a_whole_second():
    """An event stamped on a whole second still sorts before one later in that second."""
    from datetime import datetime, timezone

    whole = datetime(2026, 11, 30, 12, 0, 5, tzinfo=timezone.utc)
    later = whole.replace(microsecond=300_000)
    first, second = (
        make_event(type="request.created", name="m", version="1", actor="a", time=t)
        for t in (whole, later)
    )
    assert first["time"] == "2026-11-30T12:00:05.000000Z"
    assert first["time"] < second["time"]
    assert event_path(first, "a" * 64) < event_path(second, "a" * 64)
