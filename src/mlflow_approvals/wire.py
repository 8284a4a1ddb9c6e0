"""The approval endpoints of the server app: their paths, and a request's form on the wire.

A request travels as its fact tags, exactly as they are stored (``facts``), beside the
human-readable view the command line prints (``request``). The client rebuilds the request from
the facts with the same decoders that read the tags, so nothing is lost on the way (signatures'
event hashes, the policy hash, the audit run) and there is one encoding, not two. A change no
rule gates has no facts; it travels as ``ungated`` with its target.

Pure: no MLflow, no HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from mlflow_approvals import tags as T
from mlflow_approvals.lifecycle import Actor, ApprovalRequest, Target, ungated

API_BASE = "/mlflow-approvals"
"""The endpoints live at ``<static prefix>/api/2.0/mlflow-approvals/<action>`` (and under
``/ajax-api/2.0`` for the browser)."""

ACTIONS: dict[str, str] = {
    "info": "GET",
    "request": "POST",
    "approve": "POST",
    "reject": "POST",
    "cancel": "POST",
    "apply": "POST",
    "get": "GET",
    "list": "GET",
    "reconcile": "POST",
    "seal": "POST",
    "break-glass": "POST",
    "check": "GET",
}

__all__ = ["ACTIONS", "API_BASE", "decode_request", "encode_request", "rest_path"]


def rest_path(action: str, prefix: str = "") -> str:
    """The REST path of ``action`` (``info``, ``request``, ``approve``, ...)."""
    return f"{prefix.rstrip('/')}/api/2.0{API_BASE}/{action}"


def encode_request(request: ApprovalRequest) -> dict[str, Any]:
    """A request as the endpoints send it."""
    if not request.id:  # applied at once: no rule gates the target
        target = request.record.target
        return {
            "request": request.to_dict(),
            "ungated": {
                "name": request.name,
                "version": request.version,
                "target": {
                    "kind": target.kind,
                    "value": target.value,
                    "action": target.action,
                    "archive_existing_versions": target.archive_existing_versions,
                },
                "actor": request.requester,
                "display_name": request.record.requester_name or request.requester,
                "policy_hash": request.record.policy_hash,
            },
        }
    return {
        "request": request.to_dict(),
        "name": request.name,
        "version": request.version,
        "facts": T.request_facts(request),
    }


def decode_request(body: Mapping[str, Any], now: datetime) -> ApprovalRequest:
    """The request an endpoint sent (raises ValueError when the body is not one)."""
    if "ungated" in body:
        u = body["ungated"]
        t = u["target"]
        target = Target(t["kind"], t["value"], t["action"], bool(t["archive_existing_versions"]))
        actor = Actor.named(str(u["actor"]), u.get("display_name"))
        return ungated(actor, str(u["name"]), str(u["version"]), target, u["policy_hash"], now)
    name, version = str(body["name"]), str(body["version"])
    facts = T.VersionFacts(name, version, dict(body["facts"]))
    if len(facts.requests) != 1:
        raise ValueError("the answer does not hold exactly one request")
    (rid,) = facts.requests
    return facts.request(rid, now)
