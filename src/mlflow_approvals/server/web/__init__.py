"""The approvals pages: an inbox, a request's full record, and a sign-off form, in the browser.

Served by the server app under ``<static prefix>/approvals/`` behind the same authentication as
the rest of the server (basic-auth's browser prompt, or the trusted proxy); no login of its own.

=========================  ======  ===========================================================
path                       method  page
=========================  ======  ===========================================================
``/approvals/``            GET     the inbox: what the user may sign now, the other open
                                   requests, the recent decisions (``?model=NAME`` filters)
``/approvals/request``     GET     one request (``?name=&version=&id=``): its levels and
                                   sign-offs, what is missing and who may sign it, its checks,
                                   its audit events and whether the log verifies
``/approvals/sign``        POST    a form's approval or rejection, through ``Engine.sign``;
                                   then back to the request (POST-redirect-GET)
``/approvals/style.css``   GET     the stylesheet
=========================  ======  ===========================================================

Server-rendered HTML, no script, no network: readable with JavaScript off. Forms carry a
token (:mod:`.csrf`). See docs/web.md.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from mlflow_approvals.engine import Engine
    from mlflow_approvals.server.settings import ServerSettings

__all__ = ["register"]

_log = logging.getLogger(__name__)


def register(app: Flask, engine: Engine, settings: ServerSettings, prefix: str = "") -> None:
    """Add the approvals pages to ``app`` under ``<prefix>/approvals/``."""
    from mlflow_approvals.server import api
    from mlflow_approvals.server.web import csrf
    from mlflow_approvals.server.web.views import Pages

    secret = csrf.read_secret(os.environ)
    if not secret.shared:
        _log.warning(
            "mlflow-approvals: neither %s nor %s is set: the approvals pages' form tokens use "
            "a key of this worker only, so with more than one worker a sign-off may be refused "
            "(reload and sign again). Set %s to one secret value for every worker",
            csrf.SECRET_ENV,
            csrf.FLASK_SECRET_ENV,
            csrf.SECRET_ENV,
        )
    origins = tuple(
        o.strip() for o in (os.environ.get(csrf.ORIGINS_ENV) or "").split(",") if o.strip()
    )
    pages = Pages(engine, settings, prefix, secret, origins)
    base = pages.base
    routes = (
        (f"{base}/", "GET", "inbox", pages.inbox),
        (f"{base}/request", "GET", "request", pages.request_view),
        (f"{base}/sign", "POST", "sign", pages.sign),
        (f"{base}/style.css", "GET", "style", pages.stylesheet),
    )
    for path, method, endpoint, view in routes:
        app.add_url_rule(
            path,
            endpoint=f"mlflow_approvals_web_{endpoint}",
            view_func=view,
            methods=[method],
            strict_slashes=False,
        )
    if settings.auth == "basic-auth":
        # basic-auth refuses a route it has no validator for: the pages authorise inside
        # their views, as the approval endpoints do (``/approvals`` answers as ``/approvals/``).
        for path, method, _, _ in (*routes, (base, "GET", "", None)):
            api._admit(path, method)
