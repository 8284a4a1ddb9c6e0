"""verify against a hostile log: events of versions that do not exist, and deletion anchors.

An event of a version that does not exist verifies only when that version's deletion (or the
model's) was recorded and anchored: a tag of the audit run, ``mlflow_approvals.deleted.v<N>``
(or ``.model``), holds the hash of an intact event of that version (or of the model).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from conftest import register_versions, unique_name
from mlflow_approvals import ApprovalClient
from mlflow_approvals import tags as T
from mlflow_approvals.audit import (
    DELETED_MODEL_TAG,
    canonical,
    deletion_tag,
    event_hash,
    event_path,
    make_event,
)
from mlflow_approvals.lifecycle import Actor
from mlflow_approvals.server.sink import ServerAuditStore
from mlflow_approvals.verify import verify_events
from test_server_sink import FakeServer, server  # noqa: F401  (the in-process server fixture)

ZERO = "0" * 64

# -- the pure core: one test per rule --------------------------------------------------------


def _event(
    kind: str, parents: Sequence[str] = (), version: str | None = "1", **kw: Any
) -> dict[str, Any]:
    fields: dict[str, Any] = dict(name="m", actor="carol", request_id="r1")
    fields.update(kw)
    return make_event(type=kind, version=version, parents=parents, **fields)


def _file(event: dict[str, Any]) -> tuple[str, bytes]:
    return event_path(event, event_hash(event)), canonical(event)


def _history(version: str = "1") -> list[dict[str, Any]]:
    """request -> approval -> apply of one version (their fact tags held all three)."""
    req = _event("request.created", version=version, actor="alice")
    sign = _event("signoff.approved", [event_hash(req)], version=version)
    apply = _event(
        "stage.transitioned",
        [event_hash(req), event_hash(sign)],
        version=version,
        after={"stage": "Production", "version": version},
    )
    return [req, sign, apply]


def _deletion(heads: list[str], version: str | None = "1") -> dict[str, Any]:
    return _event(
        "registry.changed",
        heads,
        version=version,
        actor="alice",
        request_id=None,
        after={"version": version, "exists": False},
        extra={"change": "delete_version" if version else "delete_model"},
    )


def _recorded(version: str = "1") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A version's history and the event recording its deletion (its parents: the heads)."""
    history = _history(version)
    return history, _deletion([event_hash(e) for e in history], version)


def _problems(report: Any) -> dict[str | None, set[str | None]]:
    found: dict[str | None, set[str | None]] = {}
    for line in report.events:
        found.setdefault(line.version, set()).add(line.problem)
    return found


def test_pure_planted_event_of_a_version_that_never_existed_is_orphaned():
    """A self-consistent event of a version that is not live and has no deletion record fails."""
    planted = _event("stage.transitioned", version="99", after={"stage": "Production"})
    report = verify_events([_file(planted)], {}, live_versions=["1"])
    (line,) = report.events
    assert (line.status, line.problem, line.version) == ("INVALID", "orphaned", "99")
    assert "version 99 does not exist and its deletion was never recorded" in line.reason
    assert report.summary == "0/1 events valid; 1 orphaned"


def test_pure_unanchored_type_of_a_missing_version_needs_the_deletion_anchor():
    """A refused attempt (a type no tag anchors) of a version that does not exist is orphaned."""
    denied = _event("attempt.denied", version="99", actor="mallory")
    assert verify_events([_file(denied)], {}, live_versions=["99"]).ok  # live: valid, marked
    report = verify_events([_file(denied)], {}, live_versions=["1"])
    assert report.counts == {"orphaned": 1}


def test_pure_model_level_events_need_no_deletion_anchor():
    """Model-level events (version None) keep the rules of live versions."""
    access = _event("access.changed", version=None, request_id=None)
    report = verify_events([_file(access)], {}, live_versions=[])
    assert report.ok, report
    assert "(unanchored: it changes no tag)" in report.events[0].reason


def test_pure_recorded_deletion_of_the_version_anchors_its_events():
    """The deletion anchor of the version, naming its deletion event, anchors the history."""
    history, gone = _recorded()
    files = [_file(e) for e in [*history, gone]]
    report = verify_events(files, {}, live_versions=[], deletions={"1": [event_hash(gone)]})
    assert report.ok, report
    assert all(line.reason == "" for line in report.events)


def test_pure_recorded_deletion_of_the_model_anchors_every_version():
    """The model's deletion anchor, naming a model-level event, accounts for every version."""
    one, two = _history("1"), _history("2")
    gone = _deletion([event_hash(e) for e in [*one, *two]], version=None)
    files = [_file(e) for e in [*one, *two, gone]]
    report = verify_events(files, {}, live_versions=[], deletions={None: {event_hash(gone)}})
    assert report.ok, report
    assert report.summary == "7/7 events valid"


