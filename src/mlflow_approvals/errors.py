"""The exception tree of mlflow-approvals.

Every error a user can meet has a class here, a message that says what to do, and an MLflow
error code, so that the tracking server answers with the right 4xx status and the command line
with the right exit code::

    MlflowException
    └── ApprovalError                 (INVALID_PARAMETER_VALUE, 400)
        ├── ApprovalPending           (ABORTED, 409)  the change waits for sign-off; not applied
        ├── NotAuthorized             (PERMISSION_DENIED, 403)
        ├── PolicyError               (INVALID_PARAMETER_VALUE, 400)
        ├── RequestNotFound           (RESOURCE_DOES_NOT_EXIST, 404)
        ├── InvalidRequest            (INVALID_PARAMETER_VALUE, 400)
        │   └── AlreadyInEffect       (INVALID_PARAMETER_VALUE, 400)  the target holds already
        ├── ModelVersionNotFound      (RESOURCE_DOES_NOT_EXIST, 404)  no such model/version/alias
        ├── ChecksFailed              (ABORTED, 409)  a check of the rule failed; nothing applied
        ├── AuditUnavailable          (ABORTED, 409)  the audit store could not be written
        └── SageMakerUnavailable      (ABORTED, 409)  SageMaker could not be read or changed

No code here has a 5xx error code: MLflow's REST client retries 5xx answers for about 30 seconds,
and a refusal must come back at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    ABORTED,
    INVALID_PARAMETER_VALUE,
    PERMISSION_DENIED,
    RESOURCE_DOES_NOT_EXIST,
)

if TYPE_CHECKING:
    from mlflow_approvals.checks import CheckReport
    from mlflow_approvals.lifecycle import ApprovalRequest

__all__ = [
    "AlreadyInEffect",
    "ApprovalError",
    "ApprovalPending",
    "AuditUnavailable",
    "ChecksFailed",
    "InvalidRequest",
    "ModelVersionNotFound",
    "NotAuthorized",
    "PolicyError",
    "RequestNotFound",
]


class ApprovalError(MlflowException):
    """Root of every error raised by mlflow-approvals."""

    error_code: int = INVALID_PARAMETER_VALUE

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, error_code=type(self).error_code, **kwargs)


class ApprovalPending(ApprovalError):
    """The change needs sign-off: a request was filed (or found) and nothing was applied.

    ``.request`` is the :class:`~mlflow_approvals.ApprovalRequest` that now waits.
    """

    error_code = ABORTED

    def __init__(self, message: str, request: ApprovalRequest) -> None:
        super().__init__(message)
        self.request = request


class NotAuthorized(ApprovalError):
    """The actor may not do this: no role at the open level, self-approval, or a denied target."""

    error_code = PERMISSION_DENIED


class PolicyError(ApprovalError):
    """The policy could not be loaded: the message names the file, the field and the problem."""

    error_code = INVALID_PARAMETER_VALUE


class RequestNotFound(ApprovalError):
    """No request matches: unknown request id, or no open request on that model version."""

    error_code = RESOURCE_DOES_NOT_EXIST


class InvalidRequest(ApprovalError):
    """The request cannot be filed or changed as asked: bad target, ended request, bad input."""

    error_code = INVALID_PARAMETER_VALUE


class AlreadyInEffect(InvalidRequest):
    """The registry already holds what the request asks for: nothing to approve, nothing filed.

    A rerun of a pipeline meets it after its promotion was applied; the command line reports it
    as done (exit 0), not as an error.
    """


class ModelVersionNotFound(ApprovalError):
    """The registered model, version or alias named does not exist."""

    error_code = RESOURCE_DOES_NOT_EXIST


class AuditUnavailable(ApprovalError):
    """The audit store could not be written, so the change it would record was not made."""

    error_code = ABORTED


class SageMakerUnavailable(ApprovalError):
    """SageMaker could not be read or changed, so the step it belongs to was not done."""

    error_code = ABORTED


class ChecksFailed(ApprovalError):
    """A check the rule demands failed, so nothing was filed (or applied).

    ``.results`` is the :class:`~mlflow_approvals.checks.CheckReport`: every check, passed or
    not, with its detail. ``.request`` is the request when the failure stopped its apply.
    """

    error_code = ABORTED

    def __init__(
        self, message: str, results: CheckReport, request: ApprovalRequest | None = None
    ) -> None:
        super().__init__(message)
        self.results = results
        self.request = request
