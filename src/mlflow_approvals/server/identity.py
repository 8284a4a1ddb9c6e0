"""Who is calling the server: the authenticated user, never a name the caller claims.

* ``basic-auth``: the user MLflow's basic-auth authenticated for this request (its
  ``before_request`` hook runs before ours and refuses a request without valid credentials).
* ``trusted-header``: the header the operator named, set by the authenticating proxy in front
  of the server (the proxy must strip it from what clients send).
* ``none``: everyone is ``anonymous``; the operator opted in knowingly.

A claimed name (the client's ``actor=``, the CLI's ``--as``) is not read here at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlflow_approvals.lifecycle import Actor
from mlflow_approvals.server.settings import ANONYMOUS

if TYPE_CHECKING:
    from mlflow_approvals.server.settings import ServerSettings

__all__ = ["current_actor"]


def current_actor(settings: ServerSettings) -> Actor | None:
    """The authenticated caller of the current Flask request; None when there is none."""
    from flask import g, request

    if settings.auth == "none":
        return Actor.named(ANONYMOUS)
    if settings.auth == "trusted-header":
        name = (request.headers.get(settings.identity_header or "") or "").strip()
        return Actor.named(name) if name else None
    # Set by basic-auth's hook once it has checked the password; the Authorization header
    # itself is never trusted here (it is unchecked on routes basic-auth leaves open).
    user = getattr(g, "mlflow_authenticated_user", None)
    return Actor.named(str(user)) if user else None