def test_pure_unanchored_type_of_a_recorded_deleted_version_is_valid_but_marked():
    """With the deletion recorded, a refused attempt of that version is valid and marked."""
    history, gone = _recorded()
    denied = _event("attempt.denied", [event_hash(history[0])], actor="mallory")
    files = [_file(e) for e in [*history, gone, denied]]
    report = verify_events(files, {}, live_versions=[], deletions={"1": {event_hash(gone)}})
    assert report.ok, report
    line = next(x for x in report.events if x.type == "attempt.denied")
    assert "(unanchored: it changes no tag)" in line.reason


def test_pure_recorded_deletion_does_not_anchor_an_event_it_does_not_descend_from():
    """An event inserted into a deleted version's log, after its deletion, is not anchored."""
    history, gone = _recorded()
    forged = _event("signoff.approved", [event_hash(history[0])], actor="erin")
    files = [_file(e) for e in [*history, gone, forged]]
    report = verify_events(files, {}, live_versions=[], deletions={"1": {event_hash(gone)}})
    assert report.counts == {"not anchored": 1}
    (bad,) = [x for x in report.events if x.status == "INVALID"]
    assert bad.hash == event_hash(forged)


def test_pure_deletion_anchor_naming_a_missing_event_is_missing():
    """A deletion anchor whose event is not in the log is reported missing, the version orphaned."""
    history = _history()
    report = verify_events(
        [_file(e) for e in history], {}, live_versions=[], deletions={"1": {ZERO}}
    )
    assert report.counts == {"missing": 1, "orphaned": 3}
    missing = next(x for x in report.events if x.problem == "missing")
    assert (missing.hash, missing.version) == (ZERO, "1")
    assert missing.reason == "missing: anchored by deletion of v1"
    orphan = next(x for x in report.events if x.problem == "orphaned")
    assert f"the deletion of v1 names {ZERO[:12]}, which is not in the log" in orphan.reason


def test_pure_deletion_anchor_naming_another_versions_event_fails():
    """A deletion anchor must name an event of that very version: another version's is refused."""
    one, two = _history("1"), _history("2")
    anchors = {event_hash(e): {f"v2:fact{i}"} for i, e in enumerate(two)}
    files = [_file(e) for e in [*one, *two]]
    report = verify_events(
        files, anchors, live_versions=["2"], deletions={"1": {event_hash(two[2])}}
    )
    assert _problems(report) == {"1": {"orphaned"}, "2": {None}}
    line = next(x for x in report.events if x.version == "1")
    assert f"names {event_hash(two[2])[:12]}, an event of version 2" in line.reason


def test_pure_model_deletion_anchor_naming_a_version_event_fails():
    """The model's deletion anchor must name a model-level event, not a version's."""
    history, gone = _recorded()
    files = [_file(e) for e in [*history, gone]]
    report = verify_events(files, {}, live_versions=[], deletions={None: {event_hash(gone)}})
    assert report.counts == {"orphaned": 4}
    assert "the model's deletion names" in report.events[0].reason


def test_pure_deletion_anchor_naming_a_damaged_event_fails():
    """A deletion event whose content does not match its name does not record the deletion."""
    history, gone = _recorded()
    path, raw = _file(gone)
    damaged = (path, raw.replace(b'"alice"', b'"mallo"'))
    files = [*map(_file, history), damaged]
    report = verify_events(files, {}, live_versions=[], deletions={"1": {event_hash(gone)}})
    assert report.counts == {"hash mismatch": 1, "orphaned": 3}
    orphan = next(x for x in report.events if x.problem == "orphaned")
    assert "which does not verify" in orphan.reason


def test_pure_deletion_anchor_of_a_live_version_is_just_an_anchor():
    """A deletion anchored but not carried out (the delete failed) leaves a live version valid."""
    history, gone = _recorded()
    anchors = {event_hash(e): {f"v1:fact{i}"} for i, e in enumerate(history)}
    files = [_file(e) for e in [*history, gone]]
    report = verify_events(files, anchors, live_versions=["1"], deletions={"1": {event_hash(gone)}})
    assert report.ok, report
    assert report.notes == ()


def test_pure_one_good_deletion_anchor_among_several_is_enough():
    """Two audit runs may each carry the key: any one naming the deletion event records it."""
    history, gone = _recorded()
    files = [_file(e) for e in [*history, gone]]
    deletions = {"1": {event_hash(gone), event_hash(history[0])}}
    report = verify_events(files, {}, live_versions=[], deletions=deletions)
    assert report.ok, report


