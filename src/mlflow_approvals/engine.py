"""The lifecycle steps (file, sign, cancel, apply, expire, index) against the ports.

Both front ends drive this one engine: ``ApprovalClient`` over the store behind ``MlflowClient``,
with the caller's claimed identity; the server app over its own registry store, with the
authenticated user. The actor is an argument of every step, never a property of the engine, so
one engine per server worker serves every user.

Every step follows the same order, *intent before effect*: read the model version (one round trip
returns its tags, stage and aliases), decide with the pure lifecycle code, write the audit event,
then write the fact (or change the registry). If the audit store cannot be written, nothing else
is.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from mlflow_approvals import tags as T
from mlflow_approvals.announce import Announcer
from mlflow_approvals.audit import AuditStore, deterministic_id, make_event
from mlflow_approvals.errors import (
    AlreadyInEffect,
    ApprovalPending,
    ChecksFailed,
    InvalidRequest,
    ModelVersionNotFound,
    NotAuthorized,
    RequestNotFound,
)
from mlflow_approvals.lifecycle import (
    SYSTEM,
    SYSTEM_ACTOR,
    Actor,
    ApprovalRequest,
    Decision,
    Ending,
    RequestRecord,
    Requirement,
    SignOff,
    Status,
    Target,
    Verdict,
    decide_cancel,
    decide_signoff,
    eligible_signers,
    obvious_request,
    ungated,
    utcnow,
)
from mlflow_approvals.policy import Policy, Rule
from mlflow_approvals.ports import EvidenceSource, Registry
from mlflow_approvals.sagemaker import (
    APPROVED,
    PENDING,
    REJECTED,
    PackageGate,
    approval_description,
    rejection_description,
)
from mlflow_approvals.targets import (
    event_kind,
    is_in_effect,
    live_value,
    same_target,
    target_value,
    validate_alias,
)

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from mlflow_approvals.checks import CheckReport
    from mlflow_approvals.evidence import Evidence
    from mlflow_approvals.notify import Notifier

_log = logging.getLogger(__name__)

__all__ = ["SYSTEM", "SYSTEM_ACTOR", "Engine", "not_found", "pending_error", "unbacked"]


def not_found(
    exc: Exception, name: str, version: str | None, alias: str | None = None
) -> Exception:
    """``exc`` from the registry as ModelVersionNotFound when it says something does not exist."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    if not isinstance(exc, MlflowException):
        return exc
    # A missing alias is INVALID_PARAMETER_VALUE ("alias ... not found") on some stores.
    missing = exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST) or (
        alias is not None and "not found" in exc.message.lower()
    )
    if not missing:
        return exc
    if alias is not None:
        what = f"alias '{alias}' of registered model '{name}'"
    elif version is not None:
        what = f"version {version} of registered model '{name}'"
    else:
        what = f"registered model '{name}'"
    return ModelVersionNotFound(
        f"{what} does not exist: check the name and version (MLflow said: {exc.message})"
    )


def pending_error(request: ApprovalRequest) -> ApprovalPending:
    """The ApprovalPending raised when a gated change was turned into a request."""
    return ApprovalPending(
        f"{request.describe()}. Nothing was changed yet: the promotion is applied when the "
        "last level signs off (see ApprovalPending.request).",
        request,
    )


def unbacked(record: RequestRecord, policy: Policy) -> str | None:
    """Why the policy does not back ``record`` (None when it does).

    A request fact is not trusted for what it needs: the rule it names must be the rule that
    gates its target under the policy now, and its levels, separation of duties and deadline
    must be at least that rule's. A break-glass review is not vetted: its change happened, and
    completing the review changes nothing in the registry.
    """
    if record.break_glass:
        return None
    target = record.target
    rule = policy.match(record.name, target.kind, target.value)
    why = f"request {record.id} cannot be applied: "
    if rule is None or rule.name != record.rule:
        now = "no rule" if rule is None else f"rule '{rule.name}'"
        return (
            f"{why}it was filed under rule '{record.rule}', but {now} of the policy gates "
            f"{target} of '{record.name}' now. File a new request"
        )
    asked = [{q.role: q.count for q in lvl} for lvl in record.levels]
    for i, level in enumerate(rule.levels):
        for q in level:
            if i >= len(asked) or asked[i].get(q.role, 0) < q.count:
                return (
                    f"{why}it asks for less than rule '{rule.name}' (level {i + 1} needs "
                    f"{q.count} of {q.role}). File a new request"
                )
    if rule.separation_of_duties and not record.separation_of_duties:
        return f"{why}rule '{rule.name}' asks for separation of duties, and it does not"
    if rule.sagemaker is not None and not record.sagemaker_arn:
        return (
            f"{why}rule '{rule.name}' drives a SageMaker model package, and the request "
            "recorded none when it was filed. File a new request"
        )
    if rule.expires_after is not None and (
        record.expires_at is None or record.expires_at > record.created_at + rule.expires_after
    ):
        return f"{why}its deadline is later than rule '{rule.name}' allows"
    return None


