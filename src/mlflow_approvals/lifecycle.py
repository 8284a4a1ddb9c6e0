"""Requests, sign-offs and the pure decisions of the approval lifecycle.

Everything here takes data and returns data: no MLflow, no clock reads (``now`` is passed in), no
I/O. A request's status is *derived* from its facts (the request, the sign-offs, a cancel, an
apply), never stored, so concurrent writers cannot overwrite it::

    pending ──(last level satisfied)──> approved ──(apply)──> applied
       │                                   └──(apply failed: stays approved, retry)
       ├──(one rejection)──> rejected
       ├──(requester or admin)──> cancelled
       └──(deadline passes)──> expired
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal

TargetKind = Literal["stage", "alias"]
TargetAction = Literal["set", "delete"]
Decision = Literal["approve", "reject"]


class Status(str, Enum):
    """The status of a request, derived from its facts."""

    PENDING = "pending"
    APPROVED = "approved"  # every level satisfied, not (yet) applied: an apply failed or is running
    APPLIED = "applied"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"  # another version took the target before it was applied
    INVALIDATED = "invalidated"  # the model's files changed after the approvals were given

    def __str__(self) -> str:
        return self.value

    @property
    def is_open(self) -> bool:
        """True while the request can still be signed or applied."""
        return self in (Status.PENDING, Status.APPROVED)


@dataclass(frozen=True)
class Actor:
    """Who acts: an id (the login name) and the printed name recorded beside each signature."""

    id: str
    display_name: str

    @classmethod
    def named(cls, id: str, display_name: str | None = None) -> Actor:
        """``id`` acting under ``display_name`` (default: the id itself)."""
        return cls(id, display_name or id)


SYSTEM = Actor("mlflow-approvals", "mlflow-approvals (system)")
"""The actor of what no person does: expiries, archiving, the records of reconcile."""
SYSTEM_ACTOR = SYSTEM.id


@dataclass(frozen=True)
class Target:
    """What a request asks for: a stage, or an alias to set on (or delete from) the version."""

    kind: TargetKind
    value: str
    action: TargetAction = "set"
    archive_existing_versions: bool = False

    def __str__(self) -> str:
        if self.kind == "stage":
            extra = " (archiving the versions there)" if self.archive_existing_versions else ""
            return f"stage {self.value}{extra}"
        return (
            f"alias @{self.value}" if self.action == "set" else f"deletion of alias @{self.value}"
        )


@dataclass(frozen=True)
class Requirement:
    """``count`` sign-offs from members of ``role``."""

    role: str
    count: int

    def __str__(self) -> str:
        return f"{self.count} of {self.role}"


@dataclass(frozen=True)
class SignOff:
    """One person's decision on a request. Only one per person per request."""

    actor: str
    decision: Decision
    role: str | None
    level: int | None  # 1-based level the approval counts toward; None for a rejection
    comment: str | None
    time: datetime
    display_name: str | None = None
    event: str | None = None  # hash of the audit event that records it
    digest: str | None = None  # the evidence digest of the model files the signer approved

    @property
    def meaning(self) -> str:
        """The meaning of the signature, as 21 CFR Part 11 §11.50 asks it to be shown."""
        if self.decision == "reject":
            return "rejection"
        return f"approval as {self.role} (level {self.level})"


@dataclass(frozen=True)
class Ending:
    """A cancellation or an application: who, when, why."""

    actor: str
    time: datetime
    comment: str | None = None
    event: str | None = None
    display_name: str | None = None


@dataclass(frozen=True)
class RequestRecord:
    """The request fact as filed: immutable once written."""

    id: str
    name: str
    version: str
    target: Target
    requester: str
    created_at: datetime
    comment: str | None
    rule: str
    levels: tuple[tuple[Requirement, ...], ...]
    separation_of_duties: bool
    expires_at: datetime | None
    policy_hash: str
    event: str | None = None
    requester_name: str | None = None  # the printed name recorded with the request
    audit_run: str | None = None  # the audit run its events go to (saves each signer a look-up)
    break_glass: bool = False  # applied at once in an emergency; the levels review it afterwards
    review_by: datetime | None = None  # a break-glass change's review deadline
    # The versions that held the target when the request was filed (None: not recorded). When
    # another version holds it at apply time, the approvals were for a state that has gone.
    holders: tuple[str, ...] | None = None
    # The checks the rule demands, as evaluated when the request was filed (checks.CheckResult).
    checks: tuple[Any, ...] = ()
    # The evidence digest of the version's model files, source and run when it was filed: what
    # every signer approves. None when it could not be computed (recorded before 0.1 or absent).
    digest: str | None = None
    # What differs from the version holding the target when it was filed (changes.compare).
    changes: Mapping[str, Any] | None = None
    # The SageMaker model package the request drives (its rule's `sagemaker:`), as linked when it
    # was filed: retagging the version later does not redirect the request.
    sagemaker_arn: str | None = None


