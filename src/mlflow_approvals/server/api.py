"""The approval endpoints: the engine's steps over HTTP, under the authenticated user.

``<static prefix>/api/2.0/mlflow-approvals/<action>`` (and ``/ajax-api/2.0/...``):

=========  ======  =====================================================================
action     method  parameters (JSON body for POST, query string for GET)
=========  ======  =====================================================================
info       GET     (none): the server's enforcement, identity mode, policy hash, and who
                   the caller is authenticated as
request    POST    name, version, and stage (+ archive_existing_versions) or alias (+
                   action "set"/"delete"), comment
approve    POST    name, version, comment, request_id
reject     POST    name, version, comment (required), request_id
cancel     POST    name, version, comment, request_id
apply      POST    name, version, request_id
get        GET     name, version, request_id
list       GET     name, status (default pending; "all" for every status)
reconcile  POST    name: record and report changes made around the gate
seal       POST    name, min_events (default 1): copy the model's loose audit events into
                   anchored segments (the report)
break-glass POST   name, version, stage or alias, reason: apply at once (an emergency, by a
                   role the rule names), then review by the rule's levels
check      GET     name, version, stage or alias: a dry run of the rule's checks (the report)
=========  ======  =====================================================================

Each answer is one request in its wire form (:mod:`mlflow_approvals.wire`), or ``requests``
for ``list``; ``request``, ``approve`` and ``reject`` add ``new`` (false when the step had been
done already: the open request for the target returned, a sign-off the caller had made).
Errors are MLflow's JSON error documents with a 4xx status. A name the caller claims is
ignored: the actor is the authenticated user (:mod:`.identity`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mlflow_approvals import wire
from mlflow_approvals._version import __version__
from mlflow_approvals.errors import InvalidRequest, NotAuthorized
from mlflow_approvals.lifecycle import Actor, ApprovalRequest, Target
from mlflow_approvals.server.identity import current_actor
from mlflow_approvals.targets import parse_status, validate_alias, validate_stage, validate_version

if TYPE_CHECKING:
    from flask import Flask, Response

    from mlflow_approvals.engine import Engine
    from mlflow_approvals.server.settings import ServerSettings

__all__ = ["register"]

_MAX_BODY = 64 * 1024  # a request body larger than this is refused before it is parsed


def register(app: Flask, engine: Engine, settings: ServerSettings, prefix: str = "") -> None:
    """Add the approval endpoints to ``app`` under both API prefixes."""
    handlers: dict[str, Callable[[Actor, Mapping[str, Any]], Any]] = {
        "request": lambda actor, p: _file(engine, actor, p),
        "approve": lambda actor, p: _answer(
            engine.signed(actor, *_version_of(p), "approve", _comment(p), _rid(p))
        ),
        "reject": lambda actor, p: _answer(
            engine.signed(actor, *_version_of(p), "reject", _comment(p), _rid(p))
        ),
        "cancel": lambda actor, p: engine.cancel(actor, *_version_of(p), _comment(p), _rid(p)),
        "apply": lambda actor, p: engine.apply(actor, *_version_of(p), _rid(p)),
        "get": lambda actor, p: engine.get(*_version_of(p), _rid(p)),
        "list": lambda actor, p: _list(engine, p),
        "info": lambda actor, p: _info(engine, settings, actor),
        "reconcile": lambda actor, p: _reconcile(engine, p),
        "seal": lambda actor, p: _seal(engine, p),
        "break-glass": lambda actor, p: engine.break_glass(
            actor, *_version_of(p), _target(p), _text(p, "reason", required=False)
        ),
        "check": lambda actor, p: engine.check(*_version_of(p), _target(p)).to_dict(),
    }
    for action, method in wire.ACTIONS.items():
        view = _view(action, handlers[action], settings)
        for api in ("api", "ajax-api"):
            path = f"{prefix.rstrip('/')}/{api}/2.0{wire.API_BASE}/{action}"
            app.add_url_rule(
                path, endpoint=f"mlflow_approvals_{api}_{action}", view_func=view, methods=[method]
            )
            if settings.auth == "basic-auth":
                _admit(path, method)


def _view(
    action: str,
    handler: Callable[[Actor, Mapping[str, Any]], Any],
    settings: ServerSettings,
) -> Callable[[], Response]:
    def view() -> Response:
        from flask import jsonify
        from mlflow.exceptions import MlflowException

        try:
            actor = current_actor(settings)
            if actor is None:
                raise NotAuthorized(
                    "the server could not tell who you are: go through the authenticating "
                    f"proxy (it sets {settings.identity_header})"
                    if settings.auth == "trusted-header"
                    else "the server could not tell who you are: sign in "
                    "(MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
                )
            params = _params()
            _check_permission(settings, action, params)
            result = handler(actor, params)
            if isinstance(result, list):
                result = [r for r in result if _may_read(settings, r.name)]
            if isinstance(result, list):  # (filtered above)
                return jsonify({"requests": [wire.encode_request(r) for r in result]})
            if isinstance(result, dict):
                return jsonify(result)
            return jsonify(wire.encode_request(result))
        except MlflowException as exc:
            return _error(exc)

    view.__name__ = f"mlflow_approvals_{action}"
    return view


def _admit(path: str, method: str) -> None:
    """Tell basic-auth (which refuses routes it has no validator for) that this route is
    authorised inside its view: basic-auth authenticates the caller, the view checks the
    model permission the step needs."""
    from mlflow.server import auth

    auth.BEFORE_REQUEST_VALIDATORS[(path, method)] = _authenticated


def _authenticated() -> bool:
    return True


_NEEDS = {"request": "can_update", "break-glass": "can_update", "list": None, "info": None}


def _permission(name: str) -> Any:
    """basic-auth's permission of the current user on registered model ``name``."""
    from mlflow.server import auth

    if auth.sender_is_admin():  # type: ignore[no-untyped-call]
        return None
    return auth._get_registered_model_permission(name)


