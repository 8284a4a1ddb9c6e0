"""The pure lifecycle decisions: status derivation and who may sign what (no MLflow)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from mlflow_approvals.lifecycle import (
    Ending,
    RequestRecord,
    Requirement,
    SignOff,
    Status,
    Target,
    decide_cancel,
    decide_signoff,
    derive,
    eligible_signers,
    level_progress,
    obvious_request,
)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
LEVELS = (
    (Requirement("ds", 1), Requirement("mle", 1)),
    (Requirement("owner", 1),),
)


def record(**overrides: object) -> RequestRecord:
    base: dict[str, object] = dict(
        id="abcdefabcdef",
        name="m",
        version="1",
        target=Target("stage", "Production"),
        requester="alice",
        created_at=T0,
        comment=None,
        rule="r",
        levels=LEVELS,
        separation_of_duties=True,
        expires_at=T0 + timedelta(days=1),
        policy_hash="sha256:x",
    )
    base.update(overrides)
    return RequestRecord(**base)  # type: ignore[arg-type]


def approve(actor: str, role: str, level: int, minute: int = 1) -> SignOff:
    return SignOff(actor, "approve", role, level, None, T0 + timedelta(minutes=minute))


def test_fresh_request_is_pending_at_level_one():
    """With no sign-offs, level 1 is open and needs everything it lists."""
    r = derive(record(), (), T0)
    assert (r.status, r.open_level) == (Status.PENDING, 1)
    assert r.missing == LEVELS[0]


def test_all_levels_signed_is_approved_until_applied():
    """Every level satisfied and no applied fact: approved (not applied)."""
    signs = (approve("bob", "ds", 1), approve("carol", "mle", 1), approve("dave", "owner", 2))
    assert derive(record(), signs, T0).status is Status.APPROVED
    applied = Ending("dave", T0)
    assert derive(record(), signs, T0, applied=applied).status is Status.APPLIED


def test_surplus_signoffs_do_not_count_toward_other_requirements():
    """Two approvals as ds do not satisfy the mle requirement."""
    open_level, missing = level_progress(LEVELS, (approve("a", "ds", 1), approve("b", "ds", 1)))
    assert open_level == 1
    assert missing == (Requirement("mle", 1),)


def test_deadline_passed_expires_an_approved_request_not_yet_applied():
    """Expiry ends a pending request and an approved one whose apply never happened."""
    late = T0 + timedelta(days=2)
    assert derive(record(), (), late).status is Status.EXPIRED
    signs = (approve("bob", "ds", 1), approve("carol", "mle", 1), approve("dave", "owner", 2))
    assert derive(record(), signs, T0 + timedelta(hours=1)).status is Status.APPROVED
    assert derive(record(), signs, late).status is Status.EXPIRED


def test_rejection_wins_over_approvals():
    """One rejection makes the request rejected whatever else was signed."""
    signs = (approve("bob", "ds", 1), SignOff("carol", "reject", "mle", None, "no", T0))
    assert derive(record(), signs, T0).status is Status.REJECTED


def test_cancel_wins_over_everything():
    """A cancel fact makes the request cancelled."""
    assert derive(record(), (), T0, cancelled=Ending("alice", T0)).status is Status.CANCELLED


def test_signoff_counts_toward_first_missing_requirement_in_policy_order():
    """A person holding both roles of the open level counts as the first one listed."""
    verdict = decide_signoff(derive(record(), (), T0), "bob", ("mle", "ds"), "approve")
    assert (verdict.allowed, verdict.role, verdict.level) == (True, "ds", 1)


def test_out_of_turn_names_the_open_level():
    """An approver of level 2 is refused while level 1 is open, and told which level is open."""
    verdict = decide_signoff(derive(record(), (), T0), "dave", ("owner",), "approve")
    assert not verdict.allowed
    assert verdict.kind == "not-authorized"
    assert "level 1 is open" in verdict.reason


def test_self_approval_is_refused_under_separation_of_duties():
    """The requester cannot sign; with separation off, they can."""
    assert not decide_signoff(derive(record(), (), T0), "alice", ("ds",), "approve").allowed
    relaxed = derive(record(separation_of_duties=False), (), T0)
    assert decide_signoff(relaxed, "alice", ("ds",), "approve").allowed


def test_cancel_only_by_requester_or_admin():
    """Someone else's request can be cancelled by an admin only."""
    pending = derive(record(), (), T0)
    assert decide_cancel(pending, "alice", False).allowed
    assert not decide_cancel(pending, "bob", False).allowed
    assert decide_cancel(pending, "bob", True).allowed


