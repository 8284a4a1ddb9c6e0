"""Two invariants: sign-offs of people whose names map to one tag key stay apart, and every step
writes its audit event before its effect (the fact tag, or the registry change).

Real parts only: a sqlite registry, real audit artifacts. The audit store is taken down at the
artifact write (``AuditStore._write_text`` raises), so AuditStore.append's own error handling is
exercised.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from conftest import register_versions, unique_name
from mlflow_approvals import ApprovalClient, AuditUnavailable, InvalidRequest
from mlflow_approvals.audit import TYPE_PREFIX, AuditStore
from mlflow_approvals.lifecycle import Status, utcnow
from mlflow_approvals.ports import Registry
from mlflow_approvals.tags import INDEX_KEY, PREFIX, signoff_key

_FACT_KEY = re.compile(
    r"^mlflow_approvals\.r\.(?P<rid>[0-9a-f]{12})(?:\.s\.(?P<signer>[^.]+)|\.(?P<ending>\w+))?$"
)


def reserved(plain: MlflowClient, name: str, version: str) -> dict[str, str]:
    tags = plain.get_model_version(name, version).tags
    return {k: v for k, v in tags.items() if k.startswith(PREFIX)}


def stored_events(uri: str, name: str, tmp: Path) -> dict[str, dict[str, Any]]:
    """The audit log of ``name``: each event by the hash its file name carries, kept only when
    its bytes hash to that name."""
    found: dict[str, dict[str, Any]] = {}
    for path, raw in AuditStore(MlflowClient(uri, uri)).read(name, tmp):
        named = path.rsplit("-", 1)[-1].removesuffix(".json")
        if hashlib.sha256(raw).hexdigest() == named:
            found[named] = json.loads(raw)
    return found


def kind(event: dict[str, Any]) -> str:
    return str(event["type"]).removeprefix(TYPE_PREFIX)


# -- 1. sign-offs of names that look alike in a tag key ----------------------------------------

LOOKALIKES = [
    pytest.param("a.b@x", "a_b@x", id="dot-vs-underscore"),
    pytest.param("a b@x", "a_b@x", id="space-vs-underscore"),
    pytest.param("a@b.x", "a.b@x", id="at-and-dot-swapped"),
    pytest.param("zoë@x", "zo_@x", id="non-ascii-vs-underscore"),
    pytest.param("p" * 60 + ".1@x", "p" * 60 + ".2@x", id="differ-after-60-characters"),
]


@pytest.mark.parametrize(("first", "second"), LOOKALIKES)
def test_lookalike_signers_each_keep_their_own_signoff(sqlite_uri, tmp_path, first, second):
    """Two people whose names sanitise to one tag key part both sign: two facts, both counted."""
    policy = {
        "roles": {"reviewer": [first, second], "owner": ["olivia"]},
        "rules": [
            {
                "name": "production",
                "models": ["*"],
                "stages": ["Production"],
                "levels": [[{"role": "reviewer", "count": 2}], [{"role": "owner", "count": 1}]],
            }
        ],
    }

    def as_(actor: str) -> ApprovalClient:
        return ApprovalClient(sqlite_uri, sqlite_uri, policy=policy, actor=actor)

    plain = MlflowClient(sqlite_uri, sqlite_uri)
    name = unique_name()
    (v,) = register_versions(sqlite_uri, name, 1)
    rid = as_("alice").request_transition(name, v, "Production").id
    as_(first).approve(name, v)
    as_(second).approve(name, v)

    fresh = as_("auditor").get_request(name, v)  # re-read from the tags, not the step's view
    assert sorted(s.actor for s in fresh.signoffs) == sorted([first, second])
    assert fresh.status is Status.PENDING and fresh.open_level == 2
    assert [(m.role, m.count) for m in fresh.missing] == [("owner", 1)]

    tags = reserved(plain, name, v)
    signoff_keys = [k for k in tags if k.startswith(f"{PREFIX}r.{rid}.s.")]
    assert len(signoff_keys) == 2
    facts = {json.loads(tags[k])["actor"]: json.loads(tags[k]) for k in signoff_keys}
    assert set(facts) == {first, second}

    events = stored_events(sqlite_uri, name, tmp_path)
    approvals = {e["data"]["actor"]["id"] for e in events.values() if kind(e) == "signoff.approved"}
    assert approvals == {first, second}
    for actor, fact in facts.items():
        assert events[fact["event"]]["data"]["actor"]["id"] == actor

    assert as_("olivia").approve(name, v).status is Status.APPLIED
    assert plain.get_model_version(name, v).current_stage == "Production"
    assert as_("auditor").verify_audit(name).ok


# -- 2a. with the audit store down, no step changes anything ----------------------------------


class DownStore(AuditStore):
    """The real AuditStore over an artifact store that is down (after ``allow`` writes): its
    one artifact write, ``_write_text``, raises as the repository's upload would."""

    def __init__(self, uri: str, allow: int = 0) -> None:
        super().__init__(MlflowClient(uri, uri))
        self.up_for = allow
        self.attempts: list[str] = []

    def _write_text(self, run_id: str, text: str, path: str) -> None:
        if self.up_for <= 0:
            raise OSError("connection refused: the audit artifact store is down")
        self.up_for -= 1
        super()._write_text(run_id, text, path)

    def append(self, event: Any, run_id: str | None = None) -> str:
        self.attempts.append(kind(event))
        return super().append(event, run_id=run_id)