@dataclass(frozen=True)
class ApprovalRequest:
    """A request and everything signed on it, with its derived status.

    ``signoffs`` holds the approvals and the rejection (one entry per person, oldest first);
    the request itself is not a sign-off. ``missing`` lists what the open level still needs.
    """

    record: RequestRecord
    signoffs: tuple[SignOff, ...]
    status: Status
    open_level: int | None
    missing: tuple[Requirement, ...]
    cancelled: Ending | None = None
    applied: Ending | None = None
    expired: Ending | None = None
    emergency: Ending | None = None  # the break-glass application, before any review
    overdue: bool = False  # a break-glass review still open after its deadline
    superseded: Ending | None = None  # the target moved on before it was applied
    invalidated: Ending | None = None  # the model's files changed after filing

    # Flat accessors, so callers read request.target rather than request.record.target.
    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def version(self) -> str:
        return self.record.version

    @property
    def target(self) -> str:
        """The stage or alias name the request is about."""
        return self.record.target.value

    @property
    def target_kind(self) -> TargetKind:
        return self.record.target.kind

    @property
    def action(self) -> TargetAction:
        return self.record.target.action

    @property
    def archive_existing_versions(self) -> bool:
        return self.record.target.archive_existing_versions

    @property
    def requester(self) -> str:
        return self.record.requester

    @property
    def created_at(self) -> datetime:
        return self.record.created_at

    @property
    def expires_at(self) -> datetime | None:
        return self.record.expires_at

    @property
    def comment(self) -> str | None:
        return self.record.comment

    @property
    def rule(self) -> str:
        return self.record.rule

    @property
    def levels(self) -> tuple[tuple[Requirement, ...], ...]:
        return self.record.levels

    @property
    def is_open(self) -> bool:
        return self.status.is_open

    @property
    def checks(self) -> tuple[Any, ...]:
        """The rule's checks as evaluated when the request was filed (each a ``CheckResult``)."""
        return self.record.checks

    @property
    def digest(self) -> str | None:
        """The evidence digest of the model files, source and run every signer approves."""
        return self.record.digest

    @property
    def changes(self) -> Mapping[str, Any] | None:
        """What differs from the version that held the target when the request was filed."""
        return self.record.changes

    @property
    def fully_signed(self) -> bool:
        """True when every level has the sign-offs it needs (whatever the status)."""
        return level_progress(self.record.levels, self.signoffs)[0] is None

    @property
    def break_glass(self) -> bool:
        """True for an emergency change applied at once, whose review is this request."""
        return self.record.break_glass

    @property
    def review_failed(self) -> bool:
        """A break-glass change whose review was rejected, or is open past its deadline."""
        return self.break_glass and (self.overdue or self.status is Status.REJECTED)

    def history(self) -> list[str]:
        """The filing, each sign-off and the ending, one human-readable line each (§11.50)."""
        return format_history(self)

    def describe(self) -> str:
        """One line: what is asked, and where it stands."""
        head = f"request {self.id}: {self.name} v{self.version} -> {self.record.target}"
        if self.break_glass:
            head += " (applied by break-glass; this is its review)"
        if self.status is Status.PENDING and self.open_level is not None:
            need = ", ".join(str(m) for m in self.missing)
            return f"{head}: pending at level {self.open_level} (needs {need})"
        return f"{head}: {self.status.value}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view with a stable shape (the CLI's ``--json`` output)."""

        def ts(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat().replace("+00:00", "Z")

        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "target": {
                "kind": self.target_kind,
                "value": self.target,
                "action": self.action,
                "archive_existing_versions": self.archive_existing_versions,
            },
            "status": self.status.value,
            "requester": self.requester,
            "requester_display_name": self.record.requester_name or self.requester,
            "created_at": ts(self.created_at),
            "expires_at": ts(self.expires_at),
            "comment": self.comment,
            "rule": self.rule,
            "levels": [[{"role": r.role, "count": r.count} for r in lvl] for lvl in self.levels],
            "open_level": self.open_level,
            "missing": [{"role": r.role, "count": r.count} for r in self.missing],
            "signoffs": [
                {
                    "actor": s.actor,
                    "display_name": s.display_name or s.actor,
                    "decision": s.decision,
                    "role": s.role,
                    "level": s.level,
                    "meaning": s.meaning,
                    "comment": s.comment,
                    "time": ts(s.time),
                    "digest": s.digest,
                }
                for s in self.signoffs
            ],
            "cancelled": None
            if self.cancelled is None
            else {
                "actor": self.cancelled.actor,
                "display_name": self.cancelled.display_name or self.cancelled.actor,
                "time": ts(self.cancelled.time),
                "comment": self.cancelled.comment,
            },
            "break_glass": self.break_glass,
            "review_by": ts(self.record.review_by),
            "overdue": self.overdue,
            "emergency": None
            if self.emergency is None
            else {
                "actor": self.emergency.actor,
                "display_name": self.emergency.display_name or self.emergency.actor,
                "time": ts(self.emergency.time),
                "comment": self.emergency.comment,
            },
            "applied": None
            if self.applied is None
            else {
                "actor": self.applied.actor,
                "display_name": self.applied.display_name or self.applied.actor,
                "time": ts(self.applied.time),
            },
            "superseded": None
            if self.superseded is None
            else {"time": ts(self.superseded.time), "comment": self.superseded.comment},
            "invalidated": None
            if self.invalidated is None
            else {"time": ts(self.invalidated.time), "comment": self.invalidated.comment},
            "checks": [c.to_dict() for c in self.record.checks],
            "digest": self.record.digest,
            "changes": None if self.record.changes is None else dict(self.record.changes),
        }


