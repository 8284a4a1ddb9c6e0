"""The approvals pages' Flask views: the inbox, a request, and the sign-off form's post.

Every view runs under the authenticated user (:func:`..identity.current_actor`), asks
basic-auth's model permissions as the approval endpoints do (:mod:`..api`), and changes
nothing but through :meth:`Engine.sign`: the same step, rules and audit events as every other
path. Pages are rendered by Jinja with autoescaping on, so everything a user wrote (names,
comments, tag values) is shown as text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from mlflow_approvals._version import __version__
from mlflow_approvals.errors import InvalidRequest, NotAuthorized
from mlflow_approvals.lifecycle import Actor, ApprovalRequest, Decision
from mlflow_approvals.server import api
from mlflow_approvals.server.identity import current_actor
from mlflow_approvals.server.web import csrf, present
from mlflow_approvals.targets import validate_version

if TYPE_CHECKING:
    import jinja2
    from flask import Response

    from mlflow_approvals.engine import Engine
    from mlflow_approvals.server.settings import ServerSettings
    from mlflow_approvals.verify import VerifyReport

__all__ = ["Pages"]

_log = logging.getLogger(__name__)
_MAX_FORM = 64 * 1024  # a sign-off form larger than this is refused before it is parsed
_HEADERS = {
    # No script runs on these pages; styles come from our own stylesheet; forms post here only.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_DECISIONS: dict[str, Decision] = {"approve": "approve", "reject": "reject"}
_SIGNED = {
    "approve": "Your approval was recorded.",
    "reject": "Your rejection was recorded. The request is closed.",
}


@dataclass
class Pages:
    """The pages of one server worker, over its engine."""

    engine: Engine
    settings: ServerSettings
    prefix: str
    secret: csrf.Secret
    origins: tuple[str, ...] = ()
    _env: jinja2.Environment | None = field(default=None, repr=False)

    @property
    def base(self) -> str:
        """The pages' root path (under the server's static prefix)."""
        return f"{self.prefix.rstrip('/')}/approvals"

    # ------------------------------------------------------------------ views -------------
    def inbox(self) -> Response:
        """``GET /approvals/``: what the user may sign now, the other open requests, the
        recent decisions; ``?model=NAME`` keeps one model's."""
        from flask import request
        from mlflow.exceptions import MlflowException

        actor = current_actor(self.settings)
        if actor is None:
            return self._unknown_user()
        model = (request.args.get("model") or "").strip()
        error = None
        try:
            every = self.engine.list_requests(None, None)
            readable = {n: api._may_read(self.settings, n) for n in {r.name for r in every}}
            found = [r for r in every if readable[r.name]]
        except MlflowException as exc:
            found, error = [], f"The requests could not be read: {exc.message}"
        models = sorted({r.name for r in found})
        shown = [r for r in found if not model or r.name == model]
        return self._page(
            "inbox.html",
            200,
            actor,
            title="Approvals",
            inbox=present.inbox(self.engine.policy, shown, actor.id),
            models=models,
            model=model,
            error=error,
        )

    def request_view(self) -> Response:
        """``GET /approvals/request?name=&version=&id=``: one request, in full."""
        from flask import request

        actor = current_actor(self.settings)
        if actor is None:
            return self._unknown_user()
        args = request.args
        notice = _SIGNED.get(args.get("signed") or "")
        return self._request_page(
            actor, args.get("name"), args.get("version"), args.get("id"), notice=notice
        )

    def sign(self) -> Response:
        """``POST /approvals/sign``: one approval or rejection, then back to the request."""
        from flask import redirect, request
        from mlflow.exceptions import MlflowException

        actor = current_actor(self.settings)
        if actor is None:
            return self._unknown_user()
        if (request.content_length or 0) > _MAX_FORM:
            return self._message(actor, 413, "Not recorded", "The form is too large.")
        form = request.form
        problem = csrf.origin_problem(
            request.headers.get("Origin"),
            request.headers.get("Referer"),
            request.host_url,
            self.origins,
        ) or csrf.token_problem(self.secret.key, actor.id, form.get("csrf_token"), time.time())
        if problem:
            return self._message(
                actor,
                403,
                "Not recorded",
                f"Nothing was recorded: {problem}. Open the request from the approvals inbox "
                "and sign it there.",
            )
        name, version, rid = form.get("name"), form.get("version"), form.get("request_id")
        decision: Decision | None = _DECISIONS.get(form.get("decision") or "")
        comment = (form.get("comment") or "").strip() or None
        if decision is None:
            return self._message(
                actor, 400, "Not recorded", "Press Approve or Reject to sign the request."
            )
        if decision == "reject" and comment is None:
            return self._request_page(
                actor,
                name,
                version,
                rid,
                error="A rejection needs a reason: write it in Comment, then press Reject. "
                "Nothing was recorded.",
                status=400,
            )
        try:
            if not name or not version:
                raise InvalidRequest("the form names no model version")
            version = validate_version(version)
            api._check_permission(self.settings, "approve", {"name": name})
            self.engine.sign(actor, name, version, decision, comment, rid or None)
        except MlflowException as exc:
            return self._request_page(
                actor,
                name,
                version,
                rid,
                error=f"Not recorded: {exc.message}",
                status=_status(exc),
                comment=comment or "",
            )
        back = redirect(self._request_url(name, version, rid or "", signed=decision), 303)
        return back  # type: ignore[return-value]

    def stylesheet(self) -> Response:
        """``GET /approvals/style.css``: the pages' one stylesheet, from the package."""
        from importlib import resources

        from flask import Response

        css = (
            resources.files(__package__).joinpath("static").joinpath("style.css").read_text("utf-8")
        )
        response = Response(css, mimetype="text/css")
        response.headers["Cache-Control"] = "private, max-age=3600"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # ------------------------------------------------------------------ helpers -----------
    def _request_page(
        self,
        actor: Actor,
        name: str | None,
        version: str | None,
        rid: str | None,
        *,
        notice: str | None = None,
        error: str | None = None,
        status: int = 200,
        comment: str = "",
    ) -> Response:
        from mlflow.exceptions import MlflowException

        try:
            if not name or not version:
                raise InvalidRequest(
                    "name a model version: open a request from the approvals inbox"
                )
            version = validate_version(version)
            api._check_permission(self.settings, "get", {"name": name})
            found = self.engine.get(name, version, rid or None)
        except MlflowException as exc:
            return self._message(actor, _status(exc), "Request not shown", exc.message)
        policy = self.engine.policy
        report, events, audit_error = self._trail(found)
        return self._page(
            "request.html",
            status,
            actor,
            title=f"{found.name} v{found.version}",
            r=found,
            signing=present.may_sign(policy, found, actor.id),
            who=present.who_may_sign(policy, found),
            levels=present.level_rows(found),
            rejections=present.rejections(found),
            endings=_endings(found),
            checks=[c.to_dict() for c in found.checks],
            ui_link=self._ui_link(found.name, found.version),
            report=report,
            events=events,
            audit_error=audit_error,
            notice=notice,
            error=error,
            comment=comment,
            token=csrf.issue(self.secret.key, actor.id, time.time()),
        )

    def _trail(
        self, found: ApprovalRequest
    ) -> tuple[VerifyReport | None, list[dict[str, Any]], str | None]:
        """The request's audit events, oldest first, and the verdict on the version's log."""
        from mlflow_approvals.auditlog import read_log
        from mlflow_approvals.verify import ordered_events, verify_events

        try:
            log = read_log(self.engine, found.name)
        except Exception as exc:  # the page still shows the facts when the log is unreadable
            _log.warning("could not read the audit log of %s: %s", found.name, exc)
            return None, [], f"The audit log could not be read: {getattr(exc, 'message', exc)}"
        report = verify_events(
            log.files,
            log.anchors,
            name=found.name,
            version=found.version,
            live_versions=log.live_versions,
            deletions=log.deletions,
        )
        events = []
        for event, line in ordered_events(log.files, report):
            data = event.get("data") if isinstance(event.get("data"), Mapping) else {}
            assert isinstance(data, Mapping)
            if data.get("request_id") != found.id:
                continue
            who = data.get("actor") if isinstance(data.get("actor"), Mapping) else {}
            assert isinstance(who, Mapping)
            events.append(
                {
                    "time": _event_time(event.get("time")),
                    "iso": str(event.get("time", "")),
                    "type": line.type or "?",
                    "meaning": str(data.get("meaning") or ""),
                    "actor": present.printed(str(who.get("id", "?")), who.get("display_name")),
                    "comment": data.get("comment") if isinstance(data.get("comment"), str) else "",
                    "valid": line.status == "VALID",
                    "reason": line.reason,
                }
            )
        return report, events, None

    def _page(self, template: str, status: int, actor: Actor, **values: Any) -> Response:
        from flask import Response

        html = (
            self._jinja()
            .get_template(template)
            .render(
                base=self.base,
                user=present.printed(actor.id, actor.display_name),
                ui_home=f"{self.prefix.rstrip('/')}/",
                version=__version__,
                policy_hash=self.engine.policy.content_hash,
                link=lambda r: self._request_url(r.name, r.version, r.id),
                printed=present.printed,
                time=present.time_text,
                **values,
            )
        )
        response = Response(html, status=status, mimetype="text/html")
        response.headers.update(_HEADERS)
        return response

    def _message(self, actor: Actor | None, status: int, title: str, text: str) -> Response:
        from flask import Response

        html = (
            self._jinja()
            .get_template("message.html")
            .render(
                base=self.base,
                user=None if actor is None else present.printed(actor.id, actor.display_name),
                ui_home=f"{self.prefix.rstrip('/')}/",
                version=__version__,
                policy_hash=self.engine.policy.content_hash,
                title=title,
                text=text,
                status=status,
            )
        )
        response = Response(html, status=status, mimetype="text/html")
        response.headers.update(_HEADERS)
        return response

    def _unknown_user(self) -> Response:
        text = (
            "The server could not tell who you are: go through the authenticating proxy."
            if self.settings.auth == "trusted-header"
            else "The server could not tell who you are: sign in."
        )
        return self._message(None, 401, "Sign in", text)

    def _request_url(self, name: str, version: str, rid: str, **extra: str) -> str:
        query = {"name": name, "version": version, "id": rid, **extra}
        return f"{self.base}/request?{urlencode({k: v for k, v in query.items() if v})}"

    def _ui_link(self, name: str, version: str) -> str:
        """The version's page in MLflow's own UI, on this server."""
        return f"{self.prefix.rstrip('/')}/#/models/{quote(name, safe='')}/versions/{version}"

    def _jinja(self) -> jinja2.Environment:
        if self._env is None:
            import jinja2

            self._env = jinja2.Environment(
                loader=jinja2.PackageLoader(__package__ or "", "templates"),
                autoescape=True,
                undefined=jinja2.StrictUndefined,
                trim_blocks=True,
                lstrip_blocks=True,
            )
        return self._env


def _status(exc: Any) -> int:
    """The 4xx of an engine error (never a 5xx: see api._error)."""
    if isinstance(exc, NotAuthorized):
        return 403
    status = int(exc.get_http_status_code())
    return 409 if status >= 500 else status


def _endings(found: ApprovalRequest) -> list[tuple[str, Any]]:
    """How the request ended (or the emergency change it reviews), labelled."""
    labelled = (
        ("Applied", found.applied),
        ("Cancelled", found.cancelled),
        ("Expired", found.expired),
        ("Superseded", found.superseded),
        ("Invalidated", found.invalidated),
        ("Applied by break-glass", found.emergency),
    )
    return [(label, ending) for label, ending in labelled if ending is not None]


def _event_time(value: Any) -> str:
    try:
        return present.time_text(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except ValueError:
        return str(value)
