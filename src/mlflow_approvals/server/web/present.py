"""What the approvals pages show, decided from the facts: pure, no Flask, no I/O.

Who may sign now is asked of the same functions the engine asks before it accepts a sign-off
(:func:`~mlflow_approvals.engine.unbacked` and :func:`~mlflow_approvals.lifecycle.decide_signoff`),
so a button is shown exactly when the engine would accept the click. The server still refuses
a post the page would not have offered: the page decides what to show, the engine what happens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mlflow_approvals.engine import unbacked
from mlflow_approvals.lifecycle import ApprovalRequest, SignOff, Status, Verdict, decide_signoff
from mlflow_approvals.policy import Policy

__all__ = [
    "Inbox",
    "LevelRow",
    "Signing",
    "inbox",
    "last_activity",
    "level_rows",
    "may_sign",
    "printed",
    "time_text",
    "who_may_sign",
]

RECENT = 20
"""How many ended requests the inbox lists under "Recent decisions"."""


@dataclass(frozen=True)
class Signing:
    """What the signed-in user may do on a request now, and why not when they may not."""

    approve: bool
    reject: bool
    reason: str  # why neither (empty when either is allowed)

    @property
    def any(self) -> bool:
        return self.approve or self.reject


def _verdict(policy: Policy, request: ApprovalRequest, actor: str, decision: Any) -> Verdict:
    return decide_signoff(
        request, actor, tuple(policy.roles_of(actor)), decision, members=policy.roles
    )


def may_sign(policy: Policy, request: ApprovalRequest, actor: str) -> Signing:
    """May ``actor`` approve or reject ``request`` now, as the engine would decide?"""
    if request.status is not Status.PENDING:
        return Signing(False, False, f"this request is {request.status.value}")
    approve = _verdict(policy, request, actor, "approve")
    reject = _verdict(policy, request, actor, "reject")
    problem = unbacked(request.record, policy)
    may_approve = approve.allowed and problem is None
    reason = ""
    if not may_approve and not reject.allowed:
        reason = problem or approve.reason
    return Signing(may_approve, reject.allowed, reason)


def who_may_sign(policy: Policy, request: ApprovalRequest) -> dict[str, list[str]]:
    """Each role the open level still needs -> the people whose approval the engine would
    accept now (asked of ``decide_signoff`` person by person)."""
    if request.status is not Status.PENDING:
        return {}
    found: dict[str, list[str]] = {}
    for need in request.missing:
        found[need.role] = [
            person
            for person in policy.roles.get(need.role, ())
            if _verdict(policy, request, person, "approve").allowed
        ]
    return found


def last_activity(request: ApprovalRequest) -> datetime:
    """When anything last happened on ``request`` (filing, a sign-off, its ending)."""
    times = [request.created_at, *(s.time for s in request.signoffs)]
    for ending in (
        request.applied,
        request.cancelled,
        request.expired,
        request.superseded,
        request.invalidated,
    ):
        if ending is not None:
            times.append(ending.time)
    return max(times)


@dataclass(frozen=True)
class Inbox:
    """The inbox's three lists, each newest first."""

    mine: list[ApprovalRequest]  # open, and the user's approval would count now
    other_open: list[ApprovalRequest]
    recent: list[ApprovalRequest]  # ended, the latest RECENT


def inbox(policy: Policy, requests: Iterable[ApprovalRequest], actor: str) -> Inbox:
    """Sort ``requests`` into what ``actor`` may sign now, the other open ones, and the recent
    decisions."""
    mine: list[ApprovalRequest] = []
    other: list[ApprovalRequest] = []
    ended: list[ApprovalRequest] = []
    for request in requests:
        if not request.id:
            continue
        if request.is_open:
            # "Yours to sign" means the open level needs you: anyone holding a role of the rule
            # may reject at any time, which does not make every request theirs.
            (mine if may_sign(policy, request, actor).approve else other).append(request)
        else:
            ended.append(request)
    newest = sorted(ended, key=last_activity, reverse=True)[:RECENT]
    return Inbox(
        sorted(mine, key=lambda r: r.created_at, reverse=True),
        sorted(other, key=lambda r: r.created_at, reverse=True),
        newest,
    )


@dataclass(frozen=True)
class LevelRow:
    """One level of a request: its requirements, the approvals counted toward it, and what it
    still needs (only for the open level)."""

    number: int
    requirements: str  # "1 of data-scientist, 1 of ml-engineer"
    signoffs: list[SignOff]
    state: str  # "signed", "open", "waiting" (a later level) or "not reached"
    missing: str


def level_rows(request: ApprovalRequest) -> list[LevelRow]:
    """Each level with its approvals, in order (rejections are shown apart)."""
    rows = []
    for number, level in enumerate(request.levels, start=1):
        signed = [s for s in request.signoffs if s.decision == "approve" and s.level == number]
        if request.open_level == number:
            state = "open"
        elif request.open_level is not None and number > request.open_level:
            state = "waiting"
        elif request.fully_signed or (
            request.open_level is not None and number < request.open_level
        ):
            state = "signed"
        else:
            state = "not reached"
        missing = ", ".join(str(m) for m in request.missing) if state == "open" else ""
        rows.append(LevelRow(number, ", ".join(str(r) for r in level), signed, state, missing))
    return rows


def printed(actor: str, display_name: str | None) -> str:
    """The printed name beside a signature, with the user id when they differ (§11.50)."""
    name = display_name or actor
    return name if name == actor else f"{name} ({actor})"


def time_text(t: datetime | None) -> str:
    """A date and time as the pages print it (UTC, to the second)."""
    return "" if t is None else t.strftime("%Y-%m-%d %H:%M:%S UTC")


def rejections(request: ApprovalRequest) -> Sequence[SignOff]:
    """The rejections on ``request`` (at most one ends it; a race may record more)."""
    return [s for s in request.signoffs if s.decision == "reject"]
