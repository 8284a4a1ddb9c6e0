"""Who the actor is.

In client-gated mode the actor is whoever the caller says: ``ApprovalClient(actor=...)``, else
``MLFLOW_TRACKING_USERNAME``, else the operating-system user. That is a claim, not a proof:
anyone can pass another name. Roles come from the policy (``Policy.roles_of``).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping


def resolve_actor(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The acting user's id: ``explicit``, else MLFLOW_TRACKING_USERNAME, else the OS user."""
    env = os.environ if environ is None else environ
    for candidate in (explicit, env.get("MLFLOW_TRACKING_USERNAME")):
        if candidate and candidate.strip():
            return candidate.strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, no LOGNAME: containers
        return "unknown"


def resolve_display_name(
    actor: str, explicit: str | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """The printed name by a signature: ``explicit``, MLFLOW_APPROVALS_DISPLAY_NAME, else the id."""
    env = os.environ if environ is None else environ
    return explicit or env.get("MLFLOW_APPROVALS_DISPLAY_NAME") or actor
