"""The gate's hooks: every direct write is judged before MLflow's handler runs, and recorded.

* :meth:`Gate.before_request` (a Flask ``before_request`` hook, registered after basic-auth's so
  the caller is authenticated first) finds the request's door (:mod:`.routes`), reads its
  parameters exactly as MLflow's handler will (MLflow's own parser), and asks
  :func:`.judge.judge`. Under ``enforce`` a refused write gets a 403 with MLflow's
  ``PERMISSION_DENIED`` code and a message naming the approval command, and an
  ``attempt.denied`` event; under ``report`` it goes through with a ``gate.bypassed`` event;
  under ``off`` the gate does nothing. A write that goes through is recorded first, as a
  ``registry.changed`` event with the authenticated actor and the values before and after
  (intent before effect: when the audit store cannot be written, the write is refused).
* :meth:`Gate.after_request` records ``registry.unchanged`` when MLflow's handler then failed,
  so the intent is not mistaken for a change.
* :class:`GateMiddleware` wraps the FastAPI app for the routes MLflow serves natively under uvicorn
  (artifact uploads), which never reach Flask's hooks.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from mlflow_approvals import tags as T
from mlflow_approvals.audit import make_event
from mlflow_approvals.server import routes
from mlflow_approvals.server.identity import current_actor
from mlflow_approvals.server.judge import Judgement, judge

if TYPE_CHECKING:
    from flask import Response
    from mlflow.entities.model_registry import ModelVersion

    from mlflow_approvals.engine import Engine
    from mlflow_approvals.lifecycle import Actor
    from mlflow_approvals.policy import Rule
    from mlflow_approvals.server.settings import ServerSettings

_log = logging.getLogger(__name__)
_INTENT = "mlflow_approvals_intent"
ACCESS_LOG = "mlflow-approvals/access"
"""The log of user and permission changes. A registered model's name cannot contain '/', so
no model's log can be mistaken for it."""
_ACCESS_ROUTE = re.compile(
    r"/(?:ajax-)?api/\d+\.\d+/mlflow/(?:users|roles)(?:/|$)|/permissions(?:/|$)"
)

__all__ = ["Gate", "GateMiddleware", "RegistryView"]

Scope = MutableMapping[str, Any]