def _printed(actor: str, display_name: str | None) -> str:
    printed = display_name or actor
    return printed if printed == actor else f"{printed} ({actor})"


def format_history(request: ApprovalRequest) -> list[str]:
    """The request's history in human-readable form (21 CFR Part 11 §11.50).

    One line for the filing, each sign-off, and the ending: the date and time (UTC), the
    printed name (with the user id when they differ), the meaning, and the comment.
    """

    def ts(t: datetime) -> str:
        return t.strftime("%Y-%m-%d %H:%M:%S UTC")

    def said(comment: str | None) -> str:
        return f': "{comment}"' if comment else ""

    record = request.record
    rows = [
        f"{ts(record.created_at)}  {_printed(record.requester, record.requester_name)}  "
        f"request for {record.target}{said(record.comment)}"
    ]
    for s in request.signoffs:
        rows.append(
            f"{ts(s.time)}  {_printed(s.actor, s.display_name)}  {s.meaning}{said(s.comment)}"
        )
    for label, ending in (
        ("cancellation", request.cancelled),
        ("expiry", request.expired),
        ("superseded", request.superseded),
        ("invalidation", request.invalidated),
        ("application", request.applied),
    ):
        if ending is not None:
            who = _printed(ending.actor, ending.display_name)
            rows.append(f"{ts(ending.time)}  {who}  {label}{said(ending.comment)}")
    return rows


def ungated(
    actor: Actor, name: str, version: str, target: Target, policy_hash: str, now: datetime
) -> ApprovalRequest:
    """The result of a change no rule gates: applied at once, with no request id."""
    record = RequestRecord(
        id="",
        name=name,
        version=version,
        target=target,
        requester=actor.id,
        created_at=now,
        comment=None,
        rule="",
        levels=(),
        separation_of_duties=False,
        expires_at=None,
        policy_hash=policy_hash,
    )
    applied = Ending(actor.id, now, "not gated by the policy", None, actor.display_name)
    return ApprovalRequest(record, (), Status.APPLIED, None, (), applied=applied)


