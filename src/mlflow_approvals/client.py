"""``ApprovalClient``: an ``MlflowClient`` whose promotions on gated targets wait for sign-off.

This is the only module that calls MLflow's write methods. Every step follows the same order,
*intent before effect*: read the model version (one round trip returns its tags, stage and
aliases), decide with the pure lifecycle code, write the audit event, then write the fact (or
change the registry). If the audit store cannot be written, nothing else is.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from mlflow_approvals import tags as T
from mlflow_approvals.audit import AuditStore, deterministic_id, make_event
from mlflow_approvals.errors import (
    ApprovalPending,
    InvalidRequest,
    ModelVersionNotFound,
    NotAuthorized,
    RequestNotFound,
)
from mlflow_approvals.identity import resolve_actor, resolve_display_name
from mlflow_approvals.lifecycle import (
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
    utcnow,
)
from mlflow_approvals.policy import Policy, Rule, canonical_stage, load_policy, policy_from_env

if TYPE_CHECKING:
    from mlflow_approvals.reconcile import ReconcileReport
    from mlflow_approvals.verify import VerifyReport

_log = logging.getLogger(__name__)
_ALIAS = re.compile(r"^[\w\-]{1,255}$")
SYSTEM_ACTOR = "mlflow-approvals"

__all__ = ["ApprovalClient"]


def _validate_alias(alias: str) -> str:
    if (
        not isinstance(alias, str)
        or not _ALIAS.match(alias)
        or alias.lower() == "latest"
        or re.fullmatch(r"[vV]\d+", alias)
    ):
        raise InvalidRequest(
            f"invalid alias {alias!r}: use letters, digits, '_' and '-' (at most 255), and not "
            "'latest' or a version-like name such as 'v3'"
        )
    return alias


def _validate_stage(stage: str) -> str:
    try:
        return canonical_stage(stage)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def _validate_version(version: str | int) -> str:
    text = str(version).strip()
    if not text.isdigit():
        raise InvalidRequest(f"invalid model version {version!r}: a version is a number such as 3")
    return str(int(text))


class ApprovalClient(MlflowClient):
    """An ``MlflowClient`` that puts multi-level human sign-off in front of model promotion.

    Args:
        tracking_uri, registry_uri: as for ``MlflowClient``.
        policy: a path to a YAML/JSON policy, a ``Policy``, or a mapping. ``None`` reads the path
            in ``MLFLOW_APPROVALS_POLICY``; with neither, nothing is gated.
        actor: who acts. ``None``: MLFLOW_TRACKING_USERNAME, else the OS user. In this
            client-gated mode the name is the caller's claim, not a proof (see docs/concepts.md).
        display_name: the printed name recorded beside each signature (default: the actor).
        audit: where audit events go; by default an ``AuditStore`` on the same tracking server.

    Everything not gated behaves exactly like ``MlflowClient``.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        registry_uri: str | None = None,
        *,
        policy: str | os.PathLike[str] | Policy | Mapping[str, Any] | None = None,
        actor: str | None = None,
        display_name: str | None = None,
        audit: AuditStore | None = None,
    ) -> None:
        super().__init__(tracking_uri=tracking_uri, registry_uri=registry_uri)
        if policy is not None:
            self.policy: Policy = load_policy(policy)
        else:
            self.policy = policy_from_env() or Policy()
        self.actor: str = resolve_actor(actor)
        self.display_name: str = resolve_display_name(self.actor, display_name)
        self.audit: AuditStore = audit or AuditStore(self)

    # ------------------------------------------------------------------ MLflow overrides --
    def transition_model_version_stage(
        self, name: str, version: str | int, stage: str, archive_existing_versions: bool = False
    ) -> ModelVersion:
        """Change a version's stage; on a gated target, file a request and raise ApprovalPending."""
        stage = _validate_stage(stage)
        if self._rule_for(name, "stage", stage) is None:
            return super().transition_model_version_stage(  # type: ignore[no-any-return]
                name, str(version), stage, archive_existing_versions
            )
        request = self.request_transition(name, version, stage, archive_existing_versions)
        raise self._pending(request)

    def set_registered_model_alias(self, name: str, alias: str, version: str | int) -> None:
        """Point an alias at a version; if gated, file a request and raise ApprovalPending."""
        _validate_alias(alias)
        if self._rule_for(name, "alias", alias) is None:
            super().set_registered_model_alias(name, alias, str(version))
            return
        request = self.request_alias(name, version, alias)
        raise self._pending(request)

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        """Delete an alias; on a gated target, file a request and raise ApprovalPending."""
        _validate_alias(alias)
        if self._rule_for(name, "alias", alias) is None:
            super().delete_registered_model_alias(name, alias)
            return
        request = self.request_alias_deletion(name, alias)
        raise self._pending(request)

    def set_model_version_tag(
        self,
        name: str,
        version: str | None = None,
        key: str | None = None,
        value: Any = None,
        stage: str | None = None,
    ) -> None:
        """As MlflowClient's, but keys under the reserved prefix are refused."""
        self._refuse_reserved(key)
        super().set_model_version_tag(name, version, key, value, stage)

    def delete_model_version_tag(
        self,
        name: str,
        version: str | None = None,
        key: str | None = None,
        stage: str | None = None,
    ) -> None:
        """As MlflowClient's, but keys under the reserved prefix are refused."""
        self._refuse_reserved(key)
        super().delete_model_version_tag(name, version, key, stage)

    def set_registered_model_tag(self, name: str, key: str, value: Any) -> None:
        """As MlflowClient's, but keys under the reserved prefix are refused."""
        self._refuse_reserved(key)
        super().set_registered_model_tag(name, key, value)

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        """As MlflowClient's, but keys under the reserved prefix are refused."""
        self._refuse_reserved(key)
        super().delete_registered_model_tag(name, key)

    # ------------------------------------------------------------------ requests ---------
    def request_transition(
        self,
        name: str,
        version: str | int,
        stage: str,
        archive_existing_versions: bool = False,
        comment: str | None = None,
    ) -> ApprovalRequest:
        """Ask for ``version`` to move to ``stage``; the request is applied at once if ungated."""
        target = Target("stage", _validate_stage(stage), "set", bool(archive_existing_versions))
        return self._file(name, _validate_version(version), target, comment)

    def request_alias(
        self, name: str, version: str | int, alias: str, comment: str | None = None
    ) -> ApprovalRequest:
        """Ask for ``alias`` to point at ``version``; the request is applied at once if ungated."""
        target = Target("alias", _validate_alias(alias), "set")
        return self._file(name, _validate_version(version), target, comment)

    def request_alias_deletion(
        self, name: str, alias: str, comment: str | None = None
    ) -> ApprovalRequest:
        """Ask for ``alias`` to be deleted; the request is held on the version it points at."""
        _validate_alias(alias)
        try:
            mv = self._registry().get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            raise self._not_found(exc, name, None, alias) from None
        return self._file(name, str(mv.version), Target("alias", alias, "delete"), comment, mv)

    def approve(
        self,
        name: str,
        version: str | int,
        comment: str | None = None,
        request_id: str | None = None,
    ) -> ApprovalRequest:
        """Sign off ``request_id`` (or the version's one open request) at its open level.

        The sign-off that completes the last level applies the promotion. Approving a request
        that is approved but not applied (its apply failed) retries the apply.
        """
        return self._sign(name, _validate_version(version), "approve", comment, request_id)

    def reject(
        self, name: str, version: str | int, comment: str, request_id: str | None = None
    ) -> ApprovalRequest:
        """Reject the request; one rejection ends it. A reason is required."""
        if not comment or not str(comment).strip():
            raise InvalidRequest("a rejection needs a reason: pass comment='why'")
        return self._sign(name, _validate_version(version), "reject", comment, request_id)

    def cancel(
        self,
        name: str,
        version: str | int,
        comment: str | None = None,
        request_id: str | None = None,
    ) -> ApprovalRequest:
        """Withdraw an open request (the requester, or a member of an admin role)."""
        version = _validate_version(version)
        comment = T.check_comment(comment)
        mv, facts = self._read(name, version)
        request = self._pick(facts, request_id)
        verdict = decide_cancel(request, self.actor, self.policy.is_admin(self.actor))
        self._enforce(verdict, mv, facts, request, "cancel")
        now = utcnow()
        digest = self._emit(
            mv,
            facts,
            "request.cancelled",
            request,
            comment=comment,
            before={"status": request.status.value},
            after={"status": "cancelled"},
            time=now,
        )
        ending = Ending(self.actor, now, comment, digest, self.display_name)
        self._write_tag(name, version, T.cancel_key(request.id), T.encode_ending(ending))
        facts.cancelled[request.id] = ending
        self._settle_index(mv, facts)
        return facts.request(request.id, utcnow())

    def apply(
        self, name: str, version: str | int, request_id: str | None = None
    ) -> ApprovalRequest:
        """Apply an approved request whose apply failed earlier (for example, audit store down)."""
        version = _validate_version(version)
        mv, facts = self._read(name, version)
        request = self._pick(facts, request_id)
        if request.status is Status.APPLIED:
            return request
        if request.status is not Status.APPROVED:
            raise InvalidRequest(
                f"request {request.id} is {request.status.value}, not approved: "
                "only a request every level has signed can be applied"
            )
        return self._apply(mv, facts, request)

    def get_request(
        self, name: str, version: str | int, request_id: str | None = None
    ) -> ApprovalRequest:
        """The request ``request_id``; without it, the open one, else the newest on the version."""
        _, facts = self._read(name, _validate_version(version))
        now = utcnow()
        if request_id is not None:
            return self._by_id(facts, request_id, now)
        requests = facts.all_requests(now)
        open_ = [r for r in requests if r.is_open]
        if len(open_) > 1:
            raise self._ambiguous(name, facts.version, open_)
        if open_:
            return open_[0]
        if requests:
            return requests[-1]
        raise RequestNotFound(f"{name} v{facts.version} has no approval request")

    def list_requests(
        self, name: str | None = None, status: str | Status | None = "pending"
    ) -> list[ApprovalRequest]:
        """Requests across the registry (or of model ``name``) with ``status`` (None: all).

        One server-side tag query (paged), whose results carry the tags: no per-version reads.
        """
        wanted = None if status is None else self._status(status)
        index_value = "= 'pending'" if wanted in (Status.PENDING, Status.APPROVED) else "LIKE '%'"
        clauses = [f"tags.`{T.INDEX_KEY}` {index_value}"]
        if name is not None:
            clauses.insert(0, "name = '{}'".format(name.replace("'", "\\'")))
        registry = self._registry()
        now = utcnow()
        found: list[ApprovalRequest] = []
        token = None
        while True:
            page = registry.search_model_versions(
                " AND ".join(clauses), max_results=1000, order_by=None, page_token=token
            )
            for mv in page:
                facts = T.VersionFacts(mv.name, str(mv.version), mv.tags or {})
                found += [r for r in facts.all_requests(now) if wanted in (None, r.status)]
            token = page.token
            if not token:
                break
        return sorted(found, key=lambda r: (r.created_at, r.id))

    # ------------------------------------------------------------------ audit ------------
    def verify_audit(self, name: str, version: str | int | None = None) -> VerifyReport:
        """Check the audit log of ``name`` (or one version) against itself and the anchor tags."""
        from mlflow_approvals.verify import verify_model

        return verify_model(self, name, None if version is None else _validate_version(version))

    def export_audit(self, name: str, path: str | os.PathLike[str], format: str = "jsonl") -> int:
        """Write the audit trail of ``name``, ordered, one event per line; return the count."""
        from mlflow_approvals.export import export_model

        return export_model(self, name, path, format)

    def reconcile(self, name: str) -> ReconcileReport:
        """Report (and audit) every stage or alias change of ``name`` that bypassed the gate."""
        from mlflow_approvals.reconcile import reconcile_model

        return reconcile_model(self, name)

    # ------------------------------------------------------------------ internals --------
    def _registry(self) -> Any:
        """MLflow's registry client: its writes skip MlflowClient's extra registered-model read."""
        return self._get_registry_client()  # type: ignore[no-untyped-call]

    @staticmethod
    def _status(status: str | Status) -> Status:
        try:
            return Status(str(status).lower())
        except ValueError:
            choices = ", ".join(s.value for s in Status)
            raise InvalidRequest(f"unknown status {status!r}: use one of {choices}") from None

    @staticmethod
    def _refuse_reserved(key: str | None) -> None:
        if key is not None and T.is_reserved(key):
            raise NotAuthorized(
                f"tag key {key!r} is under the reserved prefix '{T.PREFIX}', which only "
                "mlflow-approvals writes: use request_transition/request_alias/approve instead"
            )

    def _pending(self, request: ApprovalRequest) -> ApprovalPending:
        return ApprovalPending(
            f"{request.describe()}. Nothing was changed yet: the promotion is applied when the "
            "last level signs off (see ApprovalPending.request).",
            request,
        )

    def _rule_for(self, name: str, kind: str, value: str) -> Rule | None:
        """The rule gating this target; None when ungated. Raises NotAuthorized under deny."""
        rule = self.policy.match(name, kind, value)  # type: ignore[arg-type]
        if rule is None and self.policy.default == "deny":
            raise NotAuthorized(
                f"no rule of the policy covers {kind} {value!r} of model '{name}', and the "
                "policy's default is deny: add a rule for it to the policy"
            )
        return rule

    def _not_found(
        self, exc: MlflowException, name: str, version: str | None, alias: str | None = None
    ) -> Exception:
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

    def _read(self, name: str, version: str) -> tuple[ModelVersion, T.VersionFacts]:
        try:
            mv = self._registry().get_model_version(name, version)
        except MlflowException as exc:
            raise self._not_found(exc, name, version) from None
        return mv, T.VersionFacts(name, version, mv.tags or {})

    def _write_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._registry().set_model_version_tag(name, version, key, value)

    def _by_id(self, facts: T.VersionFacts, rid: str, now: datetime) -> ApprovalRequest:
        if rid not in facts.requests:
            raise RequestNotFound(
                f"no request {rid!r} on {facts.name} v{facts.version}: list them with "
                "list_requests(name) or `mlflow-approvals list --model NAME --status all`"
            )
        return facts.request(rid, now)

    def _ambiguous(self, name: str, version: str, open_: list[ApprovalRequest]) -> InvalidRequest:
        ids = ", ".join(f"{r.id} ({r.record.target})" for r in open_)
        return InvalidRequest(
            f"{name} v{version} has {len(open_)} open requests ({ids}): pass request_id"
        )

    def _pick(self, facts: T.VersionFacts, request_id: str | None) -> ApprovalRequest:
        """The request to act on: ``request_id``, else the version's one open request."""
        now = utcnow()
        if request_id is not None:
            return self._by_id(facts, request_id, now)
        open_ = [r for r in facts.all_requests(now) if r.is_open]
        if not open_:
            raise RequestNotFound(
                f"{facts.name} v{facts.version} has no open request: file one with "
                "request_transition()/request_alias() or `mlflow-approvals request`"
            )
        if len(open_) > 1:
            raise self._ambiguous(facts.name, facts.version, open_)
        return open_[0]

    def _emit(
        self,
        mv: ModelVersion,
        facts: T.VersionFacts,
        type: str,
        request: ApprovalRequest | RequestRecord | None,
        *,
        actor: str | None = None,
        display_name: str | None = None,
        comment: str | None = None,
        before: Any = None,
        after: Any = None,
        event_id: str | None = None,
        time: datetime | None = None,
        extra: Mapping[str, Any] | None = None,
        policy_hash: str | None = None,
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
            actor=actor or self.actor,
            display_name=display_name or (self.display_name if actor is None else actor),
            comment=comment,
            before=before,
            after=after,
            request_id=record.id if record else None,
            policy_hash=policy_hash or (record.policy_hash if record else self.policy.content_hash),
            rule=rule or (record.rule if record else None),
            run_id=mv.run_id,
            source=mv.source,
            parents=[*facts.event_hashes(), *parents],
            event_id=event_id,
            time=time,
            extra=extra,
        )
        return self.audit.append(event, run_id=record.audit_run if record else None)

    def _deny(
        self,
        mv: ModelVersion,
        facts: T.VersionFacts,
        request: ApprovalRequest | None,
        action: str,
        reason: str,
        rule: str | None = None,
    ) -> NotAuthorized:
        """Audit a refused attempt (best effort: the refusal stands anyway); return the error."""
        try:
            self._emit(
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
        verdict: Verdict,
        mv: ModelVersion,
        facts: T.VersionFacts,
        request: ApprovalRequest,
        action: str,
    ) -> None:
        if verdict.allowed:
            return
        if verdict.kind == "not-authorized":
            raise self._deny(mv, facts, request, action, verdict.reason)
        raise InvalidRequest(verdict.reason)

    def _file(
        self,
        name: str,
        version: str,
        target: Target,
        comment: str | None,
        mv: ModelVersion | None = None,
    ) -> ApprovalRequest:
        comment = T.check_comment(comment)
        rule = self._rule_for(name, target.kind, target.value)
        if mv is None:
            mv, facts = self._read(name, version)
        else:
            facts = T.VersionFacts(name, version, mv.tags or {})
        if rule is None:
            return self._apply_ungated(mv, target)
        now = utcnow()
        self._record_expiries(mv, facts, now)
        for existing in facts.all_requests(now):
            if existing.is_open and existing.record.target == target:
                return existing
        self._check_not_already(mv, target)
        levels = tuple(tuple(Requirement(q.role, q.count) for q in lvl) for lvl in rule.levels)
        problem = eligible_signers(
            levels,
            {role: tuple(m) for role, m in self.policy.roles.items()},
            self.actor if rule.separation_of_duties else None,
        )
        if problem:
            raise InvalidRequest(
                f"rule '{rule.name}' cannot be satisfied for a request by {self.actor}: {problem}"
                " (the requester cannot sign their own request). Ask someone else to file it, "
                "or add members to the roles"
            )
        record = RequestRecord(
            id=uuid.uuid4().hex[:12],
            name=name,
            version=version,
            target=target,
            requester=self.actor,
            created_at=now,
            comment=comment,
            rule=rule.name,
            levels=levels,
            separation_of_duties=rule.separation_of_duties,
            expires_at=None if rule.expires_after is None else now + rule.expires_after,
            policy_hash=self.policy.content_hash,
            requester_name=self.display_name,
            audit_run=self.audit.writer_run(name),
        )
        digest = self._emit(
            mv,
            facts,
            "request.created",
            record,
            comment=comment,
            time=now,
            before=self._live_value(mv, target),
            after=self._target_value(target, version),
            extra={
                "target": {
                    "kind": target.kind,
                    "value": target.value,
                    "action": target.action,
                    "archive_existing_versions": target.archive_existing_versions,
                }
            },
        )
        record = RequestRecord(**{**record.__dict__, "event": digest})
        self._write_tag(name, version, T.request_key(record.id), T.encode_request(record))
        facts.requests[record.id] = record
        # Always, even when the index already read "pending": a writer settling another request
        # on this version may write "idle" between our read and our fact (see architecture.md).
        self._write_tag(name, version, T.INDEX_KEY, T.INDEX_PENDING)
        facts.index = T.INDEX_PENDING
        return facts.request(record.id, now)

    def _sign(
        self,
        name: str,
        version: str,
        decision: Decision,
        comment: str | None,
        request_id: str | None,
    ) -> ApprovalRequest:
        comment = T.check_comment(comment)
        mv, facts = self._read(name, version)
        now = utcnow()
        self._record_expiries(mv, facts, now)
        request = self._pick(facts, request_id)
        if decision == "approve" and request.status is Status.APPROVED:
            return self._apply(mv, facts, request)  # retry of an apply that failed
        verdict = decide_signoff(
            request,
            self.actor,
            tuple(self.policy.roles_of(self.actor)),
            decision,
            members=self.policy.roles,
        )
        self._enforce(verdict, mv, facts, request, decision)
        digest = self._emit(
            mv,
            facts,
            "signoff.approved" if decision == "approve" else "signoff.rejected",
            request,
            comment=comment,
            time=now,
            extra={"role": verdict.role, "level": verdict.level},
        )
        signoff = SignOff(
            actor=self.actor,
            decision=decision,
            role=verdict.role,
            level=verdict.level if decision == "approve" else None,
            comment=comment,
            time=now,
            display_name=self.display_name,
            event=digest,
        )
        self._write_tag(
            name, version, T.signoff_key(request.id, self.actor), T.encode_signoff(signoff)
        )
        facts.signoffs.setdefault(request.id, []).append(signoff)
        after = facts.request(request.id, now)
        if after.status is Status.REJECTED:
            self._settle_index(mv, facts)
        elif (
            after.status is Status.PENDING
            and decision == "approve"
            and verdict.level == len(request.levels)
        ):
            # Others may have signed the last level at the same moment: look again, so that
            # the sign-offs that complete the policy together also apply it.
            mv, facts = self._read(name, version)
            after = facts.request(request.id, utcnow())
        if after.status is Status.APPROVED:
            return self._apply(mv, facts, after)
        return after

    # ------------------------------------------------------------------ applying ---------
    @staticmethod
    def _target_value(target: Target, version: str) -> dict[str, Any]:
        if target.kind == "stage":
            return {"stage": target.value, "version": version}
        if target.action == "set":
            return {"alias": target.value, "version": version}
        return {"alias": target.value, "version": None}

    @staticmethod
    def _live_value(mv: ModelVersion, target: Target) -> dict[str, Any]:
        if target.kind == "stage":
            return {"stage": mv.current_stage, "version": str(mv.version)}
        aliases = list(mv.aliases or [])
        return {
            "alias": target.value,
            "version": str(mv.version) if target.value in aliases else None,
        }

    @staticmethod
    def _is_in_effect(mv: ModelVersion, target: Target) -> bool:
        if target.kind == "stage":
            return bool(mv.current_stage == target.value)
        present = target.value in (mv.aliases or [])
        return present if target.action == "set" else not present

    def _check_not_already(self, mv: ModelVersion, target: Target) -> None:
        if self._is_in_effect(mv, target):
            if target.kind == "alias" and target.action == "delete":
                raise InvalidRequest(f"alias '{target.value}' does not point at this version")
            raise InvalidRequest(
                f"{mv.name} v{mv.version} already has {target}: there is nothing to approve"
            )

    def _apply_ungated(self, mv: ModelVersion, target: Target) -> ApprovalRequest:
        """No rule gates the target: change the registry at once, as MlflowClient would."""
        registry = self._registry()
        version = str(mv.version)
        if target.kind == "stage":
            registry.transition_model_version_stage(
                mv.name, version, target.value, target.archive_existing_versions
            )
        elif target.action == "set":
            registry.set_registered_model_alias(mv.name, target.value, version)
        else:
            registry.delete_registered_model_alias(mv.name, target.value)
        now = utcnow()
        record = RequestRecord(
            id="",
            name=mv.name,
            version=version,
            target=target,
            requester=self.actor,
            created_at=now,
            comment=None,
            rule="",
            levels=(),
            separation_of_duties=False,
            expires_at=None,
            policy_hash=self.policy.content_hash,
        )
        return ApprovalRequest(
            record,
            (),
            Status.APPLIED,
            None,
            (),
            applied=Ending(self.actor, now, "not gated by the policy", None, self.display_name),
        )

    def _apply(
        self, mv: ModelVersion, facts: T.VersionFacts, request: ApprovalRequest
    ) -> ApprovalRequest:
        """Apply an approved request: audit first, then the registry, then the applied fact.

        Idempotent: a second applier finds the registry already changed and writes nothing
        to it; the apply event has a deterministic id, and the applied fact is one key.
        """
        if request.id in facts.applied:
            return facts.request(request.id, utcnow())
        target = request.record.target
        name, version = mv.name, str(mv.version)
        registry = self._registry()
        now = utcnow()
        archived: list[ModelVersion] = []
        in_effect = self._is_in_effect(mv, target)
        if target.kind == "stage" and target.archive_existing_versions and not in_effect:
            archived = [
                v for v in self._versions_in_stage(name, target.value) if str(v.version) != version
            ]
        kind = (
            "stage.transitioned"
            if target.kind == "stage"
            else "alias.set"
            if target.action == "set"
            else "alias.deleted"
        )
        archived_events = []
        for other in archived:
            event = self._emit(
                other,
                facts,
                "version.archived",
                request,
                actor=SYSTEM_ACTOR,
                display_name="mlflow-approvals (system)",
                version=str(other.version),
                event_id=deterministic_id(request.id, "archived", str(other.version)),
                before={"stage": other.current_stage, "version": str(other.version)},
                after={"stage": "Archived", "version": str(other.version)},
                comment=f"archived by request {request.id} (archive_existing_versions)",
            )
            archived_events.append(event)
        digest = self._emit(
            mv,
            facts,
            kind,
            request,
            event_id=deterministic_id(request.id, "applied"),
            before=self._live_value(mv, target),
            after=self._target_value(target, version),
            comment=f"applied after sign-off by {', '.join(s.actor for s in request.signoffs)}",
            extra={"already_in_effect": in_effect},
            parents=archived_events,  # so the archive events are anchored through this one
        )
        if not in_effect:
            if target.kind == "stage":
                registry.transition_model_version_stage(
                    name, version, target.value, target.archive_existing_versions
                )
            elif target.action == "set":
                registry.set_registered_model_alias(name, target.value, version)
            else:
                try:
                    registry.delete_registered_model_alias(name, target.value)
                except MlflowException as exc:  # deleted meanwhile by a concurrent applier
                    if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                        raise
        ending = Ending(self.actor, now, None, digest, self.display_name)
        if not self._write_shared_fact(mv, T.applied_key(request.id), T.encode_ending(ending)):
            _, facts = self._read(name, version)  # a concurrent applier's fact stands
        else:
            facts.applied[request.id] = ending
        self._settle_index(mv, facts)
        return facts.request(request.id, utcnow())

    def _write_shared_fact(self, mv: ModelVersion, key: str, value: str) -> bool:
        """Write a fact any of several writers may write (applied, expired) once.

        Two writers creating the same new key at the same moment can make one of them fail
        with a unique-constraint error (measured on PostgreSQL). Then the other's fact is there
        and stands: return False. Any other failure is raised.
        """
        try:
            self._write_tag(mv.name, str(mv.version), key, value)
            return True
        except MlflowException:
            fresh, _ = self._read(mv.name, str(mv.version))
            if key not in (fresh.tags or {}):
                raise
            return False

    def _versions_in_stage(self, name: str, stage: str) -> list[ModelVersion]:
        """Every version of ``name`` in ``stage`` (MLflow archives all of them, not the latest)."""
        quoted = name.replace("'", "\\'")
        found: list[ModelVersion] = []
        token = None
        while True:
            page = self._registry().search_model_versions(
                f"name = '{quoted}'", max_results=1000, order_by=None, page_token=token
            )
            found += [v for v in page if v.current_stage == stage]
            token = page.token
            if not token:
                return found

    def _record_expiries(self, mv: ModelVersion, facts: T.VersionFacts, now: datetime) -> None:
        """Record (audit + fact) each request whose deadline has passed and is not yet recorded."""
        for rid in list(facts.requests):
            request = facts.request(rid, now)
            if request.status is not Status.EXPIRED or rid in facts.expired:
                continue
            deadline = request.expires_at or now
            digest = self._emit(
                mv,
                facts,
                "request.expired",
                request,
                actor=SYSTEM_ACTOR,
                display_name="mlflow-approvals (system)",
                event_id=deterministic_id(rid, "expired"),
                time=deadline,
                before={"status": "pending"},
                after={"status": "expired"},
                comment=f"no complete sign-off before {deadline.isoformat()}",
            )
            ending = Ending(SYSTEM_ACTOR, deadline, None, digest)
            if self._write_shared_fact(mv, T.expired_key(rid), T.encode_ending(ending)):
                facts.expired[rid] = ending
            self._settle_index(mv, facts)

    def _settle_index(self, mv: ModelVersion, facts: T.VersionFacts) -> None:
        """Write the index tag from the facts; after writing idle, look again for a new request."""
        now = utcnow()
        want = T.INDEX_PENDING if any(r.is_open for r in facts.all_requests(now)) else T.INDEX_IDLE
        if facts.index == want:
            return
        name, version = mv.name, str(mv.version)
        self._write_tag(name, version, T.INDEX_KEY, want)
        facts.index = want
        if want == T.INDEX_IDLE:
            _, fresh = self._read(name, version)
            if any(r.is_open for r in fresh.all_requests(utcnow())):
                self._write_tag(name, version, T.INDEX_KEY, T.INDEX_PENDING)
                facts.index = T.INDEX_PENDING