def test_eligible_signers_excludes_the_requester():
    """Levels needing both ds members cannot be filled when one of them is the requester."""
    levels = ((Requirement("ds", 2),),)
    assert eligible_signers(levels, {"ds": ("alice", "bob")}, None) is None
    assert "distinct signers" in (eligible_signers(levels, {"ds": ("alice", "bob")}, "alice") or "")


def test_eligible_signers_needs_distinct_people_across_roles():
    """One person in two roles cannot fill both requirements."""
    levels = ((Requirement("ds", 1), Requirement("mle", 1)),)
    assert eligible_signers(levels, {"ds": ("x",), "mle": ("x",)}, None) is not None
    assert eligible_signers(levels, {"ds": ("x",), "mle": ("x", "y")}, None) is None


def test_two_role_signer_leaves_the_requirement_others_can_fill():
    """A person holding both roles takes the one nobody else could fill, so the request can end."""
    members = {"ds": ("x", "y"), "mle": ("x",), "owner": ("dave",)}
    verdict = decide_signoff(derive(record(), (), T0), "x", ("ds", "mle"), "approve", members)
    assert (verdict.role, verdict.level) == ("mle", 1)


def test_two_role_signer_without_lookahead_counts_in_policy_order():
    """Without role membership to look ahead with, the first requirement in policy order wins."""
    verdict = decide_signoff(derive(record(), (), T0), "x", ("ds", "mle"), "approve")
    assert verdict.role == "ds"


def test_applied_wins_over_a_rejection_that_raced_it():
    """A rejection written beside an applied fact cannot hide that the registry was changed."""
    signs = (approve("bob", "ds", 1), approve("carol", "mle", 1), approve("dave", "owner", 2))
    late = (*signs, SignOff("erin", "reject", "mle", None, "no", T0 + timedelta(minutes=9)))
    applied = Ending("dave", T0 + timedelta(minutes=3))
    assert derive(record(), late, T0, applied=applied).status is Status.APPLIED


def test_ended_request_cannot_be_cancelled():
    """Cancelling an ended request is refused as invalid, saying it can no longer be cancelled."""
    verdict = decide_cancel(derive(record(), (), T0, applied=Ending("dave", T0)), "alice", False)
    assert (verdict.allowed, verdict.kind) == (False, "invalid")
    assert "can no longer be cancelled" in verdict.reason


def _at(rid: str, minute: int, applied: int | None = None, cancelled: bool = False) -> Any:
    """A request filed at ``minute``; applied at minute ``applied``; or cancelled."""
    when = T0 + timedelta(minutes=minute)
    done = None if applied is None else Ending("dave", T0 + timedelta(minutes=applied))
    cancel = Ending("alice", when) if cancelled else None
    return derive(record(id=rid, created_at=when), (), when, applied=done, cancelled=cancel)


def test_obvious_request_is_the_open_one_first():
    """Without a request id, the open request is meant, even beside later ended ones."""
    requests = [_at("a" * 12, 1, applied=2), _at("b" * 12, 3), _at("c" * 12, 4, cancelled=True)]
    assert obvious_request(requests) is requests[1]


def test_obvious_request_is_the_one_applied_last_when_none_is_open():
    """With nothing open, the request applied last is meant, not a newer cancelled one."""
    requests = [
        _at("a" * 12, 1, applied=9),
        _at("b" * 12, 2, applied=3),
        _at("c" * 12, 4, cancelled=True),
    ]
    assert obvious_request(requests) is requests[0]


def test_obvious_request_is_the_newest_else_none():
    """With nothing open or applied, the newest is meant; with no request at all, none."""
    requests = [_at("a" * 12, 1, cancelled=True), _at("b" * 12, 2, cancelled=True)]
    assert obvious_request(requests) is requests[1]
    assert obvious_request([]) is None
