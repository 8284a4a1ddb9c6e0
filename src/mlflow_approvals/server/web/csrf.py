"""Cross-site request forgery protection for the approvals pages: pure, no Flask.

Each form carries a token ``<issued>.<mac>``: the HMAC-SHA256, under the server's secret, of
the signed-in user and the time the page was rendered. A post is accepted only with a token
made for the same user within :data:`MAX_AGE`; another site cannot read our pages, so it cannot
learn a token. Every worker must share the secret (a token rendered by one worker is checked by
another): it is ``MLFLOW_APPROVALS_WEB_SECRET``, else basic-auth's
``MLFLOW_FLASK_SERVER_SECRET_KEY`` (every worker of a basic-auth server has it).

The ``Origin`` header (else the ``Referer``), where the browser sends one, must name this
server (or an origin the operator listed in ``MLFLOW_APPROVALS_WEB_ORIGINS``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "MAX_AGE",
    "ORIGINS_ENV",
    "SECRET_ENV",
    "Secret",
    "issue",
    "origin_problem",
    "read_secret",
    "token_problem",
]

SECRET_ENV = "MLFLOW_APPROVALS_WEB_SECRET"
FLASK_SECRET_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
ORIGINS_ENV = "MLFLOW_APPROVALS_WEB_ORIGINS"
MAX_AGE = 12 * 3600
"""Seconds a form's token stays valid (a page left open over a working day)."""
_CONTEXT = b"mlflow-approvals web form v1"


@dataclass(frozen=True)
class Secret:
    """The key of the form tokens, and whether every worker shares it."""

    key: bytes
    shared: bool


def read_secret(env: Mapping[str, str]) -> Secret:
    """The secret from ``env``; a random one for this process when none is set (it then works
    only with one worker: the caller warns)."""
    for name in (SECRET_ENV, FLASK_SECRET_ENV):
        value = (env.get(name) or "").strip()
        if value:
            return Secret(hashlib.sha256(_CONTEXT + b"\0" + value.encode()).digest(), True)
    return Secret(secrets.token_bytes(32), False)


def _mac(key: bytes, user: str, issued: int) -> str:
    message = b"\0".join((_CONTEXT, user.encode("utf-8"), str(issued).encode()))
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def issue(key: bytes, user: str, now: float) -> str:
    """A token for ``user``'s forms, issued at ``now`` (seconds since the epoch)."""
    issued = int(now)
    return f"{issued}.{_mac(key, user, issued)}"


def token_problem(key: bytes, user: str, token: str | None, now: float) -> str | None:
    """Why ``token`` does not authorise a post by ``user`` at ``now``; None when it does."""
    if not token:
        return "the form carries no security token"
    issued_text, _, mac = token.partition(".")
    if not issued_text.isdigit() or len(issued_text) > 12 or not mac:
        return "the form's security token is malformed"
    issued = int(issued_text)
    if not hmac.compare_digest(mac, _mac(key, user, issued)):
        return "the form's security token is not valid for you on this server"
    if now - issued > MAX_AGE or issued - now > 300:
        return "the form's security token has expired"
    return None


def _origin(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def origin_problem(
    origin: str | None, referer: str | None, host_url: str, allowed: Collection[str] = ()
) -> str | None:
    """Why a post whose headers say ``origin``/``referer`` did not come from this server's own
    pages (``host_url``, or one of ``allowed``); None when it did or the browser sent neither."""
    claimed = origin if origin else referer
    if not claimed:
        return None
    if claimed == "null":
        return "the post came from an opaque origin"
    seen = _origin(claimed)
    ours = {_origin(host_url), *(_origin(a) for a in allowed)}
    if seen is None or seen not in ours:
        return f"the post came from another site ({claimed[:200]})"
    return None