def _assessed(
    report: CheckReport, evidence: Evidence | None, changes: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The assessment as an audit event records it (what the signers sign over)."""
    found: dict[str, Any] = {}
    if report.results:
        found["checks"] = report.to_dict()
    if evidence is not None:
        found["evidence"] = evidence.to_dict()
    if changes is not None:
        found["changes"] = dict(changes)
    return found


class Engine:
    """The approval lifecycle over a registry port and an audit sink, under a policy.

    Args:
        registry: the registry port (see :class:`mlflow_approvals.ports.Registry`).
        audit: where audit events go.
        policy: the approval policy.
        clock: the time source (UTC, millisecond precision); tests pass their own.
        evidence: where the checks and the evidence digest read a version's run and files
            (None: no checks can pass, and requests carry no digest).
        ui_base: the MLflow UI's address, for links in notifications (None: no link unless
            ``MLFLOW_APPROVALS_UI_URL`` is set).
        packages: reaches the SageMaker model packages of rules with ``sagemaker:`` (None: boto3
            with each rule's region, profile and role; see docs/sagemaker.md).
    """

    def __init__(
        self,
        registry: Registry,
        audit: AuditStore,
        policy: Policy,
        clock: Callable[[], datetime] = utcnow,
        evidence: EvidenceSource | None = None,
        ui_base: str | None = None,
        packages: PackageGate | None = None,
    ) -> None:
        from mlflow_approvals.assess import Assessor

        self.registry = registry
        self.audit = audit
        self.policy = policy
        self.clock = clock
        self.assess = Assessor(evidence, registry, lambda: self.clock())
        self.ui_base = ui_base
        self.packages = packages or PackageGate()
        self.announcer = Announcer(self)

    # ------------------------------------------------------------------ gating ------------
    def rule_for(self, name: str, kind: str, value: str) -> Rule | None:
        """The rule gating this target; None when ungated. Raises NotAuthorized under deny."""
        gate = self.policy.gate(name, kind, value)  # type: ignore[arg-type]
        if gate.denied:
            raise NotAuthorized(gate.reason)
        return gate.rule

    # ------------------------------------------------------------------ steps -------------
    def file(
        self,
        actor: Actor,
        name: str,
        version: str,
        target: Target,
        comment: str | None,
        mv: ModelVersion | None = None,
    ) -> ApprovalRequest:
        """File a request for ``target`` on ``name`` v``version`` (applied at once if ungated).

        An open request for the same target is returned instead of a second one.
        """
        return self.filed(actor, name, version, target, comment, mv)[0]

    def filed(
        self,
        actor: Actor,
        name: str,
        version: str,
        target: Target,
        comment: str | None,
        mv: ModelVersion | None = None,
    ) -> tuple[ApprovalRequest, bool]:
        """As :meth:`file`, and whether this call filed (or applied) it: False when an open
        request for the target was returned. A target is its stage or alias: an open request
        differing only in ``archive_existing_versions`` is returned, never a second one. A
        target the registry already holds raises AlreadyInEffect (nothing is filed).
        """
        comment = T.check_comment(comment)
        rule = self.rule_for(name, target.kind, target.value)
        if mv is None:
            mv, facts = self.read(name, version)
        else:
            facts = T.VersionFacts(name, version, mv.tags or {})
        if rule is None:
            return self._apply_ungated(actor, mv, target), True
        now = self.clock()
        self._record_expiries(mv, facts, now)
        for existing in facts.all_requests(now):
            if existing.is_open and same_target(existing.record.target, target):
                self._settle_index(mv, facts)  # a crash may have lost it after the request fact
                return existing, False
        self._check_not_already(mv, target)
        package = self.packages.linked(rule, name, version, mv.tags or {})
        seen = self.assess.of(mv)  # the step's reads of the version's files and runs, once
        report = seen.checks(rule, target)
        if not report.passed:
            raise self._checks_failed(actor, mv, facts, None, report, target, rule)
        holders = self._holders(mv, target)
        evidence = seen.evidence()
        record = self._new_record(
            actor,
            name,
            version,
            target,
            comment,
            rule,
            now,
            holders=holders,
            checks=report.results,
            digest=None if evidence is None else evidence.digest,
            changes=seen.changes(holders),
            sagemaker_arn=package,
        )
        held = self._package(actor, mv, facts, record, PENDING, "")
        digest = self.emit(
            actor,
            mv,
            facts,
            "request.created",
            record,
            comment=comment,
            time=now,
            parents=held,
            before=live_value(mv, target),
            after=target_value(target, version),
            extra={
                "target": {
                    "kind": target.kind,
                    "value": target.value,
                    "action": target.action,
                    "archive_existing_versions": target.archive_existing_versions,
                },
                **_assessed(report, evidence, record.changes),
            },
        )
        record = RequestRecord(**{**record.__dict__, "event": digest})
        self._write_tag(name, version, T.request_key(record.id), T.encode_request(record))
        facts.requests[record.id] = record
        # Always, even when the index already read "pending": a writer settling another request
        # on this version may write "idle" between our read and our fact (see architecture.md).
        self._write_tag(name, version, T.INDEX_KEY, T.INDEX_PENDING)
        facts.index = T.INDEX_PENDING
        filed = self.announcer.announce(
            "request.created", facts.request(record.id, now), actor, comment
        )
        return filed, True

    def break_glass(
        self,
        actor: Actor,
        name: str,
        version: str,
        target: Target,
        reason: str | None,
        mv: ModelVersion | None = None,
    ) -> ApprovalRequest:
        """Apply ``target`` at once in an emergency, and open its review by the rule's levels.

        Only members of the rule's ``break_glass.roles`` may, with a reason. The change is
        audited as break-glass (intent before effect) and anchored in the request's
        ``breakglass`` fact; the review is an ordinary request on the same target whose
        deadline is ``review_within``. It does not expire: past the deadline it is overdue (and
        ``audit reconcile`` fails) until the levels sign it; a rejection fails it for good.
        """
        reason = T.check_comment(reason)
        if not reason or not reason.strip():
            raise InvalidRequest("break-glass needs a reason: say what the emergency is")
        rule = self.rule_for(name, target.kind, target.value)
        if rule is None:
            raise InvalidRequest(
                f"{target} of '{name}' is not gated by the policy: change it directly, no "
                "break-glass is needed"
            )
        if mv is None:
            mv, facts = self.read(name, version)
        else:
            facts = T.VersionFacts(name, version, mv.tags or {})
        allowed = rule.break_glass.roles if rule.break_glass else ()
        if not set(allowed) & set(self.policy.roles_of(actor.id)):
            why = (
                f"rule '{rule.name}' allows break-glass to {', '.join(allowed)} only"
                if allowed
                else f"rule '{rule.name}' allows no break-glass"
            )
            raise self.deny(actor, mv, facts, None, "break-glass", why, rule=rule.name)
        assert rule.break_glass is not None
        self._check_not_already(mv, target)
        now = self.clock()
        record = self._new_record(
            actor,
            name,
            version,
            target,
            reason,
            rule,
            now,
            expires_at=None,  # a review does not expire: it becomes overdue, and stays signable
            break_glass=True,
            review_by=now + rule.break_glass.review_within,
        )
        in_effect = live_value(mv, target)
        digest = self.emit(
            actor,
            mv,
            facts,
            event_kind(target),
            record,
            comment=reason,
            time=now,
            before=in_effect,
            after=target_value(target, version),
            extra={"break_glass": True, "review_by": T.encode_time(record.review_by)},
        )
        record = RequestRecord(**{**record.__dict__, "event": digest})
        # Facts first (the request and its emergency), then the registry: a crash in between
        # leaves a review of a change that did not happen, never a change without its record.
        self._write_tag(name, version, T.request_key(record.id), T.encode_request(record))
        ending = Ending(actor.id, now, reason, digest, actor.display_name)
        self._write_tag(name, version, T.breakglass_key(record.id), T.encode_ending(ending))
        self._write_tag(name, version, T.INDEX_KEY, T.INDEX_PENDING)
        self._change_registry(name, version, target)
        facts.requests[record.id] = record
        facts.emergency[record.id] = ending
        facts.index = T.INDEX_PENDING
        return self.announcer.announce(
            event_kind(target), facts.request(record.id, now), actor, reason
        )

    def _new_record(
        self,
        actor: Actor,
        name: str,
        version: str,
        target: Target,
        comment: str | None,
        rule: Rule,
        now: datetime,
        **overrides: Any,
    ) -> RequestRecord:
        """A new request under ``rule``; InvalidRequest when nobody but the requester could
        complete it (separation of duties)."""
        levels = tuple(tuple(Requirement(q.role, q.count) for q in lvl) for lvl in rule.levels)
        problem = eligible_signers(
            levels,
            {role: tuple(m) for role, m in self.policy.roles.items()},
            actor.id if rule.separation_of_duties else None,
        )
        if problem:
            raise InvalidRequest(
                f"rule '{rule.name}' cannot be satisfied for a request by {actor.id}: {problem}"
                " (the requester cannot sign their own request). Ask someone else to file it, "
                "or add members to the roles"
            )
        fields: dict[str, Any] = {
            "id": uuid.uuid4().hex[:12],
            "name": name,
            "version": version,
            "target": target,
            "requester": actor.id,
            "created_at": now,
            "comment": comment,
            "rule": rule.name,
            "levels": levels,
            "separation_of_duties": rule.separation_of_duties,
            "expires_at": None if rule.expires_after is None else now + rule.expires_after,
            "policy_hash": self.policy.content_hash,
            "requester_name": actor.display_name,
            "audit_run": self.audit.writer_run(name),
        }
        return RequestRecord(**{**fields, **overrides})

    def failed_reviews(self, name: str | None = None) -> list[ApprovalRequest]:
        """Break-glass changes whose review was rejected or is overdue."""
        return [r for r in self.list_requests(name, None) if r.review_failed]

    def file_alias_deletion(
        self, actor: Actor, name: str, alias: str, comment: str | None
    ) -> ApprovalRequest:
        """File a request to delete ``alias``; it is held on the version the alias points at."""
        validate_alias(alias)
        try:
            mv = self.registry.get_model_version_by_alias(name, alias)
        except Exception as exc:
            raise not_found(exc, name, None, alias) from None
        target = Target("alias", alias, "delete")
        return self.file(actor, name, str(mv.version), target, comment, mv)

    def sign(
        self,
        actor: Actor,
        name: str,
        version: str,
        decision: Decision,
        comment: str | None,
        request_id: str | None,
    ) -> ApprovalRequest:
        """Record ``actor``'s decision on the request; the sign-off completing it applies it."""
        return self.signed(actor, name, version, decision, comment, request_id)[0]

    def signed(
        self,
        actor: Actor,
        name: str,
        version: str,
        decision: Decision,
        comment: str | None,
        request_id: str | None,
    ) -> tuple[ApprovalRequest, bool]:
        """As :meth:`sign`, and whether this call recorded anything: False when ``actor`` had
        already made the same decision on the request (a retry: nothing is written). The
        other decision after one's own is refused and audited (a person signs once)."""
        comment = T.check_comment(comment)
        if decision == "reject" and (not comment or not comment.strip()):
            raise InvalidRequest("a rejection needs a reason: pass comment='why'")
        mv, facts = self.read(name, version)
        now = self.clock()
        self._record_expiries(mv, facts, now)
        request = self.pick(facts, request_id)
        if decision == "approve" and request.status is Status.APPROVED:
            return self._apply(actor, mv, facts, request), True  # retry of a failed apply
        mine = next((s for s in request.signoffs if s.actor == actor.id), None)
        if mine is not None and mine.decision == decision:
            return request, False  # signed already: the retry changes nothing
        if mine is not None:
            why = (
                f"{actor.id} has already signed request {request.id} ({mine.meaning}); a person "
                "signs once"
            )
            raise self.deny(actor, mv, facts, request, decision, why)
        problem = unbacked(request.record, self.policy) if decision == "approve" else None
        if problem and request.is_open:
            raise self.deny(actor, mv, facts, request, decision, problem)
        verdict = decide_signoff(
            request,
            actor.id,
            tuple(self.policy.roles_of(actor.id)),
            decision,
            members=self.policy.roles,
        )
        self._enforce(actor, verdict, mv, facts, request, decision)
        # SageMaker before the fact: a rejection that could not reach it is not recorded.
        moved: list[str] = []
        if decision == "reject":
            note = rejection_description(request.id, actor.id, verdict.role, comment or "")
            moved = self._package(actor, mv, facts, request, REJECTED, note)
        digest = self.emit(
            actor,
            mv,
            facts,
            "signoff.approved" if decision == "approve" else "signoff.rejected",
            request,
            comment=comment,
            time=now,
            extra={"role": verdict.role, "level": verdict.level},
            parents=moved,
        )
        signoff = SignOff(
            actor=actor.id,
            decision=decision,
            role=verdict.role,
            level=verdict.level if decision == "approve" else None,
            comment=comment,
            time=now,
            display_name=actor.display_name,
            event=digest,
            digest=request.record.digest,
        )
        self._write_tag(
            name, version, T.signoff_key(request.id, actor.id), T.encode_signoff(signoff)
        )
        facts.signoffs.setdefault(request.id, []).append(signoff)
        after = facts.request(request.id, now)
        kind = "signoff.approved" if decision == "approve" else "signoff.rejected"
        if after.status in (Status.REJECTED, Status.PENDING):
            self._settle_index(mv, facts)  # pending: writes only an index a crash lost
        if (
            after.status is Status.PENDING
            and decision == "approve"
            and verdict.level == len(request.levels)
        ):
            # Others may have signed the last level at the same moment: look again, so that
            # the sign-offs that complete the policy together also apply it.
            mv, facts = self.read(name, version)
            after = facts.request(request.id, self.clock())
        self.announcer.announce(kind, after, actor, comment)
        if after.status is Status.APPROVED:
            return self._apply(actor, mv, facts, after), True
        return after, True

    def cancel(
        self,
        actor: Actor,
        name: str,
        version: str,
        comment: str | None,
        request_id: str | None,
    ) -> ApprovalRequest:
        """Withdraw an open request (the requester, or a member of an admin role)."""
        comment = T.check_comment(comment)
        mv, facts = self.read(name, version)
        request = self.pick(facts, request_id)
        if request.break_glass and request.is_open:
            raise self.deny(
                actor,
                mv,
                facts,
                request,
                "cancel",
                f"request {request.id} is the review of a break-glass change, which has "
                "happened: it cannot be cancelled. The rule's levels sign or reject it",
            )
        verdict = decide_cancel(request, actor.id, self.policy.is_admin(actor.id))
        self._enforce(actor, verdict, mv, facts, request, "cancel")
        now = self.clock()
        digest = self.emit(
            actor,
            mv,
            facts,
            "request.cancelled",
            request,
            comment=comment,
            before={"status": request.status.value},
            after={"status": "cancelled"},
            time=now,
        )
        ending = Ending(actor.id, now, comment, digest, actor.display_name)
        self._write_tag(name, version, T.cancel_key(request.id), T.encode_ending(ending))
        facts.cancelled[request.id] = ending
        self._settle_index(mv, facts)
        done = facts.request(request.id, self.clock())
        return self.announcer.announce("request.cancelled", done, actor, comment)

    def apply(
        self, actor: Actor, name: str, version: str, request_id: str | None
    ) -> ApprovalRequest:
        """Apply an approved request whose apply failed earlier (for example, audit store down)."""
        mv, facts = self.read(name, version)
        self._record_expiries(mv, facts, self.clock())
        request = self.pick(facts, request_id)
        if request.status is Status.APPLIED:
            return request
        if request.status is not Status.APPROVED:
            raise InvalidRequest(
                f"request {request.id} is {request.status.value}, not approved: "
                "only a request every level has signed can be applied"
            )
        return self._apply(actor, mv, facts, request)

    # ------------------------------------------------------------------ reading -----------
    def get(self, name: str, version: str, request_id: str | None = None) -> ApprovalRequest:
        """The request ``request_id``; without it, the open one, else the one applied last, else
        the newest on the version."""
        _, facts = self.read(name, version)
        now = self.clock()
        if request_id is not None:
            return self._by_id(facts, request_id, now)
        found = self._obvious(facts, now)
        if found is None:
            raise RequestNotFound(f"{name} v{facts.version} has no approval request")
        return found

    def list_requests(
        self, name: str | None = None, status: Status | None = None
    ) -> list[ApprovalRequest]:
        """Requests across the registry (or of model ``name``) with ``status`` (None: all).

        One server-side tag query (paged), whose results carry the tags: no per-version reads.
        """
        index = "pending" if status in (Status.PENDING, Status.APPROVED) else None
        now = self.clock()
        found: list[ApprovalRequest] = []
        for mv in self.registry.search_versions(name, {T.INDEX_KEY: index}):
            facts = T.VersionFacts(mv.name, str(mv.version), mv.tags or {})
            found += [r for r in facts.all_requests(now) if status in (None, r.status)]
        return sorted(found, key=lambda r: (r.created_at, r.id))

    def read(self, name: str, version: str) -> tuple[ModelVersion, T.VersionFacts]:
        """The model version and the request facts in its tags (one registry read)."""
        try:
            mv = self.registry.get_model_version(name, version)
        except Exception as exc:
            raise not_found(exc, name, version) from None
        return mv, T.VersionFacts(name, version, mv.tags or {})

    def pick(self, facts: T.VersionFacts, request_id: str | None) -> ApprovalRequest:
        """The request to act on: ``request_id``, else the open one, else the one applied last,
        else the newest (so a retried step finds the request it acted on)."""
        now = self.clock()
        if request_id is not None:
            return self._by_id(facts, request_id, now)
        found = self._obvious(facts, now)
        if found is None:
            raise RequestNotFound(
                f"{facts.name} v{facts.version} has no open request: file one with "
                "request_transition()/request_alias() or `mlflow-approvals request`"
            )
        return found

    def _obvious(self, facts: T.VersionFacts, now: datetime) -> ApprovalRequest | None:
        """The request a step without a request id means: the open one (two open: say which),
        else the one applied last, else the newest; None when the version has none."""
        requests = facts.all_requests(now)
        open_ = [r for r in requests if r.is_open]
        if len(open_) > 1:
            raise self._ambiguous(facts.name, facts.version, open_)
        return obvious_request(requests)

    def _by_id(self, facts: T.VersionFacts, rid: str, now: datetime) -> ApprovalRequest:
        if rid not in facts.requests:
            raise RequestNotFound(
                f"no request {rid!r} on {facts.name} v{facts.version}: list them with "
                "list_requests(name) or `mlflow-approvals list --model NAME --status all`"
            )
        return facts.request(rid, now)

    @staticmethod
    def _ambiguous(name: str, version: str, open_: list[ApprovalRequest]) -> InvalidRequest:
        ids = "; ".join(f"{r.id} ({r.record.target}, filed by {r.requester})" for r in open_)
        return InvalidRequest(
            f"{name} v{version} has {len(open_)} open requests: {ids}. Say which one: pass "
            "request_id (`--request ID` on the command line)"
        )

    # ------------------------------------------------------------------ audit -------------
    def emit(
        self,
        actor: Actor,
        mv: ModelVersion,
        facts: T.VersionFacts | None,
        type: str,
        request: ApprovalRequest | RequestRecord | None,
        *,
        comment: str | None = None,
        before: Any = None,
        after: Any = None,
        event_id: str | None = None,
        time: datetime | None = None,
        extra: Mapping[str, Any] | None = None,
        rule: str | None = None,
        version: str | None = None,
        parents: Iterable[str] = (),
    ) -> str:
        """Write one audit event (intent before effect); return its hash."""
        record = request.record if isinstance(request, ApprovalRequest) else request
        event = make_event(
            type=type,
            name=mv.name,
            version=version or str(mv.version),
            actor=actor.id,
            display_name=actor.display_name,
            comment=comment,
            before=before,
            after=after,
            request_id=record.id if record else None,
            policy_hash=record.policy_hash if record else self.policy.content_hash,
            rule=rule or (record.rule if record else None),
            run_id=mv.run_id,
            source=mv.source,
            parents=[*(facts.event_hashes() if facts else ()), *parents],
            event_id=event_id,
            time=time or self.clock(),
            extra=extra,
        )
        return self.audit.append(event, run_id=record.audit_run if record else None)

    def deny(
        self,
        actor: Actor,
        mv: ModelVersion,
        facts: T.VersionFacts | None,
        request: ApprovalRequest | None,
        action: str,
        reason: str,
        rule: str | None = None,
    ) -> NotAuthorized:
        """Audit a refused attempt (best effort: the refusal stands anyway); return the error."""
        try:
            self.emit(
                actor,
                mv,
                facts,
                "attempt.denied",
                request,
                comment=reason,
                rule=rule,
                extra={"attempted": action},
            )
        except Exception as exc:  # the audit store being down must not turn a refusal into 5xx
            _log.warning("could not audit a refused attempt: %s", exc)
        return NotAuthorized(reason)

    def _enforce(
        self,
        actor: Actor,
        verdict: Verdict,
        mv: ModelVersion,
        facts: T.VersionFacts,
        request: ApprovalRequest,
        action: str,
    ) -> None:
        if verdict.allowed:
            return
        if verdict.kind == "not-authorized":
            raise self.deny(actor, mv, facts, request, action, verdict.reason)
        raise InvalidRequest(verdict.reason)

    # ------------------------------------------------------------------ applying ----------
    @staticmethod
    def _check_not_already(mv: ModelVersion, target: Target) -> None:
        if is_in_effect(mv, target):
            if target.kind == "alias" and target.action == "delete":
                raise InvalidRequest(f"alias '{target.value}' does not point at this version")
            raise AlreadyInEffect(
                f"{mv.name} v{mv.version} already has {target}: there is nothing to approve"
            )

    def _change_registry(self, name: str, version: str, target: Target) -> None:
        """Make the registry hold ``target`` (idempotent for an alias deletion)."""
        if target.kind == "stage":
            self.registry.transition_model_version_stage(
                name, version, target.value, target.archive_existing_versions
            )
        elif target.action == "set":
            self.registry.set_registered_model_alias(name, target.value, version)
        else:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

            try:
                self.registry.delete_registered_model_alias(name, target.value)
            except MlflowException as exc:  # deleted meanwhile by a concurrent applier
                if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                    raise

    def _apply_ungated(self, actor: Actor, mv: ModelVersion, target: Target) -> ApprovalRequest:
        """No rule gates the target: change the registry at once, as MlflowClient would."""
        version = str(mv.version)
        self._change_registry(mv.name, version, target)
        return ungated(actor, mv.name, version, target, self.policy.content_hash, self.clock())

    def _apply(
        self, actor: Actor, mv: ModelVersion, facts: T.VersionFacts, request: ApprovalRequest
    ) -> ApprovalRequest:
        """Apply an approved request: audit first, then the registry, then the applied fact.

        Idempotent: a second applier finds the registry already changed and writes nothing
        to it; the apply event has a deterministic id, and the applied fact is one key.
        """
        if request.id in facts.applied:
            return facts.request(request.id, self.clock())
        if request.break_glass:
            return self._complete_review(actor, mv, facts, request)
        problem = unbacked(request.record, self.policy)
        if problem:
            raise self.deny(actor, mv, facts, request, "apply", problem)
        target = request.record.target
        name, version = mv.name, str(mv.version)
        now = self.clock()
        in_stage = self._versions_in_stage(name, target.value) if target.kind == "stage" else []
        taken = self._taken(mv, request.record, in_stage)
        if taken:
            raise self._supersede(actor, mv, facts, request, taken)
        seen = self.assess.of(mv)  # the step's reads of the version's files and runs, once
        evidence = seen.evidence()
        if evidence is not None and request.record.digest is None:
            raise self.deny(
                actor,
                mv,
                facts,
                request,
                "apply",
                f"request {request.id} carries no evidence digest of the model files, so "
                "nothing binds its sign-offs to the bytes it would promote: file it again",
            )
        if evidence is not None and evidence.digest != request.record.digest:
            raise self._invalidate(actor, mv, facts, request, evidence)
        rule = self.policy.match(name, target.kind, target.value)
        assert rule is not None  # unbacked() checked that the request's rule gates the target
        report = seen.checks(rule, target)
        if not report.passed:
            raise self._checks_failed(actor, mv, facts, request, report, target, rule)
        # SageMaker first: when it cannot be reached nothing is promoted, and a retry applies.
        signers = [(s.actor, s.role) for s in request.signoffs if s.decision == "approve"]
        note = approval_description(request.id, str(target), name, version, signers)
        moved = self._package(actor, mv, facts, request, APPROVED, note)
        archived: list[ModelVersion] = []
        in_effect = is_in_effect(mv, target)
        if target.kind == "stage" and target.archive_existing_versions and not in_effect:
            archived = [v for v in in_stage if str(v.version) != version]
        archived_events = []
        for other in archived:
            event = self.emit(
                SYSTEM,
                other,
                facts,
                "version.archived",
                request,
                version=str(other.version),
                event_id=deterministic_id(request.id, "archived", str(other.version)),
                before={"stage": other.current_stage, "version": str(other.version)},
                after={"stage": "Archived", "version": str(other.version)},
                comment=f"archived by request {request.id} (archive_existing_versions)",
            )
            archived_events.append(event)
        digest = self.emit(
            actor,
            mv,
            facts,
            event_kind(target),
            request,
            event_id=deterministic_id(request.id, "applied"),
            before=live_value(mv, target),
            after=target_value(target, version),
            comment=f"applied after sign-off by {', '.join(s.actor for s in request.signoffs)}",
            extra={"already_in_effect": in_effect, **_assessed(report, evidence, None)},
            # so the archive events (and the SageMaker approval) are anchored through this one
            parents=[*archived_events, *moved],
        )
        if not in_effect:
            self._change_registry(name, version, target)
        ending = Ending(actor.id, now, None, digest, actor.display_name)
        if not self._write_shared_fact(mv, T.applied_key(request.id), T.encode_ending(ending)):
            _, facts = self.read(name, version)  # a concurrent applier's fact stands
        else:
            facts.applied[request.id] = ending
        self._settle_index(mv, facts)
        done = facts.request(request.id, self.clock())
        return self.announcer.announce(event_kind(target), done, actor, None)

    def _complete_review(
        self, actor: Actor, mv: ModelVersion, facts: T.VersionFacts, request: ApprovalRequest
    ) -> ApprovalRequest:
        """Every level signed a break-glass change: record the review; the registry is left as
        it is now (the emergency change was applied long ago, and may have moved on since)."""
        signers = ", ".join(s.actor for s in request.signoffs)
        digest = self.emit(
            actor,
            mv,
            facts,
            "breakglass.reviewed",
            request,
            event_id=deterministic_id(request.id, "applied"),
            before={"status": "pending review"},
            after={"status": "reviewed"},
            comment=f"break-glass change reviewed by {signers}",
            extra={"overdue": request.overdue},
        )
        ending = Ending(actor.id, self.clock(), "reviewed", digest, actor.display_name)
        if not self._write_shared_fact(mv, T.applied_key(request.id), T.encode_ending(ending)):
            _, facts = self.read(mv.name, str(mv.version))
        else:
            facts.applied[request.id] = ending
        self._settle_index(mv, facts)
        done = facts.request(request.id, self.clock())
        return self.announcer.announce("breakglass.reviewed", done, actor, None)

    # ------------------------------------------------------------------ notifications -----
    @property
    def notifier(self) -> Notifier | None:
        """Delivers the policy's notifications (None when it subscribes nothing)."""
        return self.announcer.notifier

    def _holders(self, mv: ModelVersion, target: Target) -> tuple[str, ...] | None:
        """The versions holding ``target`` now (None for the stages every version can be in)."""
        if target.kind == "stage":
            if target.value in ("None", "Archived"):
                return None
            held = self._versions_in_stage(mv.name, target.value)
            return tuple(str(v.version) for v in held)
        aliases = self.registry.get_registered_model(mv.name).aliases or {}
        holder = aliases.get(target.value)
        return () if holder is None else (str(holder),)

    def _taken(
        self, mv: ModelVersion, record: RequestRecord, in_stage: list[ModelVersion]
    ) -> list[str]:
        """The versions that took ``record``'s target since it was filed (other than its own)."""
        if record.holders is None:
            return []
        if record.target.kind == "stage":
            now = [str(v.version) for v in in_stage]
        else:
            now = list(self._holders(mv, record.target) or ())
        return [v for v in now if v != str(mv.version) and v not in record.holders]

    def _supersede(
        self,
        actor: Actor,
        mv: ModelVersion,
        facts: T.VersionFacts,
        request: ApprovalRequest,
        taken: list[str],
    ) -> InvalidRequest:
        """Record that the target moved on since filing; return the error to raise."""
        held = ", ".join(f"v{v}" for v in taken)
        why = (
            f"request {request.id} was not applied: {request.record.target} of '{mv.name}' is "
            f"now held by {held}, which did not hold it when the request was filed, so the "
            "approvals do not cover this state. Nothing was changed: request it again"
        )
        return self._end(
            actor,
            mv,
            facts,
            request,
            "superseded",
            why,
            {"status": request.status.value},
            {"status": "superseded", "held_by": taken},
        )

    def check(self, name: str, version: str, target: Target) -> CheckReport:
        """A dry run: the checks the rule gating ``target`` demands, on ``name`` v``version``.

        Every check is evaluated; nothing is written. No rule gates the target: no checks.
        """
        from mlflow_approvals.checks import CheckReport

        mv, _ = self.read(name, version)
        rule = self.rule_for(name, target.kind, target.value)
        return CheckReport(()) if rule is None else self.assess.of(mv).checks(rule, target)

    def _checks_failed(
        self,
        actor: Actor,
        mv: ModelVersion,
        facts: T.VersionFacts,
        request: ApprovalRequest | None,
        report: CheckReport,
        target: Target,
        rule: Rule,
    ) -> ChecksFailed:
        """Audit a failed evaluation (when filing, or before an apply); return the error."""
        failed = ", ".join(r.name for r in report.failed)
        when = "filed" if request is None else f"applied (request {request.id} stays approved)"
        message = (
            f"{target} of '{mv.name}' v{mv.version} cannot be {when}: rule '{rule.name}' "
            f"demands checks that fail: {failed}. Fix the version (or its run) and try again; "
            "see ChecksFailed.results or `mlflow-approvals check`"
        )
        self.emit(
            actor,
            mv,
            facts,
            "checks.failed",
            request,
            comment=message,
            rule=rule.name,
            extra={"stage": "filing" if request is None else "apply", "checks": report.to_dict()},
        )
        return ChecksFailed(message, report, request)

    def _invalidate(
        self,
        actor: Actor,
        mv: ModelVersion,
        facts: T.VersionFacts,
        request: ApprovalRequest,
        evidence: Evidence,
    ) -> InvalidRequest:
        """Record that the model's files differ from what was signed; return the error."""
        why = (
            f"request {request.id} was not applied and is invalidated: the files, source or "
            f"run of '{mv.name}' v{mv.version} changed since it was filed (evidence digest "
            f"{request.record.digest} when filed and signed, {evidence.digest} now), so the "
            "signatures are for other bytes. File the request again"
        )
        return self._end(
            actor,
            mv,
            facts,
            request,
            "invalidated",
            why,
            {"digest": request.record.digest},
            {"digest": evidence.digest, "manifest": evidence.manifest},
        )

    def _end(
        self,
        actor: Actor,
        mv: ModelVersion,
        facts: T.VersionFacts,
        request: ApprovalRequest,
        how: Literal["superseded", "invalidated"],
        why: str,
        before: Any,
        after: Any,
    ) -> InvalidRequest:
        """End an approved request unapplied (audit, fact, index, notice); return the error."""
        now = self.clock()
        digest = self.emit(
            actor,
            mv,
            facts,
            f"request.{how}",
            request,
            event_id=deterministic_id(request.id, how),
            time=now,
            before=before,
            after=after,
            comment=why,
        )
        ending = Ending(actor.id, now, why, digest, actor.display_name)
        key = T.superseded_key if how == "superseded" else T.invalidated_key
        if self._write_shared_fact(mv, key(request.id), T.encode_ending(ending)):
            (facts.superseded if how == "superseded" else facts.invalidated)[request.id] = ending
        self._settle_index(mv, facts)
        self.announcer.announce(f"request.{how}", facts.request(request.id, now), actor, why)
        return InvalidRequest(why)

    def _package(
        self,
        actor: Actor,
        mv: ModelVersion,
        facts: T.VersionFacts,
        request: ApprovalRequest | RequestRecord,
        status: str,
        note: str,
    ) -> list[str]:
        """Set the request's linked SageMaker package to ``status`` (sagemaker.py), its audit
        event first; the hashes written, for the step's own event to name as parents."""
        record = request.record if isinstance(request, ApprovalRequest) else request
        rule = next((r for r in self.policy.rules if r.name == record.rule), None)
        if record.sagemaker_arn is None or rule is None or rule.sagemaker is None:
            return []

        def emit(type: str, before: Any, after: Any, comment: str) -> str:
            event_id = deterministic_id(record.id, "sagemaker", str(after["status"]))
            return self.emit(
                actor, mv, facts, type, request, before=before, after=after, comment=comment,
                event_id=event_id,
            )  # fmt: skip

        return self.packages.move(rule.sagemaker, record.sagemaker_arn, status, note, emit)

    def _write_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.registry.set_model_version_tag(name, version, key, value)

    def _write_shared_fact(self, mv: ModelVersion, key: str, value: str) -> bool:
        """Write a fact any of several writers may write (applied, expired) once.

        Two writers creating the same new key at the same moment can make one of them fail
        with a unique-constraint error (measured on PostgreSQL). Then the other's fact is there
        and stands: return False. Any other failure is raised.
        """
        try:
            self._write_tag(mv.name, str(mv.version), key, value)
            return True
        except Exception:
            fresh, _ = self.read(mv.name, str(mv.version))
            if key not in (fresh.tags or {}):
                raise
            return False

    def _versions_in_stage(self, name: str, stage: str) -> list[ModelVersion]:
        """Every version of ``name`` in ``stage`` (MLflow archives all of them, not the latest)."""
        return [v for v in self.registry.versions_of(name) if v.current_stage == stage]

    def _record_expiries(self, mv: ModelVersion, facts: T.VersionFacts, now: datetime) -> None:
        """Record (audit + fact) each request whose deadline has passed and is not yet recorded."""
        for rid in list(facts.requests):
            request = facts.request(rid, now)
            if request.status is not Status.EXPIRED or rid in facts.expired:
                continue
            deadline = request.expires_at or now
            digest = self.emit(
                SYSTEM,
                mv,
                facts,
                "request.expired",
                request,
                event_id=deterministic_id(rid, "expired"),
                time=deadline,
                before={"status": "approved" if request.fully_signed else "pending"},
                after={"status": "expired"},
                comment=f"no complete sign-off before {deadline.isoformat()}",
            )
            ending = Ending(SYSTEM_ACTOR, deadline, None, digest)
            if self._write_shared_fact(mv, T.expired_key(rid), T.encode_ending(ending)):
                facts.expired[rid] = ending
                self.announcer.announce("request.expired", facts.request(rid, now), SYSTEM, None)
            self._settle_index(mv, facts)

    def _settle_index(self, mv: ModelVersion, facts: T.VersionFacts) -> None:
        """Write the index tag from the facts; after writing idle, look again for a new request."""
        now = self.clock()
        want = T.INDEX_PENDING if any(r.is_open for r in facts.all_requests(now)) else T.INDEX_IDLE
        if facts.index == want:
            return
        name, version = mv.name, str(mv.version)
        self._write_tag(name, version, T.INDEX_KEY, want)
        facts.index = want
        if want == T.INDEX_IDLE:
            _, fresh = self.read(name, version)
            if any(r.is_open for r in fresh.all_requests(self.clock())):
                self._write_tag(name, version, T.INDEX_KEY, T.INDEX_PENDING)
                facts.index = T.INDEX_PENDING
