"""Verification at scale: sealed segments of the audit log, and what tampering with them shows."""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from conftest import register_versions, unique_name
from mlflow_approvals import ApprovalClient
from mlflow_approvals import segments as S
from mlflow_approvals.audit import AuditStore, canonical, event_hash, event_path, make_event
from mlflow_approvals.testing import RoundTripCounter
from mlflow_approvals.verify import verify_events


class Sealed:
    """A sqlite registry with one model whose version 1 went through a full approval."""

    def __init__(self, uri: str, policy: dict[str, Any]) -> None:
        self.uri, self.policy = uri, policy
        self.plain = MlflowClient(uri, uri)
        self.name = unique_name()
        register_versions(uri, self.name, 2)
        self.cycle("1")

    def as_(self, actor: str) -> ApprovalClient:
        return ApprovalClient(self.uri, self.uri, policy=self.policy, actor=actor)

    def cycle(self, version: str) -> None:
        self.as_("alice").request_transition(self.name, version, "Production")
        for signer in ("bob", "carol", "dave"):
            self.as_(signer).approve(self.name, version)

    @property
    def store(self) -> AuditStore:
        return self.as_("sealer").audit

    def verify(self):  # type: ignore[no-untyped-def]
        return self.as_("auditor").verify_audit(self.name)

    def root(self) -> Path:
        run_id = self.store.run_ids(self.name, create=False)[0]
        return Path(self.plain.get_run(run_id).info.artifact_uri.removeprefix("file://"))

    def segment(self) -> Path:
        (only,) = sorted((self.root() / "segments").glob("*.jsonl"))
        return only

    def rewrite_segment(self, lines: list[bytes]) -> None:
        """Replace the segment's lines, keeping its name (and so its anchored hash)."""
        self.segment().write_bytes(b"".join(line + b"\n" for line in lines))


@pytest.fixture
def log(sqlite_uri: str, policy_dict: dict[str, Any]) -> Sealed:
    sealed = Sealed(sqlite_uri, policy_dict)
    assert sealed.store.seal(sealed.name) == [
        (sealed.segment().relative_to(sealed.root()).as_posix(), 5)
    ]
    return sealed


def _lines(log: Sealed) -> list[bytes]:
    return log.segment().read_bytes().splitlines()


def test_sealed_log_verifies(log):
    """A sealed log verifies with each event counted once (the loose copies are not read twice)."""
    report = log.verify()
    assert report.ok, report
    assert report.summary == "5/5 events valid"


def test_sealing_again_seals_nothing_new(log):
    """A second seal finds every event already sealed and writes no segment."""
    assert log.store.seal(log.name) == []
    assert len(list((log.root() / "segments").glob("*.jsonl"))) == 1


def test_event_edited_inside_a_segment_is_caught(log):
    """Editing an event's bytes inside a segment breaks the segment's hash and the event's."""
    lines = _lines(log)
    lines[1] = lines[1].replace(b'"bob"', b'"eve"')
    log.rewrite_segment(lines)
    report = log.verify()
    assert not report.ok
    assert report.counts["hash mismatch"] == 2  # the segment, and the event inside it
    bad = next(x for x in report.events if x.type == "segment")
    assert bad.path == log.segment().relative_to(log.root()).as_posix()


def test_event_deleted_from_a_segment_is_caught(log):
    """Removing a line from a segment no longer matches the hash the seal anchored."""
    log.rewrite_segment(_lines(log)[:-1])
    report = log.verify()
    assert report.counts == {"hash mismatch": 1}
    assert "inside it" in next(x for x in report.events if x.type == "segment").reason


def test_events_reordered_inside_a_segment_are_caught(log):
    """Swapping two lines of a segment changes its hash: the seal no longer holds."""
    lines = _lines(log)
    lines[0], lines[1] = lines[1], lines[0]
    log.rewrite_segment(lines)
    assert log.verify().counts == {"hash mismatch": 1}


def test_segment_and_loose_copies_deleted_leave_anchors_missing(log):
    """Deleting the segment and the loose files leaves the seal and every fact anchor missing."""
    for path in (log.root() / "events").rglob("*.json"):
        path.unlink()
    log.segment().unlink()
    report = log.verify()
    assert report.counts == {"missing": 6}  # five events and the sealed segment


def test_deleted_segment_is_missing_even_with_its_loose_copies(log):
    """A sealed segment that disappears is reported missing, though its events are still loose."""
    log.segment().unlink()
    report = log.verify()
    assert report.counts == {"missing": 1}
    (gone,) = [x for x in report.events if x.status == "INVALID"]
    assert gone.type == "segment" and "mlflow_approvals.sealed." in gone.reason


