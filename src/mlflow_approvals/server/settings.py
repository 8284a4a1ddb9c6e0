"""The operator's settings of the server app, read from the environment once per worker.

=====================================  ==========================================================
``MLFLOW_APPROVALS_POLICY``            path of the policy file (YAML or JSON). Required.
``MLFLOW_APPROVALS_ENFORCEMENT``       ``enforce`` (default): refuse every direct write that
                                       could promote or forge; ``report``: allow it, but audit
                                       each one as a bypass; ``off``: no gate (the approval
                                       endpoints still work).
``MLFLOW_APPROVALS_AUTH``              where identity comes from: ``basic-auth`` (default;
                                       MLflow's own basic-auth, configured as for
                                       ``--app-name basic-auth``), ``trusted-header`` (a header
                                       set by an authenticating proxy), or ``none``.
``MLFLOW_APPROVALS_IDENTITY_HEADER``   with ``trusted-header``: the header naming the user
                                       (e.g. ``X-Forwarded-User``). Required in that mode.
``MLFLOW_APPROVALS_ALLOW_ANONYMOUS``   ``true`` to start with ``MLFLOW_APPROVALS_AUTH=none``
                                       while enforcing: every caller is then "anonymous".
=====================================  ==========================================================

Pure: :func:`read_settings` takes the environment as a mapping and raises
:class:`SettingsError` naming the variable and what to set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Enforcement = Literal["enforce", "report", "off"]
AuthMode = Literal["basic-auth", "trusted-header", "none"]

POLICY_ENV = "MLFLOW_APPROVALS_POLICY"
ENFORCEMENT_ENV = "MLFLOW_APPROVALS_ENFORCEMENT"
AUTH_ENV = "MLFLOW_APPROVALS_AUTH"
HEADER_ENV = "MLFLOW_APPROVALS_IDENTITY_HEADER"
ANONYMOUS_ENV = "MLFLOW_APPROVALS_ALLOW_ANONYMOUS"
ANONYMOUS = "anonymous"

__all__ = ["AuthMode", "Enforcement", "ServerSettings", "SettingsError", "read_settings"]


class SettingsError(ValueError):
    """A setting of the server app is missing or wrong; the message says which and what to set."""


@dataclass(frozen=True)
class ServerSettings:
    """The server app's settings."""

    policy_path: str
    enforcement: Enforcement = "enforce"
    auth: AuthMode = "basic-auth"
    identity_header: str | None = None


def _choice(env: Mapping[str, str], key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = (env.get(key) or default).strip().lower()
    if value not in allowed:
        raise SettingsError(f"{key}={env.get(key)!r} is not one of {', '.join(allowed)}")
    return value


def read_settings(env: Mapping[str, str]) -> ServerSettings:
    """The settings in ``env``; raises SettingsError when they cannot be used."""
    policy = (env.get(POLICY_ENV) or "").strip()
    if not policy:
        raise SettingsError(
            f"{POLICY_ENV} is not set: the approvals server needs a policy. Set it to the path "
            "of your policy file (see docs/policy.md)"
        )
    enforcement = _choice(env, ENFORCEMENT_ENV, "enforce", ("enforce", "report", "off"))
    auth = _choice(env, AUTH_ENV, "basic-auth", ("basic-auth", "trusted-header", "none"))
    header = (env.get(HEADER_ENV) or "").strip() or None
    if auth == "trusted-header" and header is None:
        raise SettingsError(
            f"{AUTH_ENV}=trusted-header needs {HEADER_ENV}: the name of the header your "
            "authenticating proxy sets to the user's name (e.g. X-Forwarded-User)"
        )
    anonymous_ok = (env.get(ANONYMOUS_ENV) or "").strip().lower() in ("1", "true", "yes")
    if auth == "none" and enforcement == "enforce" and not anonymous_ok:
        raise SettingsError(
            f"{AUTH_ENV}=none: without authentication nobody's identity is known, so every "
            "sign-off would be recorded as 'anonymous' and anyone could sign. Use basic-auth or "
            f"a trusted header; or, knowing that, set {ANONYMOUS_ENV}=true"
        )
    return ServerSettings(
        policy_path=policy,
        enforcement=enforcement,  # type: ignore[arg-type]
        auth=auth,  # type: ignore[arg-type]
        identity_header=header,
    )
