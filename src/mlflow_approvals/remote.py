"""The approval endpoints of an enforcing server, seen from the client: one HTTP request a step.

:func:`probe` asks a tracking server whether it runs the approvals app (``GET .../info``; once
per process and URI). When it does, ``ApprovalClient`` and the command line send each step to
the server, which runs the engine under the authenticated user: a sign-off is one round trip,
and the apply happens on the server.

Credentials and TLS settings come from the environment variables MLflow's own client reads
(``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``,
``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH``,
``MLFLOW_TRACKING_CLIENT_CERT_PATH``), so the same settings serve both. This module imports
``requests`` and the pure wire format only, so a command against an enforcing server starts
without importing MLflow.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow_approvals import wire
from mlflow_approvals.lifecycle import ApprovalRequest, Status, Target, utcnow

__all__ = ["RemoteError", "RemoteLifecycle", "probe"]

_PROBED: dict[str, dict[str, Any] | None] = {}
_LOCK = threading.Lock()


@dataclass
class RemoteError(Exception):
    """An error answer of the approvals server: MLflow's error code, our error class, message."""

    status: int
    error_code: str
    message: str
    kind: str | None = None
    checks: Mapping[str, Any] | None = None  # ChecksFailed: the report, as CheckReport.to_dict

    def __str__(self) -> str:
        return self.message


