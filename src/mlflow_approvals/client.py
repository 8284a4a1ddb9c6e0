"""``ApprovalClient``: an ``MlflowClient`` whose promotions on gated targets wait for sign-off.

A thin front end: the lifecycle lives in :class:`mlflow_approvals.engine.Engine`, which this
client drives over the model-registry store behind ``MlflowClient`` (a REST store for a tracking
server, a SQL store for a ``sqlite:///`` registry), with the caller's claimed identity.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from mlflow_approvals import tags as T
from mlflow_approvals.audit import AuditStore
from mlflow_approvals.engine import Engine, pending_error
from mlflow_approvals.errors import InvalidRequest, NotAuthorized
from mlflow_approvals.identity import resolve_actor, resolve_display_name
from mlflow_approvals.lifecycle import Actor, ApprovalRequest, Decision, Status, Target
from mlflow_approvals.policy import Policy, canonical_stage, load_policy, policy_from_env
from mlflow_approvals.ports import Registry
from mlflow_approvals.remote import RemoteLifecycle
from mlflow_approvals.targets import parse_status, validate_alias, validate_stage, validate_version

if TYPE_CHECKING:
    from mlflow_approvals.checks import CheckReport
    from mlflow_approvals.reconcile import ReconcileReport
    from mlflow_approvals.sealing import SealReport
    from mlflow_approvals.verify import VerifyReport

__all__ = ["ApprovalClient"]

_log = logging.getLogger(__name__)


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
        server_auth: (user, password) for an approvals server's endpoints, when not the
            MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD of the environment.

    Against a server running the approvals app (``mlflow server --app-name approvals``) every
    step is sent to the server, which runs it under the authenticated user and its own policy:
    ``actor`` is then checked against who the server says you are, and a different name is
    refused. Everything not gated behaves exactly like ``MlflowClient``.
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
        server_auth: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(tracking_uri=tracking_uri, registry_uri=registry_uri)
        self._claimed = actor
        self._server_auth = server_auth
        self._remote: RemoteLifecycle | None = None
        self._probed = False
        if policy is not None:
            loaded: Policy = load_policy(policy)
        else:
            loaded = policy_from_env() or _no_policy()
        actor_id = resolve_actor(actor)
        self._actor = Actor(actor_id, resolve_display_name(actor_id, display_name))
        self.engine = Engine(
            Registry(lambda: self._get_registry_client().store),  # type: ignore[no-untyped-call]
            audit or AuditStore(self),
            loaded,
            evidence=_ClientEvidence(self),
            ui_base=_ui_base(str(self._tracking_client.tracking_uri)),
        )

    # ------------------------------------------------------------------ who and what -------
    @property
    def actor(self) -> str:
        """The id recorded as the actor of this client's requests and sign-offs."""
        remote = self._server()
        if remote is not None and remote.user:
            return remote.user
        return self._actor.id

    @property
    def enforcing_server(self) -> bool:
        """True when the tracking server runs the approvals app and runs every step itself."""
        return self._server() is not None

    def _server(self) -> RemoteLifecycle | None:
        """The approvals server's endpoints, when the tracking server has them (asked once)."""
        if not self._probed:
            uri = str(self._tracking_client.tracking_uri)
            found: RemoteLifecycle | None = None
            if uri.startswith(("http://", "https://")):
                from mlflow_approvals.remote import probe

                info = _remote_call(lambda: probe(uri, self._server_auth))
                if info is not None:
                    found = RemoteLifecycle(uri, info, self._server_auth)
            self._remote, self._probed = found, True
        return self._remote

    def _steps(self) -> _Remote | _Local:
        """Who runs the lifecycle: the approvals server, or the engine in this process."""
        remote = self._server()
        if remote is None:
            return _Local(self.engine, self._actor)
        if self._claimed and remote.user and self._claimed != remote.user:
            raise NotAuthorized(
                f"the server authenticated you as '{remote.user}'; acting as "
                f"'{self._claimed}' cannot be claimed. Sign in as '{self._claimed}' instead "
                "(MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD)"
            )
        return _Remote(remote)

    @property
    def display_name(self) -> str:
        """The printed name recorded beside this client's signatures."""
        return self._actor.display_name

    @property
    def policy(self) -> Policy:
        """The approval policy this client applies."""
        return self.engine.policy

    @property
    def audit(self) -> AuditStore:
        """Where this client's audit events go."""
        return self.engine.audit

    @audit.setter
    def audit(self, store: AuditStore) -> None:
        self.engine.audit = store

    @property
    def registry(self) -> Registry:
        """The registry port the engine works through."""
        return self.engine.registry

    # ------------------------------------------------------------------ MLflow overrides --
    def transition_model_version_stage(
        self, name: str, version: str | int, stage: str, archive_existing_versions: bool = False
    ) -> ModelVersion:
        """Change a version's stage; on a gated target, file a request and raise ApprovalPending.

        A stage MLflow does not know is MLflow's to refuse, with its own error.
        """
        try:
            stage = canonical_stage(stage)
        except (ValueError, TypeError):
            return super().transition_model_version_stage(  # type: ignore[no-any-return]
                name, version, stage, archive_existing_versions
            )
        if self.enforcing_server:
            request = self.request_transition(name, version, stage, archive_existing_versions)
            if not request.id:  # not gated on the server: applied there
                return self.get_model_version(name, str(version))
            raise pending_error(request)
        if self.engine.rule_for(name, "stage", stage) is None:
            return super().transition_model_version_stage(  # type: ignore[no-any-return]
                name, str(version), stage, archive_existing_versions
            )
        request = self.request_transition(name, version, stage, archive_existing_versions)
        raise pending_error(request)

    def set_registered_model_alias(self, name: str, alias: str, version: str | int) -> None:
        """Point an alias at a version; if gated, file a request and raise ApprovalPending."""
        if self.enforcing_server:
            request = self.request_alias(name, version, alias)
            if request.id:
                raise pending_error(request)
            return
        if not isinstance(alias, str) or self.engine.rule_for(name, "alias", alias) is None:
            super().set_registered_model_alias(name, alias, str(version))  # MLflow validates
            return
        request = self.request_alias(name, version, alias)
        raise pending_error(request)

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        """Delete an alias; on a gated target, file a request and raise ApprovalPending."""
        if self.enforcing_server:
            request = self.request_alias_deletion(name, alias)
            if request.id:
                raise pending_error(request)
            return
        if not isinstance(alias, str) or self.engine.rule_for(name, "alias", alias) is None:
            super().delete_registered_model_alias(name, alias)  # MLflow validates
            return
        request = self.request_alias_deletion(name, alias)
        raise pending_error(request)

    def create_registered_model(
        self,
        name: str,
        tags: dict[str, Any] | None = None,
        description: str | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """As MlflowClient's, but tags under the reserved prefix are refused."""
        self._refuse_reserved_tags(tags, "model")
        return super().create_registered_model(name, tags, description, *args, **kwargs)

    def create_model_version(
        self,
        name: str,
        source: str,
        run_id: str | None = None,
        tags: dict[str, Any] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> ModelVersion:
        """As MlflowClient's, but tags under the reserved prefix are refused: approval state
        is written by the lifecycle only, never carried in by a new version."""
        self._refuse_reserved_tags(tags, "version")
        return super().create_model_version(name, source, run_id, tags, *args, **kwargs)

    def copy_model_version(self, src_model_uri: str, dst_name: str) -> ModelVersion:
        """As MlflowClient's, but the copy carries no approval state: MLflow copies every tag of
        the source, and the tags under the reserved prefix are left behind."""
        from mlflow.exceptions import MlflowException
        from mlflow.store.artifact.utils.models import get_model_name_and_version

        registry = self._get_registry_client()  # type: ignore[no-untyped-call]
        try:
            src_name, src_version = get_model_name_and_version(  # type: ignore[no-untyped-call]
                registry, src_model_uri
            )
            src = registry.get_model_version(src_name, src_version)
        except MlflowException:
            return super().copy_model_version(src_model_uri, dst_name)  # MLflow's own error
        if not any(T.is_reserved(k) for k in (src.tags or {})):
            return super().copy_model_version(src_model_uri, dst_name)
        clean = copy.copy(src)
        clean._tags = {k: v for k, v in (src.tags or {}).items() if not T.is_reserved(k)}
        return registry.copy_model_version(src_mv=clean, dst_name=dst_name)  # type: ignore[no-any-return]

    def delete_model_version(self, name: str, version: str | int) -> None:
        """As MlflowClient's, but a version holding a gated stage or alias, or an open request,
        cannot be deleted; the deletion of a version with an audit trail is recorded first."""
        self._judged("delete_version", {"name": name, "version": str(version)})
        super().delete_model_version(name, str(version))

    def delete_registered_model(self, name: str) -> None:
        """As MlflowClient's, but refused while a version holds a gated stage or alias or an
        open request; the deletion is recorded first (the audit log outlives the model)."""
        self._judged("delete_model", {"name": name})
        super().delete_registered_model(name)

    def rename_registered_model(self, name: str, new_name: str) -> Any:
        """As MlflowClient's, but refused while a version holds a gated stage or alias or an
        open request; the old name's audit trail is closed by a recorded rename first."""
        self._judged("rename_model", {"name": name, "new_name": new_name})
        return super().rename_registered_model(name, new_name)

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
        target = Target("stage", validate_stage(stage), "set", bool(archive_existing_versions))
        return self._steps().file(name, validate_version(version), target, comment)

    def request_alias(
        self, name: str, version: str | int, alias: str, comment: str | None = None
    ) -> ApprovalRequest:
        """Ask for ``alias`` to point at ``version``; the request is applied at once if ungated."""
        target = Target("alias", validate_alias(alias), "set")
        return self._steps().file(name, validate_version(version), target, comment)

    def request_alias_deletion(
        self, name: str, alias: str, comment: str | None = None
    ) -> ApprovalRequest:
        """Ask for ``alias`` to be deleted; the request is held on the version it points at."""
        target = Target("alias", validate_alias(alias), "delete")
        return self._steps().file(name, None, target, comment)

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
        version = validate_version(version)
        return self._steps().sign(name, version, "approve", comment, request_id)

    def reject(
        self, name: str, version: str | int, comment: str, request_id: str | None = None
    ) -> ApprovalRequest:
        """Reject the request; one rejection ends it. A reason is required."""
        if not comment or not str(comment).strip():
            raise InvalidRequest("a rejection needs a reason: pass comment='why'")
        version = validate_version(version)
        return self._steps().sign(name, version, "reject", comment, request_id)

    def cancel(
        self,
        name: str,
        version: str | int,
        comment: str | None = None,
        request_id: str | None = None,
    ) -> ApprovalRequest:
        """Withdraw an open request (the requester, or a member of an admin role)."""
        version = validate_version(version)
        return self._steps().cancel(name, version, comment, request_id)

    def apply(
        self, name: str, version: str | int, request_id: str | None = None
    ) -> ApprovalRequest:
        """Apply an approved request whose apply failed earlier (for example, audit store down)."""
        return self._steps().apply(name, validate_version(version), request_id)

    def get_request(
        self, name: str, version: str | int, request_id: str | None = None
    ) -> ApprovalRequest:
        """The request ``request_id``; without it, the open one, else the newest on the version."""
        return self._steps().get(name, validate_version(version), request_id)

    def file_request(
        self,
        name: str,
        version: str | int,
        *,
        stage: str | None = None,
        alias: str | None = None,
        archive_existing_versions: bool = False,
        comment: str | None = None,
    ) -> tuple[ApprovalRequest, bool]:
        """As :meth:`request_transition` / :meth:`request_alias`, and whether this call filed
        (or, ungated, applied) it: False when the open request for the target was returned,
        which keeps its own comment and ``archive_existing_versions``. A target the registry
        holds already raises ``AlreadyInEffect``. For scripts that run again (CI)."""
        target = _one_target(stage, alias, archive_existing_versions)
        return self._steps().filed(name, validate_version(version), target, comment)

    def sign_request(
        self,
        name: str,
        version: str | int,
        decision: Decision,
        comment: str | None = None,
        request_id: str | None = None,
    ) -> tuple[ApprovalRequest, bool]:
        """As :meth:`approve` / :meth:`reject`, and whether this call recorded anything: False
        when the actor had made the same decision on the request already (nothing written)."""
        if decision not in ("approve", "reject"):
            raise InvalidRequest(f"decision is 'approve' or 'reject', not {decision!r}")
        if decision == "reject" and (not comment or not str(comment).strip()):
            raise InvalidRequest("a rejection needs a reason: pass comment='why'")
        version = validate_version(version)
        return self._steps().signed(name, version, decision, comment, request_id)

    def list_requests(
        self, name: str | None = None, status: str | Status | None = "pending"
    ) -> list[ApprovalRequest]:
        """Requests across the registry (or of model ``name``) with ``status`` (None: all).

        One server-side tag query (paged), whose results carry the tags: no per-version reads.
        """
        wanted = None if status is None else parse_status(status)
        return self._steps().list_requests(name, wanted)

    def break_glass(
        self,
        name: str,
        version: str | int,
        *,
        reason: str,
        stage: str | None = None,
        alias: str | None = None,
        archive_existing_versions: bool = False,
    ) -> ApprovalRequest:
        """Apply a stage or alias at once in an emergency (a rollback at 3 a.m.).

        Only members of the roles the rule's ``break_glass`` names may, with a reason. The
        change is audited as break-glass, and the returned request is its retrospective review
        by the rule's levels, due within the rule's ``review_within``: sign it with
        :meth:`approve` as usual. An overdue or rejected review fails :meth:`reconcile`.
        """
        target = _one_target(stage, alias, archive_existing_versions)
        return self._steps().break_glass(name, validate_version(version), target, reason)

    def check(
        self,
        name: str,
        version: str | int,
        stage: str | None = None,
        alias: str | None = None,
        archive_existing_versions: bool = False,
    ) -> CheckReport:
        """A dry run: the checks the rule gating the stage or alias demands, on this version.

        Every check is evaluated (none stops the others) and nothing is written. The report has
        ``.passed`` and ``.results`` (each with ``.name``, ``.passed``, ``.detail``, and the
        value and threshold where there is one). No rule gates the target: no checks, passed.
        """
        target = _one_target(stage, alias, archive_existing_versions)
        return self._steps().check(name, validate_version(version), target)

    def link_model_package(self, name: str, version: str | int, arn: str) -> str:
        """Link ``name`` v``version`` to the SageMaker model package ``arn``; its status.

        Checks that the package exists (with the credentials of the first rule with
        ``sagemaker:`` in its region, else the default ones), then sets the version's tag
        ``sagemaker.model_package_arn``. A request records the link when it is filed, so
        relinking later does not redirect a request in flight (docs/sagemaker.md).
        """
        from mlflow_approvals.sagemaker import LINK_TAG, check_arn, settings_for_arn

        version = validate_version(version)
        arn = check_arn(arn, "the link")
        status = self.engine.packages.status(settings_for_arn(arn, self.policy.rules), arn)
        self.set_model_version_tag(name, version, LINK_TAG, arn)
        return status

    def failed_reviews(self, name: str | None = None) -> list[ApprovalRequest]:
        """Break-glass changes whose review was rejected or is overdue (all models, or one)."""
        return [r for r in self.list_requests(name, status=None) if r.review_failed]

    # ------------------------------------------------------------------ audit ------------
    def verify_audit(self, name: str, version: str | int | None = None) -> VerifyReport:
        """Check the audit log of ``name`` (or one version) against itself and the anchor tags."""
        from mlflow_approvals.verify import verify_model

        return verify_model(
            self.engine, name, None if version is None else validate_version(version)
        )

    def export_audit(self, name: str, path: str | os.PathLike[str], format: str = "jsonl") -> int:
        """Write the audit trail of ``name``, ordered, one event per line; return the count."""
        from mlflow_approvals.export import export_model

        return export_model(self.engine, name, path, format)

    def reconcile(self, name: str) -> ReconcileReport:
        """Report (and audit) every stage or alias change of ``name`` that bypassed the gate."""
        from mlflow_approvals.reconcile import ReconcileReport, reconcile_model

        remote = self._server()
        if remote is not None:  # only the server writes the log there
            return ReconcileReport.from_dict(_remote_call(lambda: remote.reconcile(name)))
        return reconcile_model(self.engine, name)

    def seal_audit(self, name: str, min_events: int = 1) -> SealReport:
        """Copy the loose audit events of ``name`` into anchored segments, so that reading the
        log through a tracking server downloads a segment instead of one file per event.

        ``report.segments`` holds (path, events) of each segment written; none when fewer than
        ``min_events`` events are loose (sealing again seals nothing new). Against an approvals
        server it runs on the server (the ``seal`` endpoint), which alone may write the log.
        """
        from mlflow_approvals.sealing import SealReport, check_min_events, seal_model

        minimum = check_min_events(min_events)
        remote = self._server()
        if remote is not None:
            return SealReport.from_dict(_remote_call(lambda: remote.seal(name, minimum)))
        return seal_model(self.engine, name, minimum)

    # ------------------------------------------------------------------ internals --------
    def _judged(self, door: str, params: Mapping[str, Any]) -> None:
        """The server gate's decision on a direct write, taken in this process (client mode):
        refuse it (audited), or record it before it happens. An approvals server judges its
        own writes."""
        if self.enforcing_server:
            return
        from mlflow_approvals.server.gate import RegistryView, record_change
        from mlflow_approvals.server.judge import judge

        view = RegistryView(self.engine)
        judgement = judge(door, params, view)
        if judgement.refusal:
            record_change(
                self.engine,
                self._actor,
                judgement,
                door,
                "attempt.denied",
                best_effort=True,
                view=view,
            )
            raise NotAuthorized(judgement.refusal)
        if judgement.recorded and self._has_history(view, judgement):
            record_change(self.engine, self._actor, judgement, door, "registry.changed", view=view)

    @staticmethod
    def _has_history(view: Any, judgement: Any) -> bool:
        """True when the write takes away facts that anchor audit events (a model or version
        never gated has no log, and gets none from being deleted or renamed)."""
        name = judgement.name
        if judgement.version is not None:
            mv = view.version(name, judgement.version)
            versions = [] if mv is None else [mv]
        else:
            versions = view.versions(name)
        return any(
            T.VersionFacts(name, str(mv.version), mv.tags or {}).event_hashes() for mv in versions
        )

    @staticmethod
    def _refuse_reserved_tags(tags: Any, what: str) -> None:
        if not tags:
            return
        keys = tags.keys() if isinstance(tags, Mapping) else [getattr(t, "key", t) for t in tags]
        reserved = sorted(str(k) for k in keys if T.is_reserved(str(k)))
        if reserved:
            raise NotAuthorized(
                f"the new {what} would carry tags under the reserved prefix '{T.PREFIX}' "
                f"({', '.join(reserved)}), which only mlflow-approvals writes: leave them out"
            )

    @staticmethod
    def _refuse_reserved(key: str | None) -> None:
        if key is not None and T.is_reserved(key):
            raise NotAuthorized(
                f"tag key {key!r} is under the reserved prefix '{T.PREFIX}', which only "
                "mlflow-approvals writes: use request_transition/request_alias/approve instead"
            )


def _no_policy() -> Policy:
    """The empty policy, with one warning: nothing is gated in client mode without a policy."""
    _log.warning(
        "ApprovalClient has no policy (policy=None and MLFLOW_APPROVALS_POLICY unset): nothing "
        "is gated, and every promotion this client makes is applied at once. Pass policy=... "
        "or set MLFLOW_APPROVALS_POLICY (an approvals server applies its own policy)"
    )
    return Policy()


def _one_target(stage: str | None, alias: str | None, archive: bool) -> Target:
    """The stage or the alias (set) a method names; InvalidRequest unless exactly one."""
    if (stage is None) == (alias is None):
        raise InvalidRequest("pass exactly one target: stage=... or alias=...")
    if stage is not None:
        return Target("stage", validate_stage(stage), "set", archive)
    return Target("alias", validate_alias(alias or ""), "set")


def _ui_base(tracking_uri: str) -> str | None:
    """The MLflow UI of a tracking server (it serves its UI at its own address)."""
    return tracking_uri if tracking_uri.startswith(("http://", "https://")) else None


class _ClientEvidence:
    """A version's run and model files, read through the tracking client."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client

    def run(self, run_id: str) -> Any | None:
        from mlflow_approvals.assess import run_or_none

        return run_or_none(self.client.get_run, run_id)

    def files(self, mv: ModelVersion) -> Any:
        from mlflow_approvals.evidence import ArtifactFiles

        # Through the registry client: MlflowClient's method first reads the registered model
        # (to refuse prompts), a round trip the version we already hold makes unnecessary.
        registry = self.client._get_registry_client()  # type: ignore[no-untyped-call]
        uri = registry.get_model_version_download_uri(mv.name, str(mv.version))
        return ArtifactFiles.from_uri(str(uri), str(self.client._tracking_client.tracking_uri))


class _Local:
    """The lifecycle run in this process by the engine, as ``actor``."""

    def __init__(self, engine: Engine, actor: Actor) -> None:
        self.engine = engine
        self.actor = actor

    def file(
        self, name: str, version: str | None, target: Target, comment: str | None
    ) -> ApprovalRequest:
        if version is None:
            return self.engine.file_alias_deletion(self.actor, name, target.value, comment)
        return self.engine.file(self.actor, name, version, target, comment)

    def filed(
        self, name: str, version: str, target: Target, comment: str | None
    ) -> tuple[ApprovalRequest, bool]:
        return self.engine.filed(self.actor, name, version, target, comment)

    def sign(
        self, name: str, version: str, decision: Decision, comment: str | None, rid: str | None
    ) -> ApprovalRequest:
        return self.engine.sign(self.actor, name, version, decision, comment, rid)

    def signed(
        self, name: str, version: str, decision: Decision, comment: str | None, rid: str | None
    ) -> tuple[ApprovalRequest, bool]:
        return self.engine.signed(self.actor, name, version, decision, comment, rid)

    def cancel(
        self, name: str, version: str, comment: str | None, rid: str | None
    ) -> ApprovalRequest:
        return self.engine.cancel(self.actor, name, version, comment, rid)

    def apply(self, name: str, version: str, rid: str | None) -> ApprovalRequest:
        return self.engine.apply(self.actor, name, version, rid)

    def get(self, name: str, version: str, rid: str | None) -> ApprovalRequest:
        return self.engine.get(name, version, rid)

    def list_requests(self, name: str | None, status: Status | None) -> list[ApprovalRequest]:
        return self.engine.list_requests(name, status)

    def break_glass(
        self, name: str, version: str, target: Target, reason: str | None
    ) -> ApprovalRequest:
        return self.engine.break_glass(self.actor, name, version, target, reason)

    def check(self, name: str, version: str, target: Target) -> CheckReport:
        return self.engine.check(name, version, target)


class _Remote:
    """The lifecycle run by the approvals server; its error answers raised as our errors."""

    def __init__(self, remote: RemoteLifecycle) -> None:
        self.remote = remote

    def file(
        self, name: str, version: str | None, target: Target, comment: str | None
    ) -> ApprovalRequest:
        return _remote_call(lambda: self.remote.file(name, version, target, comment))

    def filed(
        self, name: str, version: str, target: Target, comment: str | None
    ) -> tuple[ApprovalRequest, bool]:
        return _remote_call(lambda: self.remote.filed(name, version, target, comment))

    def sign(
        self, name: str, version: str, decision: Decision, comment: str | None, rid: str | None
    ) -> ApprovalRequest:
        return _remote_call(lambda: self.remote.sign(name, version, decision, comment, rid))

    def signed(
        self, name: str, version: str, decision: Decision, comment: str | None, rid: str | None
    ) -> tuple[ApprovalRequest, bool]:
        return _remote_call(lambda: self.remote.signed(name, version, decision, comment, rid))

    def cancel(
        self, name: str, version: str, comment: str | None, rid: str | None
    ) -> ApprovalRequest:
        return _remote_call(lambda: self.remote.cancel(name, version, comment, rid))

    def apply(self, name: str, version: str, rid: str | None) -> ApprovalRequest:
        return _remote_call(lambda: self.remote.apply(name, version, rid))

    def get(self, name: str, version: str, rid: str | None) -> ApprovalRequest:
        return _remote_call(lambda: self.remote.get(name, version, rid))

    def list_requests(self, name: str | None, status: Status | None) -> list[ApprovalRequest]:
        return _remote_call(lambda: self.remote.list_requests(name, status))

    def break_glass(
        self, name: str, version: str, target: Target, reason: str | None
    ) -> ApprovalRequest:
        return _remote_call(lambda: self.remote.break_glass(name, version, target, reason))

    def check(self, name: str, version: str, target: Target) -> CheckReport:
        from mlflow_approvals.checks import CheckReport

        return CheckReport.from_dict(_remote_call(lambda: self.remote.check(name, version, target)))


_T = TypeVar("_T")


def _remote_call(step: Callable[[], _T]) -> _T:
    """Run ``step``; an error answer of the server becomes the matching ApprovalError."""
    from mlflow_approvals import errors
    from mlflow_approvals.remote import RemoteError

    try:
        return step()
    except RemoteError as exc:
        kind = getattr(errors, exc.kind or "", None)
        if kind is errors.ChecksFailed and exc.checks is not None:
            from mlflow_approvals.checks import CheckReport

            raise errors.ChecksFailed(exc.message, CheckReport.from_dict(exc.checks)) from None
        if isinstance(kind, type) and issubclass(kind, errors.ApprovalError):
            if kind in (errors.ApprovalPending, errors.ChecksFailed):
                kind = errors.InvalidRequest
            raise kind(exc.message) from None
        from mlflow.exceptions import MlflowException
        from mlflow.protos import databricks_pb2

        code = getattr(databricks_pb2, exc.error_code, databricks_pb2.INTERNAL_ERROR)
        raise MlflowException(exc.message, error_code=code) from None
