"""mlflow-approvals: multi-level human sign-off in front of MLflow model promotion.

    from mlflow_approvals import ApprovalClient

    client = ApprovalClient(policy="policy.yaml")
    client.request_transition("fraud-model", 3, "Production")   # files a request
    client.approve("fraud-model", 3)                             # as each approver

Names are imported on first use (importing MLflow takes seconds), so ``import mlflow_approvals``
itself is instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mlflow_approvals._version import __version__

if TYPE_CHECKING:
    from mlflow_approvals.audit import AuditStore
    from mlflow_approvals.client import ApprovalClient
    from mlflow_approvals.errors import (
        AlreadyInEffect,
        ApprovalError,
        ApprovalPending,
        AuditUnavailable,
        ChecksFailed,
        InvalidRequest,
        ModelVersionNotFound,
        NotAuthorized,
        PolicyError,
        RequestNotFound,
        SageMakerUnavailable,
    )
    from mlflow_approvals.lifecycle import ApprovalRequest, SignOff, Status
    from mlflow_approvals.policy import Policy, Requirement, Rule, load_policy

_LAZY = {
    "ApprovalClient": "client",
    "AuditStore": "audit",
    "AlreadyInEffect": "errors",
    "ApprovalError": "errors",
    "ApprovalPending": "errors",
    "AuditUnavailable": "errors",
    "ChecksFailed": "errors",
    "InvalidRequest": "errors",
    "ModelVersionNotFound": "errors",
    "NotAuthorized": "errors",
    "PolicyError": "errors",
    "RequestNotFound": "errors",
    "SageMakerUnavailable": "errors",
    "ApprovalRequest": "lifecycle",
    "SignOff": "lifecycle",
    "Status": "lifecycle",
    "Policy": "policy",
    "Requirement": "policy",
    "Rule": "policy",
    "load_policy": "policy",
}

__all__ = [
    "AlreadyInEffect",
    "ApprovalClient",
    "ApprovalError",
    "ApprovalPending",
    "ApprovalRequest",
    "AuditStore",
    "AuditUnavailable",
    "ChecksFailed",
    "InvalidRequest",
    "ModelVersionNotFound",
    "NotAuthorized",
    "Policy",
    "PolicyError",
    "RequestNotFound",
    "Requirement",
    "Rule",
    "SageMakerUnavailable",
    "SignOff",
    "Status",
    "__version__",
    "load_policy",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlflow_approvals' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mlflow_approvals.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