class RemoteLifecycle:
    """The engine's steps, run by the approvals server at ``base_uri`` under the signed-in user."""

    def __init__(
        self,
        base_uri: str,
        info: Mapping[str, Any] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.base_uri = base_uri.rstrip("/")
        self.info = dict(info or {})
        self.auth = auth

    @property
    def user(self) -> str | None:
        """Who the server authenticated this client as."""
        user = self.info.get("user")
        return None if user is None else str(user)

    # -- the steps ------------------------------------------------------------------------
    def file(
        self, name: str, version: str | None, target: Target, comment: str | None
    ) -> ApprovalRequest:
        return self.filed(name, version, target, comment)[0]

    def filed(
        self, name: str, version: str | None, target: Target, comment: str | None
    ) -> tuple[ApprovalRequest, bool]:
        """The request, and False when it was open already (the server filed nothing)."""
        params: dict[str, Any] = {"name": name, "comment": comment, "action": target.action}
        if version is not None:
            params["version"] = version
        return self._step("request", {**params, **_target_params(target)})

    def sign(
        self, name: str, version: str, decision: str, comment: str | None, rid: str | None
    ) -> ApprovalRequest:
        return self.signed(name, version, decision, comment, rid)[0]

    def signed(
        self, name: str, version: str, decision: str, comment: str | None, rid: str | None
    ) -> tuple[ApprovalRequest, bool]:
        """The request, and False when the caller had signed it so already (nothing written)."""
        action = "approve" if decision == "approve" else "reject"
        return self._step(
            action, {"name": name, "version": version, "comment": comment, "request_id": rid}
        )

    def cancel(
        self, name: str, version: str, comment: str | None, rid: str | None
    ) -> ApprovalRequest:
        params = {"name": name, "version": version, "comment": comment, "request_id": rid}
        return self._one("cancel", params)

    def apply(self, name: str, version: str, rid: str | None) -> ApprovalRequest:
        return self._one("apply", {"name": name, "version": version, "request_id": rid})

    def get(self, name: str, version: str, rid: str | None) -> ApprovalRequest:
        return self._one("get", {"name": name, "version": version, "request_id": rid})

    def list_requests(self, name: str | None, status: Status | None) -> list[ApprovalRequest]:
        params = {"name": name, "status": "all" if status is None else status.value}
        body = call(self.base_uri, "list", params, self.auth)
        now = utcnow()
        return [wire.decode_request(item, now) for item in body.get("requests", [])]

    def break_glass(
        self, name: str, version: str, target: Target, reason: str | None
    ) -> ApprovalRequest:
        params = {"name": name, "version": version, "reason": reason}
        return self._one("break-glass", {**params, **_target_params(target)})

    def check(self, name: str, version: str, target: Target) -> dict[str, Any]:
        """The dry run of the checks, on the server; the report's dict."""
        params = {"name": name, "version": version, **_target_params(target)}
        return call(self.base_uri, "check", params, self.auth)

    def reconcile(self, name: str) -> dict[str, Any]:
        """Run reconcile on the server (it alone may write the audit log); the report's dict."""
        return call(self.base_uri, "reconcile", {"name": name}, self.auth)

    def seal(self, name: str, min_events: int = 1) -> dict[str, Any]:
        """Seal the model's audit log on the server (it alone may write the log); the report's
        dict."""
        return call(self.base_uri, "seal", {"name": name, "min_events": min_events}, self.auth)

    def _one(self, action: str, params: Mapping[str, Any]) -> ApprovalRequest:
        return wire.decode_request(call(self.base_uri, action, params, self.auth), utcnow())

    def _step(self, action: str, params: Mapping[str, Any]) -> tuple[ApprovalRequest, bool]:
        body = call(self.base_uri, action, params, self.auth)
        return wire.decode_request(body, utcnow()), body.get("new") is not False


def _target_params(target: Target) -> dict[str, Any]:
    """A target as the endpoints' parameters."""
    if target.kind == "stage":
        return {
            "stage": target.value,
            "archive_existing_versions": target.archive_existing_versions,
        }
    return {"alias": target.value}


def probe(
    base_uri: str, auth: tuple[str, str] | None = None, refresh: bool = False
) -> dict[str, Any] | None:
    """The approvals server's ``info`` when ``base_uri`` runs the approvals app, else None.

    Asked once per process, URI and user (``refresh`` asks again). A server that does not
    answer is None (not remembered); one that refuses the credentials raises RemoteError (401).
    """
    user = auth[0] if auth else os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    key = f"{user}@{base_uri.rstrip('/')}"
    with _LOCK:
        if key in _PROBED and not refresh:
            return _PROBED[key]
    import requests

    try:
        info: dict[str, Any] | None = call(base_uri, "info", {}, auth)
    except RemoteError as exc:
        # A plain server answers 404/405 for a route it lacks; basic-auth (fail-closed) answers
        # a plain 403. Ours always names its error class, so those are not mistaken for it.
        if exc.kind is not None or exc.status not in (403, 404, 405):
            raise
        info = None
    except requests.ConnectionError:
        return None  # not cached: MLflow's own call then says the server is unreachable
    if info is not None and info.get("app") != "mlflow-approvals":
        info = None
    with _LOCK:
        _PROBED[key] = info
    return info


def call(
    base_uri: str,
    action: str,
    params: Mapping[str, Any],
    auth: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """One request to the approval endpoint ``action``; the JSON answer, or RemoteError.

    ``auth`` (user, password) overrides the credentials in the environment.
    """
    import requests

    method = wire.ACTIONS[action]
    url = base_uri.rstrip("/") + wire.rest_path(action)
    clean = {k: v for k, v in params.items() if v is not None}
    kwargs: dict[str, Any] = _session_settings()
    if auth is not None:
        kwargs["auth"] = auth
    if method == "GET":
        kwargs["params"] = clean
    else:
        kwargs["json"] = clean
    timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 120)
    response = requests.request(method, url, timeout=timeout, **kwargs)
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400 or not isinstance(body, dict):
        doc = body if isinstance(body, dict) else {}
        raise RemoteError(
            response.status_code,
            str(doc.get("error_code") or "INTERNAL_ERROR"),
            str(doc.get("message") or f"HTTP {response.status_code} from {url}"),
            doc.get("mlflow_approvals_error"),
            doc.get("checks") if isinstance(doc.get("checks"), dict) else None,
        )
    return body


def _session_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``requests`` keyword arguments for MLflow's tracking credentials and TLS settings."""
    env = os.environ if environ is None else environ
    kwargs: dict[str, Any] = {}
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    headers = {}
    if user and password:
        kwargs["auth"] = (user, password)
    elif env.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
    if headers:
        kwargs["headers"] = headers
    if (env.get("MLFLOW_TRACKING_INSECURE_TLS") or "").lower() == "true":
        kwargs["verify"] = False
    elif env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        kwargs["verify"] = env["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    if env.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        kwargs["cert"] = env["MLFLOW_TRACKING_CLIENT_CERT_PATH"]
    return kwargs
