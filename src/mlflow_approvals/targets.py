"""What a user may name, and what a target means in the registry: pure, without MLflow.

One definition of each rule, used by the engine (which raises ``InvalidRequest``) and by the
command line (which reports a usage error, exit 2) without importing MLflow: an alias MLflow
accepts, a model version, a stage, a request status; whether two targets are one; what the
registry holds once a target is applied, and whether it already does.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mlflow_approvals.lifecycle import Status, Target
from mlflow_approvals.policy import canonical_stage

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

__all__ = [
    "alias_problem",
    "event_kind",
    "is_in_effect",
    "live_value",
    "parse_status",
    "same_target",
    "target_value",
    "validate_alias",
    "validate_stage",
    "validate_version",
    "version_problem",
]

_ALIAS = re.compile(r"^[\w\-]{1,255}$")
_VERSION_LIKE = re.compile(r"[vV]\d+")


def _invalid(message: str) -> Exception:
    from mlflow_approvals.errors import InvalidRequest  # imports MLflow: only when raising

    return InvalidRequest(message)


def alias_problem(alias: object) -> str | None:
    """Why MLflow would refuse ``alias`` as an alias name (None: it would accept it)."""
    if (
        not isinstance(alias, str)
        or not _ALIAS.match(alias)
        or alias.lower() == "latest"
        or _VERSION_LIKE.fullmatch(alias)
    ):
        return (
            f"invalid alias {alias!r}: use letters, digits, '_' and '-' (at most 255), and not "
            "'latest' or a version-like name such as 'v3'"
        )
    return None


def version_problem(version: object) -> str | None:
    """Why ``version`` is not a model version number (None: it is one)."""
    if not str(version).strip().isdigit():
        return f"invalid model version {version!r}: a version is a number such as 3"
    return None


def validate_alias(alias: str) -> str:
    """``alias`` when MLflow would accept it as an alias name; else InvalidRequest."""
    problem = alias_problem(alias)
    if problem:
        raise _invalid(problem)
    return alias


def validate_stage(stage: str) -> str:
    """The canonical spelling of ``stage``; else InvalidRequest."""
    try:
        return canonical_stage(stage)
    except ValueError as exc:
        raise _invalid(str(exc)) from None


def validate_version(version: str | int) -> str:
    """``version`` as a canonical decimal string; else InvalidRequest."""
    problem = version_problem(version)
    if problem:
        raise _invalid(problem)
    return str(int(str(version).strip()))


def parse_status(status: str | Status) -> Status:
    """``status`` as a Status; else InvalidRequest naming the choices."""
    try:
        return Status(str(status).lower())
    except ValueError:
        choices = ", ".join(s.value for s in Status)
        raise _invalid(f"unknown status {status!r}: use one of {choices}") from None


def same_target(a: Target, b: Target) -> bool:
    """True when ``a`` and ``b`` name one target: the same stage, or the same alias and action.

    ``archive_existing_versions`` is how a stage is applied, not another target: one target has
    at most one open request on a version.
    """
    return (a.kind, a.value, a.action) == (b.kind, b.value, b.action)


def target_value(target: Target, version: str) -> dict[str, Any]:
    """What the registry holds once ``target`` is applied to ``version``."""
    if target.kind == "stage":
        return {"stage": target.value, "version": version}
    if target.action == "set":
        return {"alias": target.value, "version": version}
    return {"alias": target.value, "version": None}


def live_value(mv: ModelVersion, target: Target) -> dict[str, Any]:
    """What the registry holds now for ``target`` on ``mv``."""
    if target.kind == "stage":
        return {"stage": mv.current_stage, "version": str(mv.version)}
    aliases = list(mv.aliases or [])
    return {"alias": target.value, "version": str(mv.version) if target.value in aliases else None}


def is_in_effect(mv: ModelVersion, target: Target) -> bool:
    """True when the registry already holds what ``target`` asks for."""
    if target.kind == "stage":
        return bool(mv.current_stage == target.value)
    present = target.value in (mv.aliases or [])
    return present if target.action == "set" else not present


def event_kind(target: Target) -> str:
    """The audit event type that records applying ``target``."""
    if target.kind == "stage":
        return "stage.transitioned"
    return "alias.set" if target.action == "set" else "alias.deleted"
