"""Intent before effect: no audit event, no change; an apply that cannot be logged waits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from conftest import register_versions, unique_name
from mlflow_approvals import ApprovalClient, AuditUnavailable
from mlflow_approvals.audit import AuditStore
from mlflow_approvals.lifecycle import Status
from mlflow_approvals.tags import PREFIX


class Env:
    """A registry with one fresh model version, and ways to break and mend its audit store."""

    def __init__(self, uri: str, policy: dict[str, Any]) -> None:
        self.uri = uri
        self.policy = policy
        self.plain = MlflowClient(uri, uri)
        self.name = unique_name()
        (self.v,) = register_versions(uri, self.name, 1)

    def as_(self, actor: str, **kw: Any) -> ApprovalClient:
        return ApprovalClient(self.uri, self.uri, policy=self.policy, actor=actor, **kw)

    def stage(self) -> str:
        return str(self.plain.get_model_version(self.name, self.v).current_stage)

    def reserved(self) -> dict[str, str]:
        tags = self.plain.get_model_version(self.name, self.v).tags
        return {k: x for k, x in tags.items() if k.startswith(PREFIX)}

    def artifacts(self) -> Path:
        """The audit run's artifact folder (a local folder on a sqlite registry)."""
        run_id = self.as_("auditor").audit.run_ids(self.name, create=False)[0]
        return Path(self.plain.get_run(run_id).info.artifact_uri.removeprefix("file://"))

    def break_store(self) -> tuple[Path, Path]:
        """Make the audit store unwritable: its events folder becomes a file (tests run as
        root, so file modes would not stop a write). Returns what store_up needs."""
        events = self.artifacts() / "events"
        aside = events.with_name("events.aside")
        events.rename(aside)
        events.write_text("not a folder")
        return events, aside

    @staticmethod
    def store_up(events: Path, aside: Path) -> None:
        """Put the events folder back."""
        events.unlink()
        aside.rename(events)

    @contextmanager
    def store_down(self) -> Iterator[None]:
        moved = self.break_store()
        try:
            yield
        finally:
            self.store_up(*moved)


@pytest.fixture
def env(sqlite_uri: str, policy_dict: dict[str, Any]) -> Env:
    """A sqlite registry whose version 1 has a request signed at level 1 (dave's turn)."""
    e = Env(sqlite_uri, policy_dict)
    e.as_("alice").request_transition(e.name, e.v, "Production")
    e.as_("bob").approve(e.name, e.v)
    e.as_("carol").approve(e.name, e.v)
    return e


def test_store_down_before_final_signoff_changes_nothing(env):
    """With the audit store unwritable, the final sign-off raises; nothing recorded or applied."""
    before = env.reserved()
    with env.store_down(), pytest.raises(AuditUnavailable) as info:
        env.as_("dave").approve(env.name, env.v)
    assert "audit log" in str(info.value) and "nothing was changed" in str(info.value)
    assert info.value.get_http_status_code() == 409
    assert env.stage() == "None"
    assert env.reserved() == before
    assert env.as_("x").get_request(env.name, env.v).status is Status.PENDING
    request = env.as_("dave").approve(env.name, env.v)
    assert request.status is Status.APPLIED and env.stage() == "Production"
    assert env.as_("x").verify_audit(env.name).ok


def test_store_down_at_apply_leaves_request_approved_then_retry_applies(env):
    """The store failing between sign-off and apply: approved, not applied; apply() retries it."""
    dave = env.as_("dave")
    broken: list[tuple[Path, Path]] = []
    append = dave.audit.append

    def append_then_break(*args: Any, **kwargs: Any) -> str:
        digest = append(*args, **kwargs)  # the sign-off's event is written...
        if not broken:  # ...then the store goes away before the apply's event
            broken.append(env.break_store())
        return digest

    dave.audit.append = append_then_break  # type: ignore[method-assign]
    with pytest.raises(AuditUnavailable, match="could not be written"):
        dave.approve(env.name, env.v, comment="go")
    assert env.stage() == "None"
    request = env.as_("x").get_request(env.name, env.v)
    assert request.status is Status.APPROVED
    assert request.applied is None and len(request.signoffs) == 3
    env.store_up(*broken[0])
    applied = env.as_("erin").apply(env.name, env.v)
    assert applied.status is Status.APPLIED and env.stage() == "Production"
    report = env.as_("x").verify_audit(env.name)
    assert report.ok, report
    assert [line.type for line in report.events].count("stage.transitioned") == 1


def test_store_down_refuses_a_new_request(sqlite_uri, policy_dict):
    """Filing a request needs its event first: with the store down, no request fact is written."""
    env = Env(sqlite_uri, policy_dict)
    env.as_("alice").request_alias(env.name, env.v, "champion")  # creates the audit run
    before = env.reserved()
    with env.store_down(), pytest.raises(AuditUnavailable):
        env.as_("alice").request_transition(env.name, env.v, "Production")
    assert env.reserved() == before


def test_unreachable_store_on_a_real_server_blocks_the_apply(
    mlflow_server, policy_dict, monkeypatch
):
    """Against a real server, an unreachable audit store stops the apply; retrying applies it."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = mlflow_server.uri
    env = Env(uri, policy_dict)
    env.as_("alice").request_transition(env.name, env.v, "Production")
    env.as_("bob").approve(env.name, env.v)
    env.as_("carol").approve(env.name, env.v)
    dave = env.as_("dave")
    healthy = dave.audit
    # An audit store whose artifact location does not answer (nothing listens on port 9).
    unreachable = AuditStore(
        MlflowClient(uri, uri),
        experiment_name=f"unreachable-audit-{uuid.uuid4().hex[:8]}",
        artifact_location="http://127.0.0.1:9/audit",
    )
    append = healthy.append
    write_nowhere = unreachable.append

    def lost_store(event: Any, run_id: str | None = None) -> str:
        # the request's audit run no longer answers: write where nothing listens
        return write_nowhere(event)

    def append_then_lose_the_store(event: Any, run_id: str | None = None) -> str:
        digest = append(event, run_id=run_id)  # the sign-off's event is written...
        unreachable.append = lost_store  # type: ignore[method-assign]
        dave.audit = unreachable  # ...then the store is gone before the apply's event
        return digest

    healthy.append = append_then_lose_the_store  # type: ignore[method-assign]
    with pytest.raises(AuditUnavailable, match="could not be written"):
        dave.approve(env.name, env.v)
    assert env.stage() == "None"
    assert env.as_("x").get_request(env.name, env.v).status is Status.APPROVED
    assert env.as_("dave").apply(env.name, env.v).status is Status.APPLIED
    assert env.stage() == "Production"
    assert env.as_("x").verify_audit(env.name).ok


def test_removed_audit_run_folder_blocks_the_apply(env):
    """Replacing the whole artifact folder of the audit run with a file blocks the step too."""
    root = env.artifacts()
    aside = root.with_name(root.name + ".aside")
    root.rename(aside)
    root.write_text("gone")
    try:
        with pytest.raises(AuditUnavailable):
            env.as_("dave").approve(env.name, env.v)
        assert env.stage() == "None"
    finally:
        root.unlink()
        aside.rename(root)