def test_segment_whose_hash_is_not_anchored_is_caught(log):
    """A planted segment, named by its own hash but sealed by no tag, is not anchored."""
    forged = make_event(type="attempt.denied", name=log.name, version="1", actor="mallory")
    raw = canonical(forged)
    body = S.encode([(event_path(forged, event_hash(forged)), raw)])
    digest = hashlib.sha256(body).hexdigest()
    target = log.root() / "segments" / f"20300101T000000000000Z-{digest}.jsonl"
    target.write_bytes(body)
    report = log.verify()
    assert report.counts == {"not anchored": 1}
    assert next(x for x in report.events if x.status == "INVALID").type == "segment"


def test_events_written_after_a_seal_still_verify(log):
    """New loose events beside a segment are read and verified as usual, then sealed too."""
    log.cycle("2")
    assert log.verify().summary == "10/10 events valid"
    assert [n for _, n in log.store.seal(log.name)] == [5]
    assert log.verify().summary == "10/10 events valid"


def test_crash_between_segment_and_anchor_leaves_a_log_that_verifies(sqlite_uri, policy_dict):
    """A segment written but never anchored (a crash mid-seal) holds nothing new: it verifies."""
    env = Sealed(sqlite_uri, policy_dict)
    with_files = env.store.read(env.name, env.root())
    body = S.encode(with_files)
    path = S.segment_path(hashlib.sha256(body).hexdigest(), datetime.now())
    (env.root() / path).parent.mkdir(parents=True, exist_ok=True)
    (env.root() / path).write_bytes(body)  # the segment, and then no anchor
    report = env.verify()
    assert report.ok, report
    assert report.summary == "5/5 events valid"
    assert any("stopped before its anchor" in note for note in report.notes)
    assert [n for _, n in env.store.seal(env.name)] == [5]  # the next seal completes it
    assert env.verify().ok


def test_two_sealers_at_once_lose_nothing(sqlite_uri, policy_dict):
    """Two processes sealing the same events at once leave two segments and every event once."""
    env = Sealed(sqlite_uri, policy_dict)
    env.cycle("2")
    stores = [env.as_(f"sealer{i}").audit for i in range(2)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def seal(store: AuditStore) -> None:
        try:
            barrier.wait()
            store.seal(env.name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=seal, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    report = env.verify()
    assert report.ok, report
    assert report.summary == "10/10 events valid"


def test_pure_segment_events_are_checked_like_loose_files():
    """Inside a segment, an event not anchored is still reported, though the segment is sealed."""
    event = make_event(type="signoff.approved", name="m", version="1", actor="eve")
    files = [(event_path(event, event_hash(event)), canonical(event))]
    body = S.encode(files)
    digest = hashlib.sha256(body).hexdigest()
    segment = (f"segments/20300101T000000000000Z-{digest}.jsonl", body)
    report = verify_events([], {}, segments=[segment], sealed={digest: {"tag"}})
    assert report.counts == {"not anchored": 1}
    assert report.events[0].path == files[0][0]


def test_pure_unreadable_segment_line_is_reported():
    """A segment line without a path is an unreadable segment, not skipped."""
    body = b"garbage without a tab\n"
    digest = hashlib.sha256(body).hexdigest()
    segment = (f"segments/20300101T000000000000Z-{digest}.jsonl", body)
    report = verify_events([], {}, segments=[segment], sealed={digest: {"tag"}})
    assert report.counts == {"unreadable": 1}


def test_verify_through_a_server_downloads_the_segment_not_each_event(mlflow_server, policy_dict):
    """Through a tracking server a sealed log costs one download for all of its events."""
    uri = mlflow_server.uri
    name = unique_name()
    versions = register_versions(uri, name, 2)
    for v in versions:
        ApprovalClient(uri, uri, policy=policy_dict, actor="alice").request_transition(
            name, v, "Production"
        )
        for signer in ("bob", "carol", "dave"):
            ApprovalClient(uri, uri, policy=policy_dict, actor=signer).approve(name, v)
    auditor = ApprovalClient(uri, uri, policy=policy_dict, actor="auditor")
    counter = RoundTripCounter()

    def downloads() -> int:
        with counter.count() as calls:
            assert auditor.verify_audit(name).summary == "10/10 events valid"
        return sum(
            1 for c in calls if c.method == "GET" and "/mlflow-artifacts/artifacts/" in c.path
        )

    assert downloads() == 10
    assert [n for _, n in auditor.audit.seal(name)] == [10]
    assert downloads() == 1
