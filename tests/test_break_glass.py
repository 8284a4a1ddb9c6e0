"""Break-glass: an emergency change applied at once, audited, and reviewed by the rule's levels."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from conftest import register_versions, unique_name
from mlflow_approvals import ApprovalClient
from mlflow_approvals.audit import TYPE_PREFIX
from mlflow_approvals.errors import InvalidRequest, NotAuthorized
from mlflow_approvals.lifecycle import Status, utcnow
from mlflow_approvals.policy import PolicyInvalid, parse_policy
from mlflow_approvals.testing import EXAMPLE_POLICY


class Env:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.policy = copy.deepcopy(EXAMPLE_POLICY)
        self.name = unique_name("fraud-bg")
        self.versions = register_versions(uri, self.name, 2)

    def as_(self, actor: str) -> ApprovalClient:
        return ApprovalClient(self.uri, self.uri, policy=self.policy, actor=actor)

    def review(self, v: str) -> Any:
        self.as_("carol").approve(self.name, v)
        self.as_("bob").approve(self.name, v)
        return self.as_("dave").approve(self.name, v)


@pytest.fixture
def env(tracking_uri: str) -> Env:
    return Env(tracking_uri)


def test_break_glass_applies_at_once_and_opens_a_review(env: Env) -> None:
    """root's break-glass puts the version in Production now; the review waits on level 1."""
    v = env.versions[0]
    review = env.as_("root").break_glass(env.name, v, stage="Production", reason="rollback")
    assert env.as_("x").get_model_version(env.name, v).current_stage == "Production"
    assert review.break_glass and review.status is Status.PENDING and review.open_level == 1
    assert review.emergency is not None and review.emergency.actor == "root"


@pytest.mark.rest
def test_break_glass_is_audited_and_the_log_verifies(env: Env) -> None:
    """The emergency change is an anchored stage.transitioned event marked break-glass."""
    v = env.versions[0]
    env.as_("root").break_glass(env.name, v, stage="Production", reason="rollback")
    report = env.as_("x").verify_audit(env.name)
    assert report.ok, report.lines()
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        events = [json.loads(raw) for _, raw in env.as_("x").audit.read(env.name, tmp)]
    applied = [e for e in events if e["type"] == TYPE_PREFIX + "stage.transitioned"]
    assert applied[0]["data"]["break_glass"] is True
    assert applied[0]["data"]["comment"] == "rollback"


def test_only_the_named_roles_may_break_glass(env: Env) -> None:
    """dave (business-owner) is refused; nothing moves."""
    v = env.versions[0]
    with pytest.raises(NotAuthorized, match="break-glass to admin only"):
        env.as_("dave").break_glass(env.name, v, stage="Production", reason="urgent")
    assert env.as_("x").get_model_version(env.name, v).current_stage == "None"


def test_break_glass_needs_a_reason(env: Env) -> None:
    """An empty reason is refused before anything is written."""
    with pytest.raises(InvalidRequest, match="reason"):
        env.as_("root").break_glass(env.name, env.versions[0], stage="Production", reason=" ")


def test_a_rule_without_break_glass_refuses_it(env: Env) -> None:
    """Without `break_glass` in the rule, nobody may apply at once."""
    del env.policy["rules"][0]["break_glass"]
    with pytest.raises(NotAuthorized, match="allows no break-glass"):
        env.as_("root").break_glass(env.name, env.versions[0], stage="Production", reason="x")


def test_an_ungated_target_needs_no_break_glass(env: Env) -> None:
    """Break-glass on a stage no rule gates is refused with the direct way named."""
    with pytest.raises(InvalidRequest, match="change it directly"):
        env.as_("root").break_glass(env.name, env.versions[0], stage="Staging", reason="x")


def test_completed_review_records_it_and_reconcile_passes(env: Env) -> None:
    """Signed by every level, the review ends applied; reconcile finds nothing to report."""
    v = env.versions[0]
    env.as_("root").break_glass(env.name, v, stage="Production", reason="rollback")
    done = env.review(v)
    assert done.status is Status.APPLIED and not done.review_failed
    report = env.as_("x").reconcile(env.name)
    assert report.ok, report.lines
    assert env.as_("x").verify_audit(env.name).ok


def test_overdue_review_fails_reconcile_until_signed(env: Env) -> None:
    """Past review_within the review is listed as failed and reconcile fails; a late review
    clears it."""
    v = env.versions[0]
    env.as_("root").break_glass(env.name, v, stage="Production", reason="rollback")
    late = env.as_("x")
    late.engine.clock = lambda: utcnow() + timedelta(hours=25)
    assert [r.version for r in late.failed_reviews(env.name)] == [v]
    report = late.reconcile(env.name)
    assert not report.ok and report.reviews[0].what == "review"
    assert "overdue" in report.lines[-1]
    env.review(v)
    assert late.failed_reviews(env.name) == []
    assert late.reconcile(env.name).ok


def test_rejected_review_fails_reconcile(env: Env) -> None:
    """A review rejected by a reviewer stays a failure reconcile reports."""
    v = env.versions[0]
    env.as_("root").break_glass(env.name, v, stage="Production", reason="rollback")
    env.as_("carol").reject(env.name, v, "this was not an emergency")
    report = env.as_("x").reconcile(env.name)
    assert not report.ok and "rejected" in report.reviews[0].actual


def test_completing_a_review_never_moves_the_registry(env: Env) -> None:
    """A review completed after the target moved on leaves the registry where it is now."""
    v1, v2 = env.versions
    env.as_("root").break_glass(env.name, v1, stage="Production", reason="first")
    env.as_("root").break_glass(
        env.name, v2, stage="Production", reason="second", archive_existing_versions=True
    )
    env.review(v1)
    client = env.as_("x")
    assert client.get_model_version(env.name, v1).current_stage == "Archived"
    assert client.get_model_version(env.name, v2).current_stage == "Production"


def test_policy_refuses_an_undefined_break_glass_role() -> None:
    """A break_glass role that is not defined is named with its field path."""
    policy = copy.deepcopy(EXAMPLE_POLICY)
    policy["rules"][0]["break_glass"]["roles"] = ["oncall"]
    with pytest.raises(PolicyInvalid, match=r"rules\[0\]\.break_glass\.roles\[0\]"):
        parse_policy(policy)


def test_policy_refuses_a_bad_review_deadline() -> None:
    """review_within must be a duration."""
    policy = copy.deepcopy(EXAMPLE_POLICY)
    policy["rules"][0]["break_glass"]["review_within"] = "soon"
    with pytest.raises(PolicyInvalid, match="review_within"):
        parse_policy(policy)


def test_a_break_glass_review_cannot_be_cancelled(env: Env) -> None:
    """Neither the breaker nor an admin escapes the review by cancelling it."""
    v = env.versions[0]
    env.as_("root").break_glass(env.name, v, stage="Production", reason="rollback")
    with pytest.raises(NotAuthorized, match="cannot be cancelled"):
        env.as_("root").cancel(env.name, v)
    assert env.as_("x").get_request(env.name, v).is_open