class Env:
    """A model with v1 in Production (set directly) and v2, the version the steps act on."""

    def __init__(self, uri: str, policy: dict[str, Any]) -> None:
        self.uri = uri
        self.policy = policy
        self.plain = MlflowClient(uri, uri)
        self.name = unique_name()
        self.old, self.new = register_versions(uri, self.name, 2)
        self.plain.transition_model_version_stage(self.name, self.old, "Production")
        self.rid = ""

    def as_(self, actor: str, audit: AuditStore | None = None) -> ApprovalClient:
        return ApprovalClient(self.uri, self.uri, policy=self.policy, actor=actor, audit=audit)

    def snapshot(self) -> dict[str, Any]:
        """Everything a step may change: every version's tags, stage and aliases."""
        versions = {}
        for v in (self.old, self.new):
            mv = self.plain.get_model_version(self.name, v)
            versions[v] = (dict(mv.tags), mv.current_stage, sorted(mv.aliases))
        return {"aliases": dict(self.plain.get_registered_model(self.name).aliases), **versions}

    def file(self) -> None:
        self.rid = (
            self.as_("alice")
            .request_transition(self.name, self.new, "Production", archive_existing_versions=True)
            .id
        )

    def level_one(self) -> None:
        self.file()
        self.as_("bob").approve(self.name, self.new)
        self.as_("carol").approve(self.name, self.new)

    def approved_not_applied(self) -> None:
        """Every level signed; the apply failed (the store went down after the sign-off)."""
        self.level_one()
        with pytest.raises(AuditUnavailable):
            self.as_("dave", DownStore(self.uri, allow=1)).approve(self.name, self.new)
        assert self.as_("x").get_request(self.name, self.new).status is Status.APPROVED


@dataclass(frozen=True)
class Step:
    setup: Callable[[Env], None]
    run: Callable[[Env, AuditStore | None], Any]
    first_event: str  # the event the step writes first: the one the down store refuses


def _expire(env: Env, audit: AuditStore | None) -> None:
    late = env.as_("bob", audit)
    late.engine.clock = lambda: utcnow() + timedelta(days=8)  # past the rule's 7d
    with pytest.raises(InvalidRequest, match="expired"):
        late.approve(env.name, env.new, request_id=env.rid)