def _check_permission(settings: ServerSettings, action: str, params: Mapping[str, Any]) -> None:
    """Under basic-auth, as for MLflow's own routes: filing needs EDIT on the model, everything
    else READ (the policy's roles then decide who may sign)."""
    need = _NEEDS.get(action, "can_read")
    if settings.auth != "basic-auth" or need is None:
        return
    name = _text(params, "name")
    assert name is not None
    permission = _permission(name)
    if permission is not None and not getattr(permission, need):
        what = "EDIT" if need == "can_update" else "READ"
        raise NotAuthorized(
            f"you need {what} permission on registered model '{name}' for this; ask its owner "
            "or an admin to grant it"
        )


def _may_read(settings: ServerSettings, name: str) -> bool:
    if settings.auth != "basic-auth":
        return True
    permission = _permission(name)
    return permission is None or bool(permission.can_read)


def _error(exc: Any) -> Response:
    import json

    from flask import Response

    status = exc.get_http_status_code()
    if status >= 500:  # MLflow's client retries 5xx for ~30 s: a refusal must be a 4xx
        status = 409
    body = json.loads(exc.serialize_as_json())
    body["mlflow_approvals_error"] = type(exc).__name__
    results = getattr(exc, "results", None)
    if results is not None:  # ChecksFailed: every check, as the dry run reports them
        body["checks"] = results.to_dict()
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _params() -> dict[str, Any]:
    from flask import request

    if request.method == "GET":
        return {k: v for k, v in request.args.items()}
    if (request.content_length or 0) > _MAX_BODY:
        raise InvalidRequest(f"the request body is larger than {_MAX_BODY} bytes")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidRequest(
            "send the parameters as a JSON object (Content-Type: application/json)"
        )
    return body


def _text(params: Mapping[str, Any], key: str, required: bool = True) -> str | None:
    value = params.get(key)
    if value is None or value == "":
        if required:
            raise InvalidRequest(f"missing parameter '{key}'")
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise InvalidRequest(f"parameter '{key}' must be a string")
    return str(value)


def _version_of(params: Mapping[str, Any]) -> tuple[str, str]:
    name = _text(params, "name")
    assert name is not None
    return name, validate_version(_text(params, "version") or "")


def _comment(params: Mapping[str, Any]) -> str | None:
    return _text(params, "comment", required=False)


def _rid(params: Mapping[str, Any]) -> str | None:
    return _text(params, "request_id", required=False)


def _flag(params: Mapping[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidRequest(f"parameter '{key}' must be true or false")


def _file(engine: Engine, actor: Actor, params: Mapping[str, Any]) -> Any:
    name = _text(params, "name")
    assert name is not None
    stage, alias = _text(params, "stage", False), _text(params, "alias", False)
    action = _text(params, "action", False) or "set"
    if (stage is None) == (alias is None):
        raise InvalidRequest("name exactly one target: 'stage' or 'alias'")
    if action not in ("set", "delete") or (stage is not None and action != "set"):
        raise InvalidRequest("'action' is 'set', or 'delete' for an alias")
    comment = _comment(params)
    if alias is not None and action == "delete":
        return engine.file_alias_deletion(actor, name, alias, comment)
    version = validate_version(_text(params, "version") or "")
    return _answer(engine.filed(actor, name, version, _target(params), comment))


def _answer(step: tuple[ApprovalRequest, bool]) -> dict[str, Any]:
    """A step's request as the endpoints send it, with ``new``: False when the step found it
    done already (an open request for the target, a sign-off the caller had made)."""
    request, new = step
    return {**wire.encode_request(request), "new": new}


def _target(params: Mapping[str, Any]) -> Target:
    """The stage or alias (set) a step names."""
    stage, alias = _text(params, "stage", False), _text(params, "alias", False)
    if (stage is None) == (alias is None):
        raise InvalidRequest("name exactly one target: 'stage' or 'alias'")
    if stage is not None:
        archive = _flag(params, "archive_existing_versions")
        return Target("stage", validate_stage(stage), "set", archive)
    return Target("alias", validate_alias(alias or ""), "set")


def _list(engine: Engine, params: Mapping[str, Any]) -> Any:
    status = _text(params, "status", required=False) or "pending"
    wanted = None if status.lower() == "all" else parse_status(status)
    return engine.list_requests(_text(params, "name", required=False), wanted)


def _reconcile(engine: Engine, params: Mapping[str, Any]) -> dict[str, Any]:
    from mlflow_approvals.reconcile import reconcile_model

    name = _text(params, "name")
    assert name is not None
    return reconcile_model(engine, name).to_dict()


def _seal(engine: Engine, params: Mapping[str, Any]) -> dict[str, Any]:
    """Seal in the server, through its own audit sink: the gate refuses clients' writes to the
    audit run. READ on the model, as reconcile: sealing only adds copies and an anchor tag."""
    from mlflow_approvals.sealing import check_min_events, seal_model

    name = _text(params, "name")
    assert name is not None
    value = params.get("min_events")
    minimum = 1 if value is None else check_min_events(value)
    return seal_model(engine, name, minimum).to_dict()


def _info(engine: Engine, settings: ServerSettings, actor: Actor) -> dict[str, Any]:
    return {
        "app": "mlflow-approvals",
        "version": __version__,
        "enforcement": settings.enforcement,
        "auth": settings.auth,
        "policy_hash": engine.policy.content_hash,
        "user": actor.id,
    }
