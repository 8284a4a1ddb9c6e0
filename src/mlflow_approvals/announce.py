"""Telling the policy's subscriptions what a lifecycle step just did.

The engine calls :meth:`Announcer.announce` at the end of every step. The announcer builds the
:class:`~mlflow_approvals.notify.Notice` (who acted, the status, who may sign next, the audit
event's hash, a link to the version in the MLflow UI), hands it to the policy's
:class:`~mlflow_approvals.notify.Notifier`, and records a delivery that still fails after its
retries as a ``notification.failed`` audit event. It never raises into the step it reports and
waits at most the notifier's budget.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote as url_quote

from mlflow_approvals.audit import make_event
from mlflow_approvals.lifecycle import SYSTEM, Actor, ApprovalRequest, Status

if TYPE_CHECKING:
    from mlflow_approvals.audit import AuditStore
    from mlflow_approvals.notify import Notifier
    from mlflow_approvals.policy import Policy

__all__ = ["Announcer", "event_of", "next_signers", "ui_link"]

_log = logging.getLogger(__name__)


def event_of(type: str, request: ApprovalRequest) -> str | None:
    """The hash of the audit event a notice reports, where a fact holds it."""
    if type == "request.created":
        return request.record.event
    if type.startswith("signoff.") and request.signoffs:
        return max(request.signoffs, key=lambda s: s.time).event
    for ending in (
        request.applied,
        request.cancelled,
        request.expired,
        request.superseded,
        request.invalidated,
    ):
        if ending is not None:
            return ending.event
    return request.record.event


def ui_link(base: str | None, name: str, version: str) -> str | None:
    """The model version's page in the MLflow UI (``MLFLOW_APPROVALS_UI_URL`` first)."""
    base = os.environ.get("MLFLOW_APPROVALS_UI_URL") or base
    if not base:
        return None
    return f"{base.rstrip('/')}/#/models/{url_quote(name, safe='')}/versions/{version}"


def next_signers(request: ApprovalRequest, policy: Policy) -> dict[str, Any] | None:
    """Who may sign the open level now: each role still needed, with its eligible members."""
    if request.status is not Status.PENDING or request.open_level is None:
        return None
    signed = {s.actor for s in request.signoffs}
    excluded = signed | ({request.requester} if request.record.separation_of_duties else set())
    roles = {
        m.role: [p for p in policy.roles.get(m.role, ()) if p not in excluded]
        for m in request.missing
    }
    return {"level": request.open_level, "roles": roles}


class _Owner(Protocol):
    """What an announcer reads from its engine, at each announcement (either may be replaced)."""

    policy: Policy
    audit: AuditStore
    clock: Callable[[], datetime]
    ui_base: str | None


class Announcer:
    """The notifications of one engine: its policy's subscriptions, its audit sink, its clock.

    The notifier is rebuilt when the policy's subscriptions change.
    """

    def __init__(self, owner: _Owner) -> None:
        self._owner = owner
        self._notifier: Notifier | None = None
        self._notifier_for: Any = None

    @property
    def notifier(self) -> Notifier | None:
        """Delivers the policy's notifications (None when it subscribes nothing)."""
        subscriptions = self._owner.policy.notifications
        if not subscriptions:
            return None
        if self._notifier is None or self._notifier_for is not subscriptions:
            from mlflow_approvals.notify import Notifier

            self._notifier = Notifier(subscriptions, self._failed)
            self._notifier_for = subscriptions
        return self._notifier

    def announce(
        self, type: str, request: ApprovalRequest, actor: Actor, comment: str | None
    ) -> ApprovalRequest:
        """Tell the subscriptions that want it what just happened; return ``request``.

        Never raises, and waits at most the notifier's budget: a notification does not fail
        or hold up the step it reports (a failed delivery is audited instead).
        """
        notifier = self.notifier
        if notifier is None:
            return request
        try:
            from mlflow_approvals.notify import Notice

            target = request.record.target
            notifier.publish(
                Notice(
                    type=type,
                    name=request.name,
                    version=request.version,
                    actor=actor.id,
                    display_name=actor.display_name,
                    time=self._owner.clock(),
                    request_id=request.id or None,
                    target={"kind": target.kind, "value": target.value, "action": target.action},
                    status=request.status.value,
                    comment=comment,
                    missing=tuple({"role": m.role, "count": m.count} for m in request.missing),
                    next=next_signers(request, self._owner.policy),
                    event=event_of(type, request),
                    link=ui_link(self._owner.ui_base, request.name, request.version),
                )
            )
            notifier.flush()
        except Exception as exc:  # a notification never breaks a step
            _log.warning("could not notify %s on %s: %s", type, request.name, exc)
        return request

    def _failed(self, subscription: Any, notice: Any, error: str) -> None:
        """Record a delivery that failed after its retries, so nothing is silently lost."""
        event = make_event(
            type="notification.failed",
            name=notice.name,
            version=notice.version,
            actor=SYSTEM.id,
            display_name=SYSTEM.display_name,
            comment=f"notification '{subscription.name}' of {notice.type} failed: {error}",
            request_id=notice.request_id,
            policy_hash=self._owner.policy.content_hash,
            time=self._owner.clock(),
            extra={"subscription": subscription.name, "notice": notice.type},
        )
        self._owner.audit.append(event)
