"""The ``approvals`` server app: ``mlflow server --app-name approvals``.

The factory, :func:`create_app`, runs once per server worker. It

1. reads the operator's settings (:mod:`.settings`) and the policy, and refuses to start when
   they cannot be used (no policy; no authentication while enforcing, unless opted in);
2. composes MLflow's basic-auth (``mlflow.server.auth.create_app``) by default, so that every
   request is authenticated before our hooks run;
3. builds one :class:`~mlflow_approvals.engine.Engine` over the server's own registry store and
   an audit sink writing straight to the server's artifact store (:mod:`.sink`);
4. adds the approval endpoints (:mod:`.api`) and the gate (:mod:`.gate`) to MLflow's Flask app,
   and wraps the FastAPI app MLflow serves under uvicorn so its native write routes are gated
   too.

Nothing lives only in memory: every fact is a tag in the registry, every event an artifact.
"""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ["MINIMUM_MLFLOW", "check_mlflow_version", "create_app"]

_log = logging.getLogger(__name__)


# The gate is keyed by the route table of the MLflow it runs in, and the route-coverage test
# pins that table on the MLflow the suite runs: older lines are not claimed (docs/server.md).
MINIMUM_MLFLOW = (3, 17)


def check_mlflow_version(version: str) -> None:
    """Refuse to serve on an MLflow older than :data:`MINIMUM_MLFLOW` (SystemExit, said why)."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return  # a development build: let the route-coverage checks speak
    if found < MINIMUM_MLFLOW:
        need = ".".join(map(str, MINIMUM_MLFLOW))
        raise SystemExit(
            f"mlflow-approvals: cannot start the approvals server: it needs MLflow {need} or "
            f"newer, and this is MLflow {version}. The client, the audit log and the command "
            f"line work on MLflow 2.22 and newer; for the server, "
            f'pip install "mlflow-approvals[server]" (it brings a supported MLflow).'
        )


def create_app(app: Any = None) -> Any:
    """Build the approvals server app (MLflow's ``mlflow.app`` entry point ``approvals``)."""
    import mlflow
    from mlflow.server import app as flask_app

    check_mlflow_version(mlflow.__version__)

    from mlflow_approvals.engine import Engine
    from mlflow_approvals.errors import PolicyError
    from mlflow_approvals.policy import load_policy
    from mlflow_approvals.ports import Registry
    from mlflow_approvals.server import api, web
    from mlflow_approvals.server.gate import Gate
    from mlflow_approvals.server.settings import SettingsError, read_settings
    from mlflow_approvals.server.sink import server_audit_store

    flask_app = app if app is not None else flask_app
    try:
        settings = read_settings(os.environ)
        policy = load_policy(settings.policy_path)
    except (SettingsError, PolicyError) as exc:
        message = getattr(exc, "message", str(exc))
        raise SystemExit(
            f"mlflow-approvals: cannot start the approvals server: {message}"
        ) from None
    from mlflow_approvals.sagemaker import missing_boto3

    unservable = missing_boto3(policy.rules)
    if unservable:
        raise SystemExit(f"mlflow-approvals: cannot start the approvals server: {unservable}")
    if settings.auth == "none":
        _log.warning(
            "mlflow-approvals: MLFLOW_APPROVALS_AUTH=none: nobody is authenticated; every "
            "request, sign-off and change is recorded as 'anonymous', anyone who can reach this "
            "server acts as 'anonymous', and a gated request can only complete under a rule with "
            "separation_of_duties: false whose roles include 'anonymous'"
        )
    if settings.enforcement != "enforce":
        _log.warning(
            "mlflow-approvals: MLFLOW_APPROVALS_ENFORCEMENT=%s: direct writes to gated targets "
            "are %s",
            settings.enforcement,
            "allowed and audited" if settings.enforcement == "report" else "not gated",
        )

    from mlflow.server.handlers import _get_model_registry_store

    from mlflow_approvals.server.sources import ServerEvidence

    audit = server_audit_store()
    evidence = ServerEvidence(audit.server_tracking, _get_model_registry_store)
    engine = Engine(Registry(_get_model_registry_store), audit, policy, evidence=evidence)
    gate = Gate(engine, settings)
    prefix = os.environ.get("_MLFLOW_STATIC_PREFIX", "")  # mlflow.server.STATIC_PREFIX_ENV_VAR

    if settings.auth == "basic-auth":
        from mlflow.server.auth import create_app as basic_auth_app

        served = basic_auth_app(flask_app)  # registers its before_request hook first
    else:
        served = _served(flask_app)
    api.register(flask_app, engine, settings, prefix)
    web.register(flask_app, engine, settings, prefix)  # the pages, behind the same auth
    flask_app.before_request(gate.before_request)
    flask_app.after_request(gate.after_request)
    if served is flask_app:
        return flask_app
    return _wrap_asgi(served, gate)


def _served(flask_app: Any) -> Any:
    """What MLflow itself serves for this server: the FastAPI app under uvicorn, else Flask."""
    if os.environ.get("_MLFLOW_SGI_NAME") == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(flask_app)
    return flask_app


def _wrap_asgi(fastapi_app: Any, gate: Any) -> Any:
    """Put the gate in front of the FastAPI app's native routes (as an ASGI middleware)."""
    from mlflow_approvals.server.gate import GateMiddleware

    fastapi_app.add_middleware(GateMiddleware, gate=gate)
    return fastapi_app
