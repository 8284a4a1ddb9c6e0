"""verify_audit: each event valid or INVALID, a summary line, and the tampering it must catch."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from conftest import register_versions, unique_name
from mlflow_approvals import ApprovalClient, ModelVersionNotFound
from mlflow_approvals.audit import canonical, deterministic_id, event_hash, event_path, make_event
from mlflow_approvals.lifecycle import Status
from mlflow_approvals.verify import verify_events

# -- the pure core, on events built in memory ----------------------------------------------


def _event(kind: str, parents: list[str] = (), **kw: Any) -> dict[str, Any]:  # type: ignore[assignment]
    fields: dict[str, Any] = dict(name="m", version="1", actor="carol", request_id="r1")
    fields.update(kw)
    return make_event(type=kind, parents=parents, **fields)


def _file(event: dict[str, Any]) -> tuple[str, bytes]:
    return event_path(event, event_hash(event)), canonical(event)


def _chain() -> tuple[list[dict[str, Any]], dict[str, set[str]]]:
    """request -> approval -> apply, each anchored by its fact."""
    req = _event("request.created", actor="alice")
    sign = _event("signoff.approved", [event_hash(req)])
    apply = _event(
        "stage.transitioned",
        [event_hash(req), event_hash(sign)],
        event_id=deterministic_id("r1", "applied"),
        after={"stage": "Production", "version": "1"},
    )
    events = [req, sign, apply]
    return events, {event_hash(e): {f"v1:fact{i}"} for i, e in enumerate(events)}


def test_clean_log_verifies_with_summary():
    """A log whose every event is anchored, named by its hash and canonical verifies ok."""
    events, anchors = _chain()
    report = verify_events([_file(e) for e in events], anchors)
    assert report.ok
    assert report.summary == "3/3 events valid"
    assert all(line.startswith("VALID   events/v1/") for line in report.lines)


@pytest.mark.parametrize(
    "parent",
    ["A" * 64, "g" * 64, "a" * 63, "a" * 64 + "\n", 7, None, ["a" * 64]],
    ids=["upper", "non-hex", "short", "newline", "number", "null", "nested"],
)
def test_a_parent_that_is_not_a_hash_makes_the_event_unreadable(parent: Any) -> None:
    """A parent that is not a SHA-256 hex digest (and no stored file's hash) is refused."""
    events, anchors = _chain()
    forged = copy.deepcopy(events[1])
    forged["data"]["parents"] = [event_hash(events[0]), parent]
    files = [_file(events[0]), _file(forged), _file(events[2])]
    (line,) = [x for x in verify_events(files, anchors).events if x.path == files[1][0]]
    assert line.problem == "unreadable" and "SHA-256" in line.reason


def test_duplicate_delivery_is_valid_and_counted_once():
    """Two files with one CloudEvents id and the same effect are one event delivered twice."""
    events, anchors = _chain()
    twin = json.loads(json.dumps(events[2]))
    twin["data"]["actor"] = {"id": "dave", "display_name": "dave"}
    twin["time"] = "2030-01-01T00:00:00.001000Z"
    report = verify_events([_file(e) for e in [*events, twin]], anchors)
    assert report.ok, report
    assert report.summary == "3/3 events valid (1 duplicate delivery counted once)"
    assert report.duplicates == 1


def test_same_id_with_another_effect_is_not_a_duplicate():
    """A forged event reusing an anchored event's id but changing its effect is not anchored."""
    events, anchors = _chain()
    forged = json.loads(json.dumps(events[2]))
    forged["data"]["after"] = {"stage": "Archived", "version": "1"}
    report = verify_events([_file(e) for e in [*events, forged]], anchors)
    assert not report.ok
    assert report.counts == {"not anchored": 1}


def test_unanchored_denied_attempt_is_valid_but_marked():
    """A refused attempt changes no tag: valid, marked (unanchored), and the gap is noted."""
    events, anchors = _chain()
    denied = _event("attempt.denied", [event_hash(events[0])], actor="alice")
    report = verify_events([_file(e) for e in [*events, denied]], anchors)
    assert report.ok
    line = next(x for x in report.events if x.type == "attempt.denied")
    assert "(unanchored" in line.reason
    assert any("cannot be detected" in note for note in report.notes)


def test_event_whose_change_was_never_recorded_is_not_anchored():
    """An approval event with no fact behind it (crash, refused write, or insert) is INVALID."""
    events, anchors = _chain()
    orphan = _event("signoff.approved", [event_hash(events[0])], actor="erin")
    report = verify_events([_file(e) for e in [*events, orphan]], anchors)
    assert not report.ok
    bad = [x for x in report.events if x.status == "INVALID"]
    assert [x.problem for x in bad] == ["not anchored"]
    assert "never recorded" in bad[0].reason


def test_two_records_of_one_reconciled_change_count_once():
    """Two reconcilers recording one change write one event twice: valid, counted once."""
    change = {"before": {"stage": "None", "version": "1"}, "after": {"stage": "Staging"}}
    first = _event("change.detected", event_id="c-1", request_id=None, **change)
    second = _event("change.detected", event_id="c-1", request_id=None, actor="x", **change)
    report = verify_events([_file(first), _file(second)], {})
    assert report.ok and report.summary == "1/1 events valid (1 duplicate delivery counted once)"


def test_second_applier_anchors_the_archive_events_it_wrote():
    """A duplicate apply (the applier whose fact lost) anchors its own archive events."""
    events, anchors = _chain()
    archived = _event(
        "version.archived",
        [event_hash(events[0])],
        version="2",
        event_id=deterministic_id("r1", "archived", "2"),
        after={"stage": "Archived", "version": "2"},
    )
    second = json.loads(json.dumps(events[2]))
    second["data"]["parents"] = sorted([*second["data"]["parents"], event_hash(archived)])
    second["time"] = "2030-01-01T00:00:00.002000Z"
    report = verify_events([_file(e) for e in [*events, archived, second]], anchors)
    assert report.ok, report
    line = next(x for x in report.events if x.type == "version.archived")
    assert "through the duplicate delivery" in line.reason


def _deletion(parents: list[str], version: str | None = "1") -> dict[str, Any]:
    """The event recording a deletion (what the client writes before it anchors and deletes)."""
    return _event(
        "registry.changed",
        parents,
        version=version,
        actor="alice",
        request_id=None,
        before={"version": version, "exists": True},
        after={"version": version, "exists": False},
        extra={"change": "delete_version" if version else "delete_model"},
    )


def test_events_of_a_deleted_version_verify_when_its_deletion_is_recorded():
    """A version deleted with a recorded, anchored deletion: its events stay anchored through it."""
    events, _ = _chain()
    gone = _deletion([event_hash(e) for e in events])  # the heads its fact tags held
    files = [_file(e) for e in [*events, gone]]
    report = verify_events(files, {}, live_versions=["2"], deletions={"1": {event_hash(gone)}})
    assert report.ok, report
    assert report.summary == "4/4 events valid"
    assert any("no longer exist; their recorded deletion" in note for note in report.notes)


def test_events_of_a_version_deleted_without_a_record_are_orphaned():
    """A version gone with no recorded deletion: every event of it is INVALID, orphaned."""
    events, _ = _chain()
    files = [_file(e) for e in events]
    assert verify_events(files, {}).ok is False  # nothing anchors them, whatever exists
    report = verify_events(files, {}, live_versions=["2"])
    assert report.counts == {"orphaned": 3}
    assert all(
        "version 1 does not exist and its deletion was never recorded" in x.reason
        for x in report.events
    )
    assert any("no valid record of their deletion" in note for note in report.notes)


def test_non_canonical_file_is_invalid():
    """A file that is not RFC 8785 canonical JSON is INVALID even when named by its bytes' hash."""
    events, anchors = _chain()
    raw = json.dumps(events[1], indent=2).encode()
    path = event_path(events[1], hashlib.sha256(raw).hexdigest())
    files = [_file(events[0]), (path, raw), _file(events[2])]
    report = verify_events(files, anchors)
    assert report.counts.get("not canonical") == 1
    assert report.counts.get("missing") == 1  # the anchored canonical event is not there


def test_unreadable_file_is_invalid():
    """A file that is not a JSON audit event is reported, not skipped."""
    events, anchors = _chain()
    files = [_file(e) for e in events] + [
        ("events/v1/20300101T000000Z-" + "0" * 64 + ".json", b"{")
    ]
    report = verify_events(files, anchors)
    assert report.counts == {"unreadable": 1}


def test_report_to_dict_has_a_stable_shape():
    """The --json view carries ok, summary, counts and one record per event."""
    events, anchors = _chain()
    data = verify_events([_file(e) for e in events[:2]], anchors, name="m").to_dict()
    assert set(data) == {
        "ok",
        "name",
        "version",
        "summary",
        "total",
        "valid",
        "duplicates",
        "problems",
        "events",
        "notes",
    }
    assert data["ok"] is False and data["problems"] == {"missing": 1}
    assert set(data["events"][0]) == {
        "status",
        "path",
        "hash",
        "type",
        "version",
        "problem",
        "reason",
        "duplicate_of",
        "abandoned_by",
    }
    json.dumps(data)


# -- against a real sqlite registry ---------------------------------------------------------


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Registry:
    """A sqlite registry with one model whose version 1 went through a full approval."""

    def __init__(self, uri: str, policy: dict[str, Any], versions: int = 2) -> None:
        self.uri = uri
        self.policy = policy
        self.plain = MlflowClient(uri, uri)
        self.name = unique_name()
        self.versions = register_versions(uri, self.name, versions)

    def as_(self, actor: str, **kw: Any) -> ApprovalClient:
        return ApprovalClient(self.uri, self.uri, policy=self.policy, actor=actor, **kw)

    def full_cycle(self, version: str = "1") -> None:
        self.as_("alice").request_transition(self.name, version, "Production", comment="ship it")
        self.as_("bob").approve(self.name, version)
        self.as_("carol").approve(self.name, version)
        self.as_("dave").approve(self.name, version, comment="go")

    def verify(self, version: str | None = None):  # type: ignore[no-untyped-def]
        return self.as_("auditor").verify_audit(self.name, version)

    def events_dir(self) -> Path:
        run_id = self.as_("auditor").audit.run_ids(self.name, create=False)[0]
        uri = self.plain.get_run(run_id).info.artifact_uri
        return Path(uri.removeprefix("file://")) / "events"

    def files(self, version: str = "1") -> list[Path]:
        """The version's event files, oldest first."""
        found = sorted((self.events_dir() / f"v{version}").glob("*.json"))
        return sorted(found, key=lambda p: _when(json.loads(p.read_bytes())["time"]))

    def by_type(self, kind: str, version: str = "1") -> list[Path]:
        return [p for p in self.files(version) if json.loads(p.read_bytes())["type"].endswith(kind)]


@pytest.fixture
def reg(sqlite_uri: str, policy_dict: dict[str, Any]) -> Registry:
    registry = Registry(sqlite_uri, policy_dict)
    registry.full_cycle()
    return registry


def test_full_cycle_log_verifies(reg):
    """After a two-level approval the log verifies, one VALID line per event and a summary."""
    report = reg.verify()
    assert report.ok, report
    assert report.summary == "5/5 events valid"
    types = [line.type for line in report.events]
    assert types.count("signoff.approved") == 3 and "stage.transitioned" in types
    assert str(report).splitlines()[-1] == "5/5 events valid"


def test_verifying_writes_nothing(reg):
    """verify_audit changes no tag, no artifact, and creates no run or experiment."""

    def snapshot() -> tuple[Any, ...]:
        mvs = reg.plain.search_model_versions(f"name = '{reg.name}'")
        tags = sorted((str(mv.version), sorted(mv.tags.items())) for mv in mvs)
        files = sorted(
            (str(p), p.stat().st_mtime_ns) for p in reg.events_dir().parent.parent.rglob("*")
        )
        runs = sorted(
            r.info.run_id
            for e in reg.plain.search_experiments()
            for r in reg.plain.search_runs([e.experiment_id])
        )
        return tags, files, runs, len(reg.plain.search_experiments())

    before = snapshot()
    reg.verify()
    reg.verify("1")
    assert snapshot() == before


def test_model_without_log_verifies_empty_and_creates_nothing(sqlite_uri, policy_dict):
    """A model nothing was ever audited for verifies as 0/0, without creating the audit run."""
    fresh = Registry(sqlite_uri, policy_dict, versions=1)
    report = fresh.verify()
    assert report.ok and report.summary == "0/0 events valid"
    assert fresh.plain.get_experiment_by_name("mlflow-approvals-audit") is None


def test_unknown_model_is_a_clear_error(reg):
    """Verifying a model that does not exist (and has no log) names the problem, not "ok"."""
    with pytest.raises(ModelVersionNotFound, match="does not exist"):
        reg.as_("auditor").verify_audit("no-such-model")


def test_edited_event_is_a_hash_mismatch(reg):
    """Changing one character of an event makes its content disagree with its name."""
    path = reg.by_type("signoff.approved")[1]
    path.write_bytes(path.read_bytes().replace(b'"carol"', b'"mallory"'))
    report = reg.verify()
    assert not report.ok
    assert report.counts == {"hash mismatch": 1}
    (bad,) = [x for x in report.events if x.status == "INVALID"]
    assert bad.path.endswith(path.name) and "hash mismatch" in str(bad)
    assert report.summary == "4/5 events valid; 1 hash mismatch"


def test_edited_and_renamed_event_is_caught(reg):
    """An edited event re-canonicalised and renamed to its new hash leaves its anchor missing."""
    path = reg.by_type("signoff.approved")[0]
    event = json.loads(path.read_bytes())
    event["data"]["comment"] = "looks great"
    path.unlink()
    new = reg.events_dir().parent / event_path(event, event_hash(event))
    new.write_bytes(canonical(event))
    report = reg.verify()
    assert report.counts["missing"] == 1  # the hash the sign-off fact holds
    assert report.counts["not anchored"] == 1  # the rewritten event
    assert report.counts["broken link"] >= 1  # the later events that named the original


def test_deleted_middle_event_is_missing_and_breaks_links(reg):
    """Deleting an event from the middle: it is reported missing, its children broken links."""
    path = reg.by_type("signoff.approved")[0]
    gone = path.name.split("-")[1].removesuffix(".json")
    path.unlink()
    report = reg.verify()
    assert not report.ok
    missing = [x for x in report.events if x.problem == "missing"]
    assert [x.hash for x in missing] == [gone]
    assert "anchored by v1:mlflow_approvals.r." in missing[0].reason
    assert report.counts["broken link"] >= 1
    assert str(missing[0]).startswith(f"INVALID (missing) {gone}")


def test_deleted_newest_event_is_missing(reg):
    """Deleting the newest event (the apply) is caught: its hash is anchored in the applied fact."""
    newest = reg.files()[-1]
    assert json.loads(newest.read_bytes())["type"].endswith("stage.transitioned")
    newest.unlink()
    report = reg.verify()
    assert report.counts == {"missing": 1}
    assert ".applied" in next(x for x in report.events if x.problem == "missing").reason


def test_inserted_forged_event_is_not_anchored(reg):
    """A forged approval, named by its hash, with real parents, is reachable from no anchor."""
    head = reg.files()[-1]
    real = json.loads(reg.by_type("signoff.approved")[0].read_bytes())
    forged = make_event(
        type="signoff.approved",
        name=reg.name,
        version="1",
        actor="erin",
        comment="approved",
        request_id=real["data"]["request_id"],
        parents=[head.name.split("-")[1].removesuffix(".json")],
    )
    path = reg.events_dir().parent / event_path(forged, event_hash(forged))
    path.write_bytes(canonical(forged))
    report = reg.verify()
    assert report.counts == {"not anchored": 1}
    (bad,) = [x for x in report.events if x.status == "INVALID"]
    assert bad.path.endswith(path.name)


def test_swapped_contents_are_caught(reg):
    """Swapping the contents of two files (a reorder) breaks both names."""
    a, b = reg.files()[1], reg.files()[2]
    raw_a, raw_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(raw_b)
    b.write_bytes(raw_a)
    report = reg.verify()
    assert report.counts == {"hash mismatch": 2}


def test_event_moved_to_another_time_is_misplaced(reg):
    """Renaming a file to another time stamp (reordering the log) is caught by the name check."""
    path = reg.files()[1]
    rest = path.name.split("-", 1)[1]
    path.rename(path.with_name("20000101T000000000000Z-" + rest))
    report = reg.verify()
    assert report.counts == {"misplaced": 1}


def test_deleted_log_leaves_every_anchor_missing(reg):
    """Removing the whole log is caught: every anchored hash is missing."""
    shutil.rmtree(reg.events_dir())
    report = reg.verify()
    assert report.counts == {"missing": 5}
    assert report.summary == "0/5 events valid; 5 missing"


def test_version_filter_reports_only_that_version(reg):
    """verify_audit(name, version) reports that version's events only."""
    reg.as_("alice").request_transition(reg.name, "2", "Production")
    assert {line.version for line in reg.verify("2").events} == {"2"}
    assert reg.verify("2").summary == "1/1 events valid"
    assert reg.verify().summary == "6/6 events valid"


def test_copied_version_starts_a_clean_log(reg):
    """Events on a copy of a version with requests do not link to the source model's log."""
    copy = reg.plain.copy_model_version(f"models:/{reg.name}/1", unique_name())
    copied = ApprovalClient(reg.uri, reg.uri, policy=reg.policy, actor="alice")
    copied.request_transition(copy.name, str(copy.version), "Production")
    report = copied.verify_audit(copy.name)
    assert report.ok, report


# -- many writers at once, on the real server ------------------------------------------------


def test_sixteen_concurrent_signers_leave_a_log_that_verifies(mlflow_server, policy_dict):
    """16 approvers signing one request at once (each its own client) leave a verifying log."""
    panel = [f"panel{i:02d}" for i in range(16)]
    policy_dict["roles"]["panel"] = panel
    policy_dict["rules"] = [
        {
            "name": "panel",
            "models": ["panel-*"],
            "stages": ["Production"],
            "levels": [[{"role": "panel", "count": 16}]],
        }
    ]
    uri = mlflow_server.uri
    name = unique_name("panel-model")
    (v,) = register_versions(uri, name, 1)
    ApprovalClient(uri, uri, policy=policy_dict, actor="alice").request_transition(
        name, v, "Production"
    )
    clients = [ApprovalClient(uri, uri, policy=policy_dict, actor=a) for a in panel]
    barrier = threading.Barrier(len(clients))
    errors: list[BaseException] = []

    def sign(client: ApprovalClient) -> None:
        try:
            barrier.wait()
            client.approve(name, v)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sign, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    auditor = ApprovalClient(uri, uri, policy=policy_dict, actor="auditor")
    request = auditor.get_request(name, v)
    assert request.status is Status.APPLIED and len(request.signoffs) == 16
    report = auditor.verify_audit(name)
    assert report.ok, report
    types = [line.type for line in report.events if line.duplicate_of is None]
    assert types.count("signoff.approved") == 16
    assert types.count("stage.transitioned") == 1
    assert auditor.reconcile(name).ok
