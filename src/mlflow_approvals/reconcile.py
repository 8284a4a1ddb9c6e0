"""Reconciling a model's audit log with the live registry: changes that bypassed the gate.

The log is replayed into the stages and aliases it accounts for, and compared with each
version's stage and the model's aliases. Each difference is recorded once as a
``change.detected`` audit event, which becomes the expected state. See docs/audit.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from mlflow_approvals import tags as T
from mlflow_approvals.abandon import ABANDON_AFTER, Intent, abandoned_hashes, settle_intents
from mlflow_approvals.audit import (
    TYPE_PREFIX,
    deterministic_id,
    make_event,
)
from mlflow_approvals.auditlog import read_log
from mlflow_approvals.lifecycle import SYSTEM, Status
from mlflow_approvals.verify import (
    VALID,
    VerifyReport,
    ordered_events,
    verify_events,
)

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from mlflow_approvals.ports import Ports

__all__ = ["Change", "ReconcileReport", "reconcile_model", "replay"]


@dataclass(frozen=True)
class Change:
    """A difference between what the audit log says and what the registry holds."""

    what: Literal["stage", "alias", "tag", "version", "review", "package"]
    version: str | None
    key: str | None  # the alias or the tag key; None for a stage
    expected: Any
    actual: Any
    event: str | None = None  # hash of the change.detected event that records it
    # False for a stage or alias the policy lets through at once (no rule, default allow)
    gated: bool = True

    def __str__(self) -> str:
        if self.what == "tag":
            return f"v{self.version} tag {self.key}: {self.actual}"
        if self.what == "version":
            return f"v{self.version}: the audit log has its history, the registry deleted it"
        if self.what == "review":
            return f"v{self.version} break-glass change (request {self.key}): {self.actual}"
        if self.what == "package":
            return (
                f"v{self.version} SageMaker package {self.key}: the audit log says "
                f"{self.expected!r}, SageMaker has {self.actual!r}"
            )
        head = f"v{self.version} stage" if self.what == "stage" else f"alias @{self.key}"
        return f"{head}: the audit log says {self.expected!r}, the registry has {self.actual!r}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "version": self.version,
            "key": self.key,
            "expected": self.expected,
            "actual": self.actual,
            "event": self.event,
            "gated": self.gated,
        }


@dataclass(frozen=True)
class ReconcileReport:
    """Every change of a model's stages, aliases or reserved tags that bypassed the gate.

    Each change was recorded as a ``change.detected`` audit event, so the next reconcile does
    not report it again. ``log_ok`` is false when the log itself did not verify (only its
    valid events were replayed).
    """

    name: str
    changes: tuple[Change, ...]
    versions_checked: int
    events_replayed: int
    log_ok: bool = True
    reviews: tuple[Change, ...] = ()
    """Break-glass changes whose review was rejected or is overdue (not recorded as events:
    they are read from the requests each time, and fail the report until the review is done)."""
    abandoned: tuple[Intent, ...] = ()
    """Events written before an effect that never happened (a crash), recorded now as
    ``intent.abandoned``: a normal outcome, which does not fail the report."""
    unsettled: tuple[Intent, ...] = ()
    """Unanchored events left alone: too young (their step may be in flight), or the registry
    shows their effect (finish the step)."""

    @property
    def bypassed(self) -> tuple[Change, ...]:
        """The changes that needed an approval under the policy and did not get one."""
        return tuple(c for c in self.changes if c.gated)

    @property
    def ok(self) -> bool:
        return not self.bypassed and not self.reviews

    @property
    def summary(self) -> str:
        n = len(self.bypassed)
        text = (
            f"{n} {'change' if n == 1 else 'changes'} outside the approval gate "
            f"({self.versions_checked} versions checked against {self.events_replayed} events)"
        )
        ungated = len(self.changes) - n
        if ungated:
            text += f"; {ungated} ungated {'change' if ungated == 1 else 'changes'} recorded"
        if self.reviews:
            n = len(self.reviews)
            text += f"; {n} break-glass {'review' if n == 1 else 'reviews'} rejected or overdue"
        if self.abandoned:
            n = len(self.abandoned)
            text += f"; {n} abandoned {'intent' if n == 1 else 'intents'} recorded"
        if self.unsettled:
            n = len(self.unsettled)
            text += f"; {n} unanchored {'intent' if n == 1 else 'intents'} left for now"
        if not self.log_ok:
            text += "; the audit log does not verify: run verify_audit"
        return text

    @property
    def lines(self) -> list[str]:
        changed = [f"{'CHANGED' if c.gated else 'UNGATED'}  {c}" for c in self.changes]
        return (
            changed
            + [f"REVIEW   {c}" for c in self.reviews]
            + [f"ABANDONED  {i}" for i in self.abandoned]
            + [f"UNSETTLED  {i}" for i in self.unsettled]
        )

    def __str__(self) -> str:
        return "\n".join([*self.lines, self.summary])

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReconcileReport:
        """The report :meth:`to_dict` described (as the approvals server sends it)."""
        return cls(
            name=str(d["name"]),
            changes=tuple(Change(**c) for c in d.get("changes", [])),
            versions_checked=int(d["versions_checked"]),
            events_replayed=int(d["events_replayed"]),
            log_ok=bool(d.get("log_ok", True)),
            reviews=tuple(Change(**c) for c in d.get("reviews", [])),
            abandoned=tuple(Intent(**i) for i in d.get("abandoned", [])),
            unsettled=tuple(Intent(**i) for i in d.get("unsettled", [])),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "name": self.name,
            "summary": self.summary,
            "log_ok": self.log_ok,
            "versions_checked": self.versions_checked,
            "events_replayed": self.events_replayed,
            "changes": [c.to_dict() for c in self.changes],
            "reviews": [c.to_dict() for c in self.reviews],
            "abandoned": [i.to_dict() for i in self.abandoned],
            "unsettled": [i.to_dict() for i in self.unsettled],
        }


@dataclass
class _Expected:
    """The registry state the log accounts for, and the event each part rests on."""

    stages: dict[str, tuple[str, str]] = field(default_factory=dict)  # version -> (stage, basis)
    aliases: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # alias -> (v, basis)
    tags: set[tuple[str, str, str]] = field(default_factory=set)  # (version, key, value sha256)
    known: set[str] = field(default_factory=set)  # versions the log has events of
    deleted: set[str] = field(default_factory=set)  # versions recorded as deleted
    packages: dict[str, tuple[str, str]] = field(default_factory=dict)  # arn -> (status, basis)


_DIRECT = ("registry.changed", "gate.bypassed")  # direct writes the server let through


def replay(events: Iterable[tuple[str, Mapping[str, Any]]]) -> _Expected:
    """Replay (hash, event) pairs, oldest first, into the registry state they account for.

    A direct write the server let through (``registry.changed``, or ``gate.bypassed`` in report
    mode) counts, unless a ``registry.unchanged`` event says MLflow then refused it.
    """
    events = list(events)
    failed = {
        str(p)
        for _, event in events
        if str(event.get("type", "")) == TYPE_PREFIX + "registry.unchanged"
        for p in (event.get("data") or {}).get("parents", [])
    }
    state = _Expected()
    for digest, event in events:
        kind = str(event.get("type", "")).removeprefix(TYPE_PREFIX)
        data = event.get("data") or {}
        if kind in _DIRECT:
            if digest in failed:
                continue
            kind = "change.detected"  # same shape: before and after of a stage, alias, version
        version = data.get("model", {}).get("version")
        if version is not None and str(version).isdigit():
            state.known.add(str(version))
        after = data.get("after")
        if not isinstance(after, dict):
            continue
        if "model_package_arn" in after and (
            kind.startswith("sagemaker.") or kind == "change.detected"
        ):
            state.packages[str(after["model_package_arn"])] = (str(after.get("status")), digest)
            continue
        if kind == "change.detected" and after.get("exists") is False:
            state.deleted.add(str(version))
            continue
        if kind in ("stage.transitioned", "version.archived") or (
            kind == "change.detected" and "stage" in after
        ):
            v = str(after.get("version") or version)
            state.stages[v] = (str(after.get("stage")), digest)
        elif kind in ("alias.set", "alias.deleted") or (
            kind == "change.detected" and "alias" in after
        ):
            target = after.get("version")
            state.aliases[str(after.get("alias"))] = (
                None if target is None else str(target),
                digest,
            )
        elif kind == "change.detected" and "tag" in after:
            state.tags.add((str(version), str(after["tag"]), str(after.get("sha256"))))
    return state


def _tag_digest(mv: ModelVersion, key: str) -> str:
    return hashlib.sha256((mv.tags or {}).get(key, "").encode()).hexdigest()


def _odd_tags(name: str, mv: ModelVersion) -> list[tuple[str, str]]:
    """Reserved tags that no mlflow-approvals writer would have written: (key, reason)."""
    v = str(mv.version)
    tags = mv.tags or {}
    facts = T.VersionFacts(name, v, tags)
    known: dict[str, str | None] = {T.INDEX_KEY: "index", **dict(facts.written())}
    odd = []
    for key in sorted(tags):
        if not T.is_reserved(key):
            continue
        if key in facts.malformed:
            odd.append((key, f"malformed: {facts.malformed[key]}"))
        elif key not in known:
            odd.append((key, "a reserved tag no mlflow-approvals step writes"))
        elif known[key] is None:
            odd.append((key, "a fact without an audit event"))
    return odd


def reconcile_model(
    ports: Ports, name: str, *, abandon_after: timedelta = ABANDON_AFTER
) -> ReconcileReport:
    """Compare the audit log of ``name`` with the live registry; record and report every change
    that did not come through an approval.

    The log is replayed (valid events only, one per CloudEvents id, in time order): the stage
    of each version (``stage.transitioned``, ``version.archived``, ``change.detected``), the
    version each alias points at (``alias.set``, ``alias.deleted``, ``change.detected``). A
    version the log never mentions is expected in stage ``None`` with no alias. Each difference
    is written as a ``change.detected`` event (before: what the log says; after: what the
    registry has), which becomes the expected state, so it is reported once.

    An unanchored lifecycle event at least ``abandon_after`` old whose effect the registry does
    not show is recorded as ``intent.abandoned`` (:mod:`mlflow_approvals.abandon`); events so
    recorded are never replayed.
    """
    log = read_log(ports, name)
    files, anchors, versions = log.files, log.anchors, log.versions
    by_version = {str(mv.version): mv for mv in versions}
    report = verify_events(files, anchors, live_versions=log.live_versions, deletions=log.deletions)
    # The events of a version deleted without a recorded deletion ("orphaned", and nothing
    # else wrong) are replayed too, so that deletion is reported (and recorded once).
    # An abandoned event never took effect: left out before one delivery per id is chosen.
    gone = abandoned_hashes(files, report)
    kept = [(path, raw) for path, raw in files if path not in _paths_of(report, gone)]
    ordered = [
        (line.hash, event)
        for event, line in ordered_events(kept, report)
        if line.status == VALID or line.problem == "orphaned"
    ]
    state = replay(ordered)
    named = {p for _, event in ordered for p in event["data"].get("parents", [])}
    heads = {h for h, event in ordered if event["type"] == TYPE_PREFIX + "change.detected"}
    heads -= named

    live_aliases = {
        str(a): str(v) for a, v in (ports.registry.get_registered_model(name).aliases or {}).items()
    }
    abandoned, unsettled = settle_intents(
        ports, name, files, report, by_version, live_aliases, abandon_after
    )
    settled = {i.event for i in abandoned}
    found: list[tuple[Change, ModelVersion | None, str]] = []
    for v in sorted(state.known - set(by_version) - state.deleted, key=int):
        found.append((Change("version", v, None, "exists", "deleted"), None, "initial"))
    for v, mv in by_version.items():
        expected, basis = state.stages.get(v, ("None", "initial"))
        if mv.current_stage != expected:
            found.append((Change("stage", v, None, expected, mv.current_stage), mv, basis))
    for alias in sorted(set(state.aliases) | set(live_aliases)):
        expected_v, basis = state.aliases.get(alias, (None, "initial"))
        actual_v = live_aliases.get(alias)
        if expected_v != actual_v:
            held = actual_v or expected_v
            found.append(
                (
                    Change("alias", held, alias, expected_v, actual_v),
                    by_version.get(str(held)),
                    basis,
                )
            )
    for v, mv in by_version.items():
        for key, why in _odd_tags(name, mv):
            if (v, key, _tag_digest(mv, key)) not in state.tags:
                found.append((Change("tag", v, key, None, why), mv, "initial"))
    found += _package_changes(ports, name, by_version, state.packages)

    recorded: list[Change] = []
    for change, held_by, basis in found:
        change = Change(**{**change.__dict__, "gated": _is_gated(ports, name, change)})
        digest = _record(ports, name, change, held_by, basis, anchors, heads)
        heads = {digest}
        recorded.append(Change(**{**change.__dict__, "event": digest}))
    return ReconcileReport(
        name,
        tuple(recorded),
        len(by_version),
        len(ordered),
        log_ok=all(line.status == VALID or line.hash in settled for line in report.events),
        reviews=tuple(_failed_reviews(name, versions, ports.clock())),
        abandoned=tuple(abandoned),
        unsettled=tuple(unsettled),
    )


def _paths_of(report: VerifyReport, hashes: set[str]) -> set[str]:
    """The files of the events with these hashes."""
    return {line.path for line in report.events if line.hash in hashes and line.path}


def _package_changes(
    ports: Ports,
    name: str,
    versions: Mapping[str, ModelVersion],
    expected: Mapping[str, tuple[str, str]],
) -> list[tuple[Change, ModelVersion | None, str]]:
    """Linked SageMaker packages whose approval status the log does not account for.

    A package is linked by a request that recorded it, or by a version's link tag while a rule
    with ``sagemaker:`` covers the model. One the log never moved is expected pending.
    """
    import fnmatch

    rules = [
        r
        for r in ports.policy.rules
        if r.sagemaker is not None and any(fnmatch.fnmatchcase(name, p) for p in r.models)
    ]
    if not rules:
        return []
    from mlflow_approvals.errors import InvalidRequest
    from mlflow_approvals.sagemaker import LINK_TAG, PENDING, PackageGate, settings_for_arn

    gate = getattr(ports, "packages", None) or PackageGate()
    linked: dict[str, ModelVersion] = {}
    for v, mv in sorted(versions.items(), key=lambda item: int(item[0])):
        tags = mv.tags or {}
        arns = [r.sagemaker_arn for r in T.VersionFacts(name, v, tags).requests.values()]
        arns.append(tags.get(LINK_TAG))
        for arn in arns:
            if arn and T.MODEL_PACKAGE_ARN.fullmatch(arn):
                linked.setdefault(arn, mv)
    found: list[tuple[Change, ModelVersion | None, str]] = []
    for arn, mv in linked.items():
        status, basis = expected.get(arn, (PENDING, "initial"))
        try:
            actual = gate.status(settings_for_arn(arn, rules), arn)
        except InvalidRequest:  # the package was deleted
            actual = "(no such package)"
        if actual != status:
            found.append((Change("package", str(mv.version), arn, status, actual), mv, basis))
    return found


def _failed_reviews(name: str, versions: Iterable[ModelVersion], now: datetime) -> list[Change]:
    """Break-glass changes of ``name`` whose review was rejected or is overdue at ``now``."""
    found = []
    for mv in versions:
        facts = T.VersionFacts(name, str(mv.version), mv.tags or {})
        for r in facts.all_requests(now):
            if r.review_failed:
                by = r.record.review_by.isoformat() if r.record.review_by else "?"
                actual = "review rejected" if r.status is Status.REJECTED else f"overdue since {by}"
                found.append(Change("review", r.version, r.id, f"reviewed by {by}", actual))
    return found


def _is_gated(ports: Ports, name: str, change: Change) -> bool:
    """Could this change not pass at once (a rule gates it, or the default is deny)?

    Tags, deletions and SageMaker packages: always. The decision is :meth:`Policy.gate`, as
    for a request.
    """
    if change.what == "stage":
        return ports.policy.gate(name, "stage", str(change.actual)).gated
    if change.what == "alias":
        return ports.policy.gate(name, "alias", str(change.key)).gated
    return True


def _record(
    ports: Ports,
    name: str,
    change: Change,
    mv: ModelVersion | None,
    basis: str,
    anchors: Mapping[str, Collection[str]],
    heads: set[str],
) -> str:
    """Write one change.detected event; return its hash."""
    if change.what == "stage":
        before: dict[str, Any] = {"stage": change.expected, "version": change.version}
        after: dict[str, Any] = {"stage": change.actual, "version": change.version}
        comment = (
            f"v{change.version} moved from {change.expected} to {change.actual} without an approval"
        )
    elif change.what == "alias":
        before = {"alias": change.key, "version": change.expected}
        after = {"alias": change.key, "version": change.actual}
        comment = (
            f"alias @{change.key} moved from {change.expected or '(unset)'} to "
            f"{change.actual or '(unset)'} without an approval"
        )
    elif change.what == "package":
        before = {"model_package_arn": change.key, "status": change.expected}
        after = {"model_package_arn": change.key, "status": change.actual}
        comment = (
            f"SageMaker model package {change.key} (v{change.version}) is {change.actual}; "
            f"the audit log accounts for {change.expected}: it was changed outside the gate"
        )
    elif change.what == "version":
        before = {"version": change.version, "exists": True}
        after = {"version": change.version, "exists": False}
        comment = f"v{change.version} was deleted without an approval"
    else:
        value = ((mv.tags or {}) if mv is not None else {}).get(str(change.key), "")
        before = {"tag": change.key, "value": None}
        after = {
            "tag": change.key,
            "sha256": hashlib.sha256(value.encode()).hexdigest(),
            "value": value[:1000],
        }
        comment = f"reserved tag {change.key} on v{change.version}: {change.actual}"
    own = [
        h for h, where in anchors.items() if any(w.startswith(f"v{change.version}:") for w in where)
    ]
    event = make_event(
        type="change.detected",
        name=name,
        version=change.version,
        actor=SYSTEM.id,
        display_name=SYSTEM.display_name,
        comment=comment,
        before=before,
        after=after,
        policy_hash=ports.policy.content_hash,
        run_id=None if mv is None else mv.run_id,
        source=None if mv is None else mv.source,
        parents=[*own, *heads],
        event_id=deterministic_id(
            "change",
            name,
            change.what,
            str(change.key or change.version),
            json.dumps([change.expected, change.actual], sort_keys=True, default=str),
            basis,
        ),
        extra={
            "change": change.what,
            "registry_last_updated": None if mv is None else mv.last_updated_timestamp,
        },
    )
    return ports.audit.append(event)