STEPS = {
    "file": Step(
        lambda env: None,
        lambda env, audit: env.as_("alice", audit).request_transition(
            env.name, env.new, "Production", archive_existing_versions=True
        ),
        "request.created",
    ),
    "approve-level-1": Step(
        Env.file,
        lambda env, audit: env.as_("bob", audit).approve(env.name, env.new),
        "signoff.approved",
    ),
    "reject": Step(
        Env.file,
        lambda env, audit: env.as_("carol", audit).reject(env.name, env.new, "not yet"),
        "signoff.rejected",
    ),
    "cancel": Step(
        Env.file,
        lambda env, audit: env.as_("alice", audit).cancel(env.name, env.new, "wrong version"),
        "request.cancelled",
    ),
    "approve-final": Step(
        Env.level_one,
        lambda env, audit: env.as_("dave", audit).approve(env.name, env.new),
        "signoff.approved",
    ),
    "apply-retry": Step(
        Env.approved_not_applied,
        lambda env, audit: env.as_("erin", audit).apply(env.name, env.new),
        "version.archived",
    ),
    "expire": Step(Env.file, _expire, "request.expired"),
    "break-glass": Step(
        lambda env: None,
        lambda env, audit: env.as_("root", audit).break_glass(
            env.name,
            env.new,
            stage="Production",
            reason="rollback",
            archive_existing_versions=True,
        ),
        "stage.transitioned",
    ),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_step_with_audit_store_down_changes_nothing(sqlite_uri, policy_dict, step):
    """With the audit store down a step raises AuditUnavailable and changes no tag, stage, alias."""
    env = Env(sqlite_uri, policy_dict)
    STEPS[step].setup(env)
    before = env.snapshot()
    down = DownStore(sqlite_uri)
    with pytest.raises(AuditUnavailable) as info:
        STEPS[step].run(env, down)
    assert "audit log" in str(info.value) and "nothing was changed" in str(info.value)
    assert down.attempts == [STEPS[step].first_event]  # refused at its own intent, nothing after
    assert env.snapshot() == before
    # The same step with the store up does change something: the check above is not vacuous.
    STEPS[step].run(env, None)
    assert env.snapshot() != before
    assert env.as_("auditor").verify_audit(env.name).ok


@pytest.mark.parametrize("allow", [1, 2], ids=["down-at-archive", "down-at-apply"])
def test_store_down_during_final_apply_keeps_only_the_signoff(
    sqlite_uri, policy_dict, tmp_path, allow
):
    """The store failing after the final sign-off's event: only that sign-off is recorded."""
    env = Env(sqlite_uri, policy_dict)
    env.level_one()
    before = env.snapshot()
    store = DownStore(sqlite_uri, allow=allow)
    with pytest.raises(AuditUnavailable, match="nothing was changed"):
        env.as_("dave", store).approve(env.name, env.new)
    # the sign-off, then the archive of v1, then the transition of v2
    wanted = ["signoff.approved", "version.archived", "stage.transitioned"]
    assert store.attempts == wanted[: allow + 1]
    after = env.snapshot()
    new_tags = {k: t for k, t in after[env.new][0].items() if k not in before[env.new][0]}
    assert list(new_tags) == [signoff_key(env.rid, "dave")]
    (fact,) = (json.loads(t) for t in new_tags.values())
    assert fact["actor"] == "dave" and fact["event"] in stored_events(env.uri, env.name, tmp_path)
    assert after[env.old] == before[env.old]  # v1 is still in Production, its tags untouched
    assert after[env.new][1:] == before[env.new][1:] and after["aliases"] == before["aliases"]
    assert env.as_("x").get_request(env.name, env.new).status is Status.APPROVED
    assert env.as_("erin").apply(env.name, env.new).status is Status.APPLIED
    assert env.plain.get_model_version(env.name, env.old).current_stage == "Archived"
    report = env.as_("auditor").verify_audit(env.name)
    assert report.ok, report.lines()


# -- 2b. every fact of a complete lifecycle names an event already in the log ------------------


class IntentWatch:
    """Watches every registry write the engine makes: when it writes a fact, the event the fact
    names must already be in the log; when it changes a stage or alias, an event recording that
    change (and one per version it archives) must already be there."""

    def __init__(self, uri: str, tmp: Path) -> None:
        self.uri = uri
        self.tmp = tmp
        self.plain = MlflowClient(uri, uri)
        self.used: set[str] = set()  # events already matched to a registry change
        self.violations: list[str] = []
        self.facts = 0
        self.changes = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        set_tag = Registry.set_model_version_tag
        transition = Registry.transition_model_version_stage
        set_alias = Registry.set_registered_model_alias
        delete_alias = Registry.delete_registered_model_alias

        def watched_tag(reg: Registry, name: str, version: str, key: str, value: str) -> None:
            if key.startswith(PREFIX) and key != INDEX_KEY:
                self.facts += 1
                event = json.loads(value).get("event")
                if event not in stored_events(self.uri, name, self.tmp):
                    self.violations.append(f"fact {key} written before its event {event}")
            set_tag(reg, name, version, key, value)

        def watched_transition(
            reg: Registry, name: str, version: str, stage: str, archive: bool
        ) -> None:
            self.change(name, version, "stage.transitioned", {"stage": stage, "version": version})
            if archive:
                for mv in self.plain.search_model_versions(f"name = '{name}'"):
                    if mv.current_stage == stage and str(mv.version) != version:
                        other = str(mv.version)
                        after = {"stage": "Archived", "version": other}
                        self.change(name, other, "version.archived", after)
            transition(reg, name, version, stage, archive)

        def watched_set_alias(reg: Registry, name: str, alias: str, version: str) -> None:
            self.change(name, version, "alias.set", {"alias": alias, "version": version})
            set_alias(reg, name, alias, version)

        def watched_delete_alias(reg: Registry, name: str, alias: str) -> None:
            version = str(self.plain.get_model_version_by_alias(name, alias).version)
            self.change(name, version, "alias.deleted", {"alias": alias, "version": None})
            delete_alias(reg, name, alias)

        monkeypatch.setattr(Registry, "set_model_version_tag", watched_tag)
        monkeypatch.setattr(Registry, "transition_model_version_stage", watched_transition)
        monkeypatch.setattr(Registry, "set_registered_model_alias", watched_set_alias)
        monkeypatch.setattr(Registry, "delete_registered_model_alias", watched_delete_alias)

    def change(self, name: str, version: str, type_: str, after: dict[str, Any]) -> None:
        self.changes += 1
        for digest, event in stored_events(self.uri, name, self.tmp).items():
            if (
                digest not in self.used
                and kind(event) == type_
                and event["subject"] == f"models:/{name}/{version}"
                and event["data"]["after"] == after
            ):
                self.used.add(digest)
                return
        self.violations.append(f"{type_} of {name} v{version} to {after} before its event")


@pytest.fixture
def watch(sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IntentWatch:
    w = IntentWatch(sqlite_uri, tmp_path)
    w.install(monkeypatch)
    return w


# The event a fact may name, by the fact's kind.
FACT_EVENTS = {
    "request": {"request.created", "alias.set", "stage.transitioned"},  # the latter: break-glass
    "signoff": {"signoff.approved", "signoff.rejected"},
    "cancel": {"request.cancelled"},
    "applied": {"stage.transitioned", "alias.set", "alias.deleted", "breakglass.reviewed"},
    "expired": {"request.expired"},
    "breakglass": {"alias.set", "stage.transitioned"},
    "superseded": {"request.superseded"},
}


def run_full_lifecycle(uri: str, policy: dict[str, Any]) -> tuple[str, list[str]]:
    """Every kind of fact, on one model: returns (name, versions)."""

    def as_(actor: str) -> ApprovalClient:
        return ApprovalClient(uri, uri, policy=policy, actor=actor)

    plain = MlflowClient(uri, uri)
    name = unique_name()
    versions = register_versions(uri, name, 7)
    v1, v2, v3, v4, v5, v6, v7 = versions
    plain.transition_model_version_stage(name, v7, "Production")  # archived by v1's request
    # v1: request, two level-1 sign-offs, the final one, applied (archiving v7)
    as_("alice").request_transition(name, v1, "Production", archive_existing_versions=True)
    for signer in ("bob", "carol", "dave"):
        as_(signer).approve(name, v1)
    # v2: a rejection; v3: a cancel; v4: an expiry noticed by a later sign-off
    as_("alice").request_transition(name, v2, "Production")
    as_("carol").reject(name, v2, "not this one")
    as_("alice").request_alias(name, v3, "champion")
    as_("alice").cancel(name, v3, "wrong version")
    rid4 = as_("alice").request_alias(name, v4, "champion").id
    late = as_("bob")
    late.engine.clock = lambda: utcnow() + timedelta(days=8)
    with pytest.raises(InvalidRequest, match="expired"):
        late.approve(name, v4, request_id=rid4)
    # v6 asks for champion; v5 takes it by break-glass (reviewed); v6's final sign-off finds it
    # taken: superseded
    as_("alice").request_alias(name, v6, "champion")
    as_("bob").approve(name, v6)
    as_("carol").approve(name, v6)
    as_("root").break_glass(name, v5, alias="champion", reason="rollback")
    for signer in ("bob", "carol", "dave"):
        as_(signer).approve(name, v5)
    with pytest.raises(InvalidRequest, match="not applied"):
        as_("dave").approve(name, v6)
    return name, versions


def test_every_fact_of_a_lifecycle_names_an_event_written_before_it(
    sqlite_uri, policy_dict, tmp_path, watch
):
    """Every fact kind names its own event, already in the log when the fact or change was made."""
    name, versions = run_full_lifecycle(sqlite_uri, policy_dict)
    assert watch.violations == []
    assert watch.changes >= 3 and watch.facts >= 20  # the watch saw the steps

    plain = MlflowClient(sqlite_uri, sqlite_uri)
    events = stored_events(sqlite_uri, name, tmp_path / "log")
    kinds_seen = set()
    for v in versions:
        for key, value in reserved(plain, name, v).items():
            if key == INDEX_KEY:
                continue
            m = _FACT_KEY.match(key)
            assert m, key
            fact_kind = "signoff" if m["signer"] else m["ending"] or "request"
            kinds_seen.add(fact_kind)
            digest = json.loads(value).get("event")
            assert digest in events, f"{key} names {digest}, not in the audit log"
            event = events[digest]
            assert kind(event) in FACT_EVENTS[fact_kind], (key, kind(event))
            assert event["data"]["request_id"] == m["rid"], key
            assert event["data"]["model"]["version"] == v, key
            if fact_kind == "signoff":
                assert event["data"]["actor"]["id"] == json.loads(value)["actor"], key
    assert kinds_seen == set(FACT_EVENTS)
    auditor = ApprovalClient(sqlite_uri, sqlite_uri, policy=policy_dict, actor="auditor")
    report = auditor.verify_audit(name)
    assert report.ok, report.lines()