class RegistryView:
    """The gate's :class:`~.judge.View` over the engine's ports."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._read: dict[tuple[str, str], ModelVersion | None] = {}

    def rule_for(self, name: str, kind: str, value: str) -> Rule | None:
        return self._engine.rule_for(name, kind, value)

    def version(self, name: str, version: str) -> ModelVersion | None:
        """The version as read once for this view (a view lives for one request)."""
        key = (name, version)
        if key not in self._read:
            try:
                self._read[key] = self._engine.registry.get_model_version(name, version)
            except Exception:
                self._read[key] = None
        return self._read[key]

    def versions(self, name: str) -> list[ModelVersion]:
        return self._engine.registry.versions_of(name)

    def model_aliases(self, name: str) -> dict[str, str]:
        try:
            model = self._engine.registry.get_registered_model(name)
        except Exception:
            return {}
        return {str(a): str(v) for a, v in (model.aliases or {}).items()}

    def audit_experiment(self) -> str | None:
        try:
            return self._engine.audit.experiment_id(create=False)
        except Exception:
            return None

    def run_experiment(self, run_id: str) -> str | None:
        try:
            return str(self._engine.audit.tracking.get_run(run_id).info.experiment_id)
        except Exception:
            return None


class Gate:
    """The server's gate over every MLflow route that can change the registry."""

    def __init__(self, engine: Engine, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.table = routes.route_table()

    # ------------------------------------------------------------------ Flask ------------
    def before_request(self) -> Response | None:
        """Judge the current Flask request; a Response refuses it."""
        from flask import g, request

        if self.settings.enforcement == "off":
            return None
        found = routes.door_for(request.path, request.method, self.table)
        if found is None:
            return self._access_change(request)
        route, door = found
        try:
            params = _flask_params(route, request)
        except Exception as exc:  # MLflow's handler would refuse it too; never guess
            return _refuse(f"the request could not be read ({exc}); nothing was changed", 400)
        actor = current_actor(self.settings)
        if actor is None and self.settings.enforcement == "enforce":
            return _refuse(
                "the server could not tell who you are (no identity header from the "
                "authenticating proxy): registry writes are refused until it can",
                403,
            )
        view = RegistryView(self.engine)  # per request: the judge and the record share its reads
        judgement = judge(door, params, view)
        if judgement.refusal and self.settings.enforcement == "enforce":
            record_change(
                self.engine, actor, judgement, route, "attempt.denied", best_effort=True, view=view
            )
            return _refuse(judgement.refusal, 403)
        kind = "gate.bypassed" if judgement.refusal else "registry.changed"
        if judgement.recorded:
            try:
                digest = record_change(self.engine, actor, judgement, route, kind, view=view)
            except Exception as exc:
                return _refuse(
                    f"the audit log of '{judgement.name}' could not be written ({exc}); "
                    "nothing was changed. Check the audit artifact store and try again",
                    409,
                )
            setattr(g, _INTENT, (judgement, route, digest))
        return None

    def _access_change(self, request: Any) -> Response | None:
        """Record a user, role or permission change (basic-auth's routes) before it happens."""
        from flask import g

        if request.method in ("GET", "HEAD", "OPTIONS") or not _ACCESS_ROUTE.search(request.path):
            return None
        params = dict(request.args.to_dict())
        body = request.get_json(silent=True)
        if isinstance(body, dict):
            params.update(body)
        params.update(request.form.to_dict())
        clean = {
            k: ("(redacted)" if "password" in k.lower() or "token" in k.lower() else v)
            for k, v in params.items()
        }
        judgement = Judgement(
            None, ACCESS_LOG, None, "access", None, {"route": request.path, "params": clean}
        )
        actor = current_actor(self.settings)
        try:
            digest = record_change(
                self.engine, actor, judgement, f"{request.method} {request.path}", "access.changed"
            )
        except Exception as exc:
            return _refuse(f"the access log could not be written ({exc}); nothing was changed", 409)
        setattr(g, _INTENT, (judgement, request.path, digest))
        return None

    def after_request(self, response: Response) -> Response:
        """Record that an announced write did not happen when MLflow's handler failed."""
        from flask import g

        intent = getattr(g, _INTENT, None)
        if intent is not None and response.status_code >= 400:
            judgement, route, digest = intent
            actor = current_actor(self.settings)
            extra = {"status": response.status_code}
            record_change(
                self.engine,
                actor,
                judgement,
                route,
                "registry.unchanged",
                True,
                [digest],
                extra=extra,
            )
        return response


_CLOSES_TRAIL = ("delete_version", "delete_model", "rename_model")
"""Direct writes after which events lose the tags that anchored them: their record is anchored
in the audit run instead (:meth:`~mlflow_approvals.audit.AuditStore.anchor_deletion`)."""


def record_change(
    engine: Engine,
    actor: Actor | None,
    judgement: Judgement,
    route: str,
    kind: str,
    best_effort: bool = False,
    parents: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    view: RegistryView | None = None,
) -> str | None:
    """Write the audit event of a judged direct write; return its hash (None: not recorded).

    Shared by the server's gate and ``ApprovalClient`` in client mode, so both record a write
    the same way. A deletion or rename that goes through names the heads of every version it
    takes away as parents, and is anchored in the audit run before it happens: the events
    whose tags it deletes stay anchored as its ancestors, and ``audit verify`` can tell a
    recorded deletion from a version that vanished.
    """
    if judgement.name is None:
        return None
    from mlflow_approvals.lifecycle import Actor

    who = actor or Actor.named("unknown")
    view = view or RegistryView(engine)
    mv = None
    if judgement.version is not None:
        mv = view.version(judgement.name, judgement.version)
    facts = T.VersionFacts(judgement.name, str(mv.version), mv.tags or {}) if mv else None
    heads = list(facts.event_hashes() if facts else ())
    closes = kind == "registry.changed" and judgement.change in _CLOSES_TRAIL
    if closes and judgement.version is None:
        for other in view.versions(judgement.name):
            tags = other.tags or {}
            heads += T.VersionFacts(judgement.name, str(other.version), tags).event_hashes()
    event = make_event(
        type=kind,
        name=judgement.name,
        version=judgement.version,
        actor=who.id,
        display_name=who.display_name,
        comment=judgement.refusal,
        before=judgement.before,
        after=judgement.after,
        policy_hash=engine.policy.content_hash,
        run_id=None if mv is None else mv.run_id,
        source=None if mv is None else mv.source,
        parents=sorted(set(heads)) + list(parents or ()),
        time=engine.clock(),
        extra={"change": judgement.change, "route": route, **(extra or {})},
    )
    try:
        digest = engine.audit.append(event)
        if closes and (heads or judgement.version is None):
            engine.audit.anchor_deletion(judgement.name, judgement.version, digest)
        return digest
    except Exception as exc:
        if not best_effort:
            raise
        _log.warning("could not audit %s on %s: %s", kind, judgement.name, exc)
        return None


class GateMiddleware:
    """An ASGI middleware judging artifact writes, which MLflow serves natively under uvicorn
    (they never reach Flask's hooks)."""

    def __init__(self, app: Any, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        gate = self.gate
        if scope.get("type") == "http" and gate.settings.enforcement != "off":
            path, method = str(scope.get("path", "")), str(scope.get("method", "GET"))
            found = routes.door_for(path, method, gate.table)
            if found is not None and found[1] == "write_artifacts":
                judgement = judge(
                    found[1], {"artifact_path": _artifact_path(path)}, RegistryView(gate.engine)
                )
                if judgement.refusal and gate.settings.enforcement == "enforce":
                    await _asgi_refuse(send, judgement.refusal)
                    return None
        return await self.app(scope, receive, send)


def _flask_params(route: str, request: Any) -> dict[str, Any]:
    """The request's parameters as MLflow's handler reads them."""
    params: dict[str, Any] = dict(request.view_args or {})
    if route.startswith("handler:"):
        params.update(request.args.to_dict())
        return params
    if route.startswith("artifacts."):
        return params
    from google.protobuf.json_format import MessageToDict
    from mlflow.protos import model_registry_pb2, service_pb2
    from mlflow.server.handlers import _get_request_message

    message_class = getattr(model_registry_pb2, route, None) or getattr(service_pb2, route, None)
    if message_class is None:
        return params
    message = _get_request_message(message_class(), flask_request=request)  # type: ignore[no-untyped-call]
    params.update(MessageToDict(message, preserving_proto_field_name=True))
    if route == "CreateModelVersion" or route == "CreateRegisteredModel":
        params["tags"] = [{"key": t.key, "value": t.value} for t in message.tags]
    return params


def _artifact_path(path: str) -> str:
    marker = "/mlflow-artifacts/artifacts/"
    return path.split(marker, 1)[1] if marker in path else ""


def _refuse(message: str, status: int) -> Response:
    from flask import Response

    code = "PERMISSION_DENIED" if status == 403 else "INVALID_PARAMETER_VALUE"
    if status == 409:
        code = "ABORTED"
    body = json.dumps({"error_code": code, "message": message})
    return Response(body, status=status, mimetype="application/json")


async def _asgi_refuse(send: Any, message: str) -> None:
    body = json.dumps({"error_code": "PERMISSION_DENIED", "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