def test_pure_orphaned_is_the_only_problem_of_its_lines():
    """An orphaned line carries no other problem (reconcile replays exactly those lines)."""
    history = _history()
    report = verify_events([_file(e) for e in history], {}, live_versions=[])
    assert all(
        line.reason.count("orphaned:") == 1 and ";" not in line.reason for line in report.events
    )


def test_pure_without_live_versions_every_version_is_taken_to_exist():
    """live_versions=None keeps the old behaviour: no event is judged by its version's existence."""
    history = _history("99")
    anchors = {event_hash(e): {"v99:fact"} for e in history}
    assert verify_events([_file(e) for e in history], anchors).ok


# -- against a real sqlite registry ---------------------------------------------------------


class Model:
    """A model on a fresh sqlite registry whose version 1 went through a full approval."""

    def __init__(self, uri: str, policy: dict[str, Any], versions: int = 2) -> None:
        self.uri = uri
        self.policy = policy
        self.plain = MlflowClient(uri, uri)
        self.name = unique_name()
        self.versions = register_versions(uri, self.name, versions)
        self.as_("alice").request_transition(self.name, "1", "Production", comment="ship it")
        for actor in ("bob", "carol", "dave"):
            self.as_(actor).approve(self.name, "1")

    def as_(self, actor: str) -> ApprovalClient:
        return ApprovalClient(self.uri, self.uri, policy=self.policy, actor=actor)

    def verify(self):  # type: ignore[no-untyped-def]
        return self.as_("auditor").verify_audit(self.name)

    def run_id(self) -> str:
        return self.as_("auditor").audit.run_ids(self.name, create=False)[0]

    def events_dir(self) -> Path:
        uri = self.plain.get_run(self.run_id()).info.artifact_uri
        return Path(uri.removeprefix("file://")) / "events"

    def plant(self, event: dict[str, Any]) -> str:
        """Write a self-consistent event straight into the artifact store (no tag changes)."""
        digest = event_hash(event)
        path = self.events_dir().parent / event_path(event, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(canonical(event))
        return digest

    def record_deletion(self, version: str) -> str:
        """What ApprovalClient.delete_model_version does: event, anchor, then the delete."""
        client = self.as_("alice")
        mv = client.engine.registry.get_model_version(self.name, version)
        facts = T.VersionFacts(self.name, version, mv.tags or {})
        digest = client.engine.emit(
            Actor.named("alice"),
            mv,
            facts,
            "registry.changed",
            None,
            before={"version": version, "exists": True},
            after={"version": version, "exists": False},
            extra={"change": "delete_version"},
        )
        client.audit.anchor_deletion(self.name, version, digest)
        self.plain.delete_model_version(self.name, version)
        return digest

    def export(self, tmp: Path) -> list[dict[str, Any]]:
        path = tmp / "trail.jsonl"
        self.as_("auditor").export_audit(self.name, path)
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def model(sqlite_uri: str, policy_dict: dict[str, Any]) -> Model:
    return Model(sqlite_uri, policy_dict)


def _planted_apply(name: str, version: str = "99") -> dict[str, Any]:
    return make_event(
        type="stage.transitioned",
        name=name,
        version=version,
        actor="mallory",
        after={"stage": "Production", "version": version},
    )


def test_planted_event_of_a_version_that_never_existed_fails_verify_and_export(model, tmp_path):
    """A self-consistent stage.transitioned planted under events/v99 fails verify and export."""
    digest = model.plant(_planted_apply(model.name))
    report = model.verify()
    assert not report.ok
    assert report.counts == {"orphaned": 1}
    (bad,) = [x for x in report.events if x.status == "INVALID"]
    assert bad.hash == digest and bad.path.startswith("events/v99/")
    assert "version 99 does not exist and its deletion was never recorded" in str(bad)
    records = model.export(tmp_path)
    assert {r["hash"]: r["verified"] for r in records}[digest] is False
    assert sum(r["verified"] for r in records) == 5  # the real history still verifies


def test_planted_refused_attempt_of_a_missing_version_fails(model):
    """A planted attempt.denied (a type no tag anchors) for a version that never existed fails."""
    model.plant(make_event(type="attempt.denied", name=model.name, version="99", actor="x"))
    assert model.verify().counts == {"orphaned": 1}


def test_version_deleted_by_a_plain_client_fails_verify_with_the_reason(model):
    """Deleting an approved version with a plain MlflowClient leaves its events orphaned."""
    model.plain.delete_model_version(model.name, "1")
    report = model.verify()
    assert not report.ok
    assert report.counts == {"orphaned": 5}
    assert all(
        "version 1 does not exist and its deletion was never recorded" in line.reason
        for line in report.events
    )
    assert any("no valid record of their deletion" in note for note in report.notes)


def test_recorded_and_anchored_deletion_verifies(model, tmp_path):
    """Event, then the run tag, then the delete: the deleted version's log verifies and exports."""
    digest = model.record_deletion("1")
    tags = model.plain.get_run(model.run_id()).data.tags
    assert tags[deletion_tag("1")] == digest == tags["mlflow_approvals.deleted.v1"]
    assert model.as_("auditor").audit.deletion_anchors(model.name) == {"1": {digest}}
    report = model.verify()
    assert report.ok, report
    assert report.summary == "6/6 events valid"
    assert any("no longer exist; their recorded deletion" in note for note in report.notes)
    assert all(r["verified"] for r in model.export(tmp_path))
    assert model.as_("auditor").reconcile(model.name).ok


def test_event_planted_after_a_recorded_deletion_is_not_anchored(model):
    """The deletion anchor covers the deleted version's history, not events added to it later."""
    model.record_deletion("1")
    digest = model.plant(_planted_apply(model.name, "1"))
    report = model.verify()
    assert report.counts == {"not anchored": 1}
    assert next(x for x in report.events if x.status == "INVALID").hash == digest


def test_deletion_anchor_naming_a_missing_event_fails(model):
    """A deletion tag naming a hash the log does not hold: missing, and the version orphaned."""
    model.plain.delete_model_version(model.name, "1")
    model.as_("mallory").audit.anchor_deletion(model.name, "1", ZERO)
    report = model.verify()
    assert report.counts == {"missing": 1, "orphaned": 5}
    missing = next(x for x in report.events if x.problem == "missing")
    assert missing.hash == ZERO and "deletion of v1" in missing.reason


def test_deletion_anchor_naming_another_versions_event_fails(model):
    """A deletion tag of v1 naming an event of v2 does not record v1's deletion."""
    model.as_("alice").request_transition(model.name, "2", "Production")
    (v2_event,) = [x.hash for x in model.verify().events if x.version == "2"]
    model.plain.delete_model_version(model.name, "1")
    model.as_("mallory").audit.anchor_deletion(model.name, "1", v2_event)
    report = model.verify()
    assert _problems(report) == {"1": {"orphaned"}, "2": {None}}
    assert "an event of version 2" in report.events[0].reason


def test_recorded_model_deletion_verifies(model):
    """The whole model deleted after its deletion was recorded (parents: every version's heads)."""
    client = model.as_("alice")
    heads = [
        h
        for mv in client.engine.registry.versions_of(model.name)
        for h in T.VersionFacts(model.name, str(mv.version), mv.tags or {}).event_hashes()
    ]
    event = make_event(
        type="registry.changed",
        name=model.name,
        version=None,
        actor="alice",
        after={"exists": False},
        parents=heads,
        extra={"change": "delete_model"},
    )
    digest = client.audit.append(event)
    client.audit.anchor_deletion(model.name, None, digest)
    model.plain.delete_registered_model(model.name)
    assert model.plain.get_run(model.run_id()).data.tags[DELETED_MODEL_TAG] == digest
    report = model.verify()
    assert report.ok, report
    assert report.summary == "6/6 events valid"


def test_model_deleted_by_a_plain_client_fails_verify(model):
    """Deleting the registered model with a plain client orphans every version's events."""
    model.plain.delete_registered_model(model.name)
    report = model.verify()
    assert report.counts == {"orphaned": 5}


def test_anchor_deletion_refuses_what_is_not_a_version_or_a_hash(model):
    """anchor_deletion takes a version number (or None) and an event's SHA-256 hash."""
    store = model.as_("alice").audit
    with pytest.raises(ValueError, match="version"):
        store.anchor_deletion(model.name, "champion", ZERO)
    with pytest.raises(ValueError, match="SHA-256"):
        store.anchor_deletion(model.name, "1", "not-a-hash")


# -- the server's audit store ----------------------------------------------------------------


def test_server_store_writes_and_reads_deletion_anchors(server: FakeServer) -> None:  # noqa: F811
    """ServerAuditStore anchors deletions straight in the tracking store and reads them back."""
    store = ServerAuditStore()
    event = make_event(type="registry.changed", name="fraud-model", version="3", actor="alice")
    digest = store.append(event)
    store.anchor_deletion("fraud-model", "3", digest)
    store.anchor_deletion("fraud-model", None, digest)
    assert store.deletion_anchors("fraud-model") == {"3": {digest}, None: {digest}}
    tags = store.server_tracking.get_run(store.writer_run("fraud-model")).data.tags
    assert tags["mlflow_approvals.deleted.v3"] == tags[DELETED_MODEL_TAG] == digest
