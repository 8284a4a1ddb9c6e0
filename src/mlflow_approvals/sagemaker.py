"""SageMaker Model Registry: a linked model package's approval status follows the gate.

A model version is linked to a SageMaker model package by its tag :data:`LINK_TAG`. Under a
rule with ``sagemaker: {region: ...}`` (see ``docs/sagemaker.md``) the engine asks
:class:`PackageGate`, with plain data, at three points:

* filing: the link is read (:meth:`PackageGate.linked`) and recorded in the request, and the
  package is made ``PendingManualApproval``;
* the apply: the package is set ``Approved``, with a description naming the request and every
  signer with their role (:func:`approval_description`), *before* the registry changes;
* a rejection: the package is set ``Rejected`` with the reason, before the rejection is recorded.

Each change writes its audit event first (the ``emit`` callback the engine passes), then calls
SageMaker. The status is read before anything is written, so an unreachable SageMaker stops a
step with :class:`SageMakerUnavailable` and nothing else done; the step can be run again.

``boto3`` is imported by the functions that need it (the ``sagemaker`` extra): importing this
module, or the package, works without it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from mlflow_approvals.errors import ApprovalError, InvalidRequest, SageMakerUnavailable
from mlflow_approvals.tags import MODEL_PACKAGE_ARN

if TYPE_CHECKING:
    from mlflow_approvals.policy import Rule, SageMakerSettings

__all__ = [
    "APPROVED",
    "INSTALL_HINT",
    "LINK_TAG",
    "MAX_DESCRIPTION_CHARS",
    "PENDING",
    "REJECTED",
    "Emit",
    "PackageGate",
    "SageMakerUnavailable",
    "approval_description",
    "boto3_client",
    "check_arn",
    "missing_boto3",
    "rejection_description",
    "settings_for_arn",
]

LINK_TAG = "sagemaker.model_package_arn"
"""The model-version tag that links a version to its SageMaker model package (set by the
pipeline that registers both, or by ``mlflow-approvals sagemaker link``)."""

PENDING = "PendingManualApproval"
APPROVED = "Approved"
REJECTED = "Rejected"
STATUSES = (PENDING, APPROVED, REJECTED)

MAX_DESCRIPTION_CHARS = 1024
"""SageMaker's limit for a model package's ``ApprovalDescription``."""

INSTALL_HINT = 'pip install "mlflow-approvals[sagemaker]"'

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_CLIENT_TTL_SECONDS = 45 * 60  # assumed-role credentials last an hour; rebuild before then

Emit = Callable[[str, Mapping[str, Any], Mapping[str, Any], str], str]
"""``emit(type, before, after, comment) -> event hash``: writes one audit event."""

Connect = Callable[["SageMakerSettings"], Any]
"""Builds a SageMaker client (boto3's) for a rule's settings."""


def check_arn(arn: object, where: str) -> str:
    """``arn`` when it is a model package ARN; else InvalidRequest saying where it came from."""
    if not isinstance(arn, str) or not MODEL_PACKAGE_ARN.fullmatch(arn):
        shown = repr(arn) if len(repr(arn)) <= 200 else repr(arn)[:200] + "..."
        raise InvalidRequest(
            f"{where} is not a SageMaker model package ARN: {shown}. Use the ModelPackageArn "
            "SageMaker returned, e.g. arn:aws:sagemaker:us-east-1:123456789012:"
            "model-package/fraud-model/3"
        )
    return arn


def _clip(text: str) -> str:
    """``text`` on one line, cut to SageMaker's limit for a description."""
    text = _CONTROL.sub(" ", text).strip()
    if len(text) <= MAX_DESCRIPTION_CHARS:
        return text
    return text[: MAX_DESCRIPTION_CHARS - 3] + "..."


def approval_description(
    request_id: str, target: str, name: str, version: str, signers: Iterable[tuple[str, str | None]]
) -> str:
    """The ``ApprovalDescription`` of an approved package: the request and each signer's role."""
    who = ", ".join(f"{actor} ({role or 'no role'})" for actor, role in signers)
    return _clip(
        f"mlflow-approvals request {request_id}: {target} of {name} v{version}, approved by {who}"
    )


def rejection_description(request_id: str, actor: str, role: str | None, reason: str) -> str:
    """The ``ApprovalDescription`` of a rejected package: the request, who rejected it, why."""
    return _clip(
        f"mlflow-approvals request {request_id}: rejected by {actor} ({role or 'no role'}): "
        f"{reason}"
    )


def missing_boto3(rules: Iterable[Rule]) -> str | None:
    """Why a policy whose rules ask for SageMaker cannot be served here (boto3 is missing), or
    None. A server checks this when it starts, rather than at the first filing."""
    asking = [rule.name for rule in rules if rule.sagemaker is not None]
    if not asking:
        return None
    try:
        import boto3  # noqa: F401
    except ImportError:
        pass
    else:
        return None
    return (
        f"rule(s) {', '.join(repr(n) for n in asking)} ask for SageMaker (`sagemaker:`), and "
        f"boto3 is not installed: {INSTALL_HINT}"
    )


def boto3_client(settings: SageMakerSettings) -> Any:
    """A boto3 SageMaker client for ``settings``: its region, its profile, and its role assumed
    through STS. Raises InvalidRequest naming the extra when boto3 is not installed."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise InvalidRequest(
            "a rule of the policy asks for SageMaker (`sagemaker:`), and boto3 is not "
            f"installed: {INSTALL_HINT}"
        ) from None
    config = Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 3})
    session = boto3.Session(profile_name=settings.profile, region_name=settings.region)
    if settings.role_arn:
        sts = session.client("sts", config=config)
        creds = sts.assume_role(RoleArn=settings.role_arn, RoleSessionName="mlflow-approvals")[
            "Credentials"
        ]
        session = boto3.Session(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
            region_name=settings.region,
        )
    return session.client("sagemaker", config=config)


def _problem(exc: Exception) -> tuple[str, bool]:
    """What SageMaker (or the way to it) said, and whether it says the package does not exist."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        error = response.get("Error") or {}
        code, message = str(error.get("Code", "")), str(error.get("Message", ""))
        lower = message.lower()
        missing = code in ("ResourceNotFound", "ResourceNotFoundException") or (
            code == "ValidationException" and ("not found" in lower or "does not exist" in lower)
        )
        return f"{code}: {message}", missing
    return f"{type(exc).__name__}: {exc}", False


class PackageGate:
    """Reads and changes the approval status of linked SageMaker model packages.

    Args:
        connect: builds a SageMaker client for a rule's settings (default: :func:`boto3_client`,
            boto3 with the region, profile and role of the settings). Tests pass their own.
    """

    def __init__(self, connect: Connect | None = None) -> None:
        self._connect: Connect = connect or boto3_client
        self._clients: dict[SageMakerSettings, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def client(self, settings: SageMakerSettings) -> Any:
        """The SageMaker client for ``settings`` (built once, rebuilt every 45 minutes)."""
        with self._lock:
            made = self._clients.get(settings)
            if made is not None and time.monotonic() - made[0] < _CLIENT_TTL_SECONDS:
                return made[1]
        try:
            client = self._connect(settings)
        except ApprovalError:
            raise
        except Exception as exc:
            what, _ = _problem(exc)
            raise SageMakerUnavailable(
                f"could not connect to SageMaker in {settings.region} ({what}): check the "
                "credentials of this process (profile, role_arn) and try again"
            ) from None
        with self._lock:
            self._clients[settings] = (time.monotonic(), client)
        return client

    # ------------------------------------------------------------------ the link -----------
    def linked(self, rule: Rule, name: str, version: str, tags: Mapping[str, str]) -> str | None:
        """The package ARN a new request under ``rule`` records (None: the rule does not ask).

        InvalidRequest when the version carries no link, a malformed one, or one in another
        region than the rule's: a request that drives SageMaker must know which package.
        """
        settings = rule.sagemaker
        if settings is None:
            return None
        where = f"tag {LINK_TAG} of {name} v{version}"
        if LINK_TAG not in tags:
            raise InvalidRequest(
                f"rule '{rule.name}' drives a SageMaker model package, and {name} v{version} "
                f"is linked to none (no tag {LINK_TAG}). Nothing was filed: link it with "
                f"`mlflow-approvals sagemaker link {name!r} {version} ARN` "
                "(or ApprovalClient.link_model_package) and file the request again"
            )
        arn = check_arn(tags[LINK_TAG], where)
        match = MODEL_PACKAGE_ARN.fullmatch(arn)
        assert match is not None
        if match["region"] != settings.region:
            raise InvalidRequest(
                f"{where} names a package in {match['region']}, and rule '{rule.name}' drives "
                f"SageMaker in {settings.region}. Nothing was filed: fix the link or the rule"
            )
        return arn

    def status(self, settings: SageMakerSettings, arn: str) -> str:
        """The package's ``ModelApprovalStatus``; InvalidRequest when it does not exist."""
        try:
            found = self.client(settings).describe_model_package(ModelPackageName=arn)
        except ApprovalError:
            raise
        except Exception as exc:
            raise self._error(exc, arn, "read") from None
        return str(found.get("ModelApprovalStatus") or PENDING)

    def _update(self, settings: SageMakerSettings, arn: str, status: str, note: str) -> None:
        args: dict[str, Any] = {"ModelPackageArn": arn, "ModelApprovalStatus": status}
        if note:
            args["ApprovalDescription"] = note
        try:
            self.client(settings).update_model_package(**args)
        except ApprovalError:
            raise
        except Exception as exc:
            raise self._error(exc, arn, f"set {status}") from None

    @staticmethod
    def _error(exc: Exception, arn: str, what: str) -> ApprovalError:
        said, missing = _problem(exc)
        if missing:
            return InvalidRequest(
                f"SageMaker model package {arn} does not exist (SageMaker said {said}): link "
                "the version to an existing package"
            )
        return SageMakerUnavailable(
            f"SageMaker could not {what} model package {arn} ({said}). The step was not "
            "completed and nothing was promoted: run it again when SageMaker answers (an "
            "approved request: `mlflow-approvals apply`)"
        )

    # ------------------------------------------------------------------ the steps ----------
    def move(
        self,
        settings: SageMakerSettings,
        arn: str,
        status: str,
        note: str,
        emit: Emit,
    ) -> list[str]:
        """Set the package ``status``, intent before effect; the hashes of the events written.

        The status is read first (nothing is written when SageMaker cannot be reached). A
        package already pending is left alone when ``status`` is pending; an approval or a
        rejection is always written and sent, so a retry finds its event again (same id).
        """
        if status not in STATUSES:
            raise ValueError(f"unknown model package status {status!r}")
        before = self.status(settings, arn)
        if before == status == PENDING:
            return []
        kind = {PENDING: "pending", APPROVED: "approved", REJECTED: "rejected"}[status]
        comment = note or f"held for approval (it was {before} when the request was filed)"
        digest = emit(
            f"sagemaker.{kind}",
            {"model_package_arn": arn, "status": before},
            {"model_package_arn": arn, "status": status},
            comment,
        )
        self._update(settings, arn, status, note)
        return [digest]


def settings_for_arn(arn: str, rules: Iterable[Rule]) -> SageMakerSettings:
    """The settings to reach ``arn`` with: the first rule with ``sagemaker:`` in its region,
    else just the ARN's region (the default credentials)."""
    from mlflow_approvals.policy import SageMakerSettings

    match = MODEL_PACKAGE_ARN.fullmatch(arn)
    assert match is not None
    for rule in rules:
        if rule.sagemaker is not None and rule.sagemaker.region == match["region"]:
            return rule.sagemaker
    return SageMakerSettings(region=match["region"])