def utcnow() -> datetime:
    """The current time, UTC, millisecond precision (the clock the edges pass in)."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def level_progress(
    levels: tuple[tuple[Requirement, ...], ...], signoffs: tuple[SignOff, ...]
) -> tuple[int | None, tuple[Requirement, ...]]:
    """Return (open level, what it still needs); (None, ()) when every level is satisfied.

    An approval counts toward the requirement recorded in it (its level and role); approvals
    beyond a requirement's count are surplus and change nothing.
    """
    for number, level in enumerate(levels, start=1):
        missing = []
        for req in level:
            have = sum(
                1
                for s in signoffs
                if s.decision == "approve" and s.level == number and s.role == req.role
            )
            if have < req.count:
                missing.append(Requirement(req.role, req.count - have))
        if missing:
            return number, tuple(missing)
    return None, ()


def derive(
    record: RequestRecord,
    signoffs: tuple[SignOff, ...],
    now: datetime,
    cancelled: Ending | None = None,
    applied: Ending | None = None,
    expired: Ending | None = None,
    emergency: Ending | None = None,
    superseded: Ending | None = None,
    invalidated: Ending | None = None,
) -> ApprovalRequest:
    """Derive a request's status from its facts and the clock.

    A break-glass request was applied at once (``emergency``); its status is that of its review.
    An approved request not applied by its deadline is expired: an approval is for the state of
    the registry it was given in, not for days later.
    """
    ordered = tuple(sorted(signoffs, key=lambda s: (s.time, s.actor)))
    open_level, missing = level_progress(record.levels, ordered)
    # An applied fact wins: the registry was changed. A rejection or cancel can only sit beside
    # it when it raced the final sign-off (written after the applier read the facts); the audit
    # log then holds both, in order.
    if applied is not None:
        status = Status.APPLIED
    elif cancelled is not None:
        status = Status.CANCELLED
    elif any(s.decision == "reject" for s in ordered):
        status = Status.REJECTED
    elif invalidated is not None:
        status = Status.INVALIDATED
    elif superseded is not None:
        status = Status.SUPERSEDED
    elif expired is not None or (
        record.expires_at is not None and now >= record.expires_at and not record.break_glass
    ):
        status = Status.EXPIRED
    elif open_level is None:
        status = Status.APPROVED
    else:
        status = Status.PENDING
    return ApprovalRequest(
        record=record,
        signoffs=ordered,
        status=status,
        open_level=open_level if status is Status.PENDING else None,
        missing=missing if status is Status.PENDING else (),
        cancelled=cancelled,
        applied=applied,
        expired=expired,
        emergency=emergency,
        superseded=superseded,
        invalidated=invalidated,
        overdue=bool(
            record.break_glass
            and status is Status.PENDING
            and record.review_by is not None
            and now >= record.review_by
        ),
    )


@dataclass(frozen=True)
class Verdict:
    """May this actor do this? If so, the role and level it counts as; if not, why not."""

    allowed: bool
    reason: str = ""
    role: str | None = None
    level: int | None = None
    # a refusal that should be audited as a denied attempt (not for ended requests or repeats)
    kind: Literal["ok", "not-authorized", "invalid"] = "ok"


def _refuse(reason: str, kind: Literal["not-authorized", "invalid"] = "not-authorized") -> Verdict:
    return Verdict(False, reason, kind=kind)


def _ended(request: ApprovalRequest, verb: str = "signed") -> Verdict | None:
    if request.status.is_open:
        return None
    return _refuse(
        f"request {request.id} is {request.status.value} and can no longer be {verb}"
        + ("; file a new request" if request.status is not Status.APPLIED else ""),
        "invalid",
    )


def _assign(
    request: ApprovalRequest,
    actor: str,
    actor_roles: tuple[str, ...],
    members: Mapping[str, Sequence[str]] | None,
) -> str | None:
    """The requirement of the open level that ``actor``'s approval counts toward, or None.

    The first missing requirement, in policy order, whose role the actor holds, such that the
    rest of the request can still be signed by distinct other people. (Without that look-ahead,
    a person holding two roles could take the one only they could leave to someone else, and the
    request could never complete.) When no choice keeps the rest fillable, the first in policy
    order. Deterministic: the same facts give the same role.
    """
    candidates = [r.role for r in request.missing if r.role in actor_roles]
    if not candidates:
        return None
    if members is None or len(candidates) == 1:
        return candidates[0]
    level = request.open_level or 1
    later = [r.role for lvl in request.levels[level:] for r in lvl for _ in range(r.count)]
    excluded = {s.actor for s in request.signoffs} | {actor}
    if request.record.separation_of_duties:
        excluded.add(request.requester)
    for role in candidates:
        rest = [
            r.role for r in request.missing for _ in range(r.count - (1 if r.role == role else 0))
        ]
        if _fillable(rest + later, members, excluded):
            return role
    return candidates[0]


def decide_signoff(
    request: ApprovalRequest,
    actor: str,
    actor_roles: tuple[str, ...],
    decision: Decision,
    members: Mapping[str, Sequence[str]] | None = None,
) -> Verdict:
    """May ``actor`` (holding ``actor_roles``) approve or reject ``request``? And as what?

    Rules: an ended request takes no sign-off; a person signs a request once; with separation of
    duties the requester cannot sign; an approval must come from a role the open level still
    needs, and counts toward one requirement (see ``_assign``; ``members``, role -> people, lets
    it look ahead); a rejection may come from anyone holding a role named at any level of the
    rule.
    """
    ended = _ended(request)
    if ended is not None:
        return ended
    if request.status is Status.APPROVED:
        return _refuse(
            f"request {request.id} is already approved by every level; it only needs applying",
            "invalid",
        )
    if any(s.actor == actor for s in request.signoffs):
        return _refuse(
            f"{actor} has already signed request {request.id}; a person signs once", "invalid"
        )
    if request.record.separation_of_duties and actor == request.requester:
        return _refuse(
            f"{actor} filed request {request.id} and cannot sign it (separation of duties): "
            "ask another approver"
        )
    rule_roles = {r.role for lvl in request.levels for r in lvl}
    if decision == "reject":
        if not rule_roles.intersection(actor_roles):
            return _refuse(
                f"{actor} holds none of the roles of rule '{request.rule}' "
                f"({', '.join(sorted(rule_roles))}) and cannot reject request {request.id}"
            )
        return Verdict(True, role=next(r for r in actor_roles if r in rule_roles))
    level = request.open_level
    assert level is not None  # pending requests always have an open level
    role = _assign(request, actor, actor_roles, members)
    if role is not None:
        return Verdict(True, role=role, level=level)
    needed = ", ".join(str(m) for m in request.missing)
    later = [
        n
        for n, lvl in enumerate(request.levels, start=1)
        if n > level and any(r.role in actor_roles for r in lvl)
    ]
    if later:
        return _refuse(
            f"level {level} is open (needs {needed}); {actor} signs at level {later[0]}, "
            f"which opens once level {level} is signed"
        )
    return _refuse(
        f"{actor} holds no role that level {level} of request {request.id} still needs "
        f"(needs {needed}; {actor} holds {', '.join(actor_roles) or 'no role'})"
    )


def decide_cancel(request: ApprovalRequest, actor: str, is_admin: bool) -> Verdict:
    """May ``actor`` cancel ``request``? Only the requester or an admin, only while open."""
    ended = _ended(request, "cancelled")
    if ended is not None:
        return ended
    if actor != request.requester and not is_admin:
        return _refuse(
            f"only the requester ({request.requester}) or an admin may cancel request {request.id}"
        )
    return Verdict(True)


def _fillable(
    slots: list[str], members: Mapping[str, Sequence[str]], excluded: Collection[str]
) -> bool:
    """Can each slot (a role) be given a distinct member of its role, outside ``excluded``?

    Bipartite matching by augmenting paths; policies are small, so this is cheap.
    """
    match: dict[str, int] = {}

    def augment(slot: int, seen: set[str]) -> bool:
        for person in sorted(members.get(slots[slot], ())):
            if person in excluded or person in seen:
                continue
            seen.add(person)
            if person not in match or augment(match[person], seen):
                match[person] = slot
                return True
        return False

    return all(augment(i, set()) for i in range(len(slots)))


def eligible_signers(
    levels: tuple[tuple[Requirement, ...], ...],
    members: Mapping[str, Sequence[str]],
    excluded: str | None,
) -> str | None:
    """Return why the levels cannot be signed by distinct people other than ``excluded``, or None.

    Used when a request is filed: with separation of duties the requester's own membership does
    not count, and a policy that was satisfiable on paper may not be for this requester.
    """
    slots = [r.role for lvl in levels for r in lvl for _ in range(r.count)]
    people = {p for role in set(slots) for p in members.get(role, ()) if p != excluded}
    if not _fillable(slots, members, () if excluded is None else (excluded,)):
        roles = ", ".join(sorted(set(slots)))
        return (
            f"needs {len(slots)} distinct signers from {roles}, but only {len(people)} "
            f"people other than {excluded} hold those roles"
        )
    return None


def obvious_request(requests: Sequence[ApprovalRequest]) -> ApprovalRequest | None:
    """The request a step without a request id means, among ``requests`` (oldest first): the
    open one, else the one applied last, else the newest; None when there is none. With several
    open requests the first is returned: a caller that can meet several says which to pass."""
    for request in requests:
        if request.is_open:
            return request
    applied = [r for r in requests if r.applied is not None]
    if applied:
        return max(applied, key=lambda r: r.applied.time if r.applied else r.created_at)
    return requests[-1] if requests else None


__all__ = [
    "ApprovalRequest",
    "Decision",
    "Ending",
    "RequestRecord",
    "Requirement",
    "SignOff",
    "Status",
    "Target",
    "Verdict",
    "decide_cancel",
    "decide_signoff",
    "derive",
    "eligible_signers",
    "format_history",
    "level_progress",
    "obvious_request",
    "utcnow",
]
