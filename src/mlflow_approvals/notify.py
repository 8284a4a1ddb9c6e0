"""Notifications: tell a chat channel or a web hook what happened to a request.

A policy lists its subscriptions under ``notifications:`` (see ``docs/notifications.md``)::

    notifications:
      - name: approvers-slack
        url: https://hooks.slack.com/services/T000/B000/XXXX
        format: slack
        events: ["request.*", "signoff.*"]
        models: ["fraud-*"]
      - name: deploy-bot
        url: https://deploy.example.com/hooks/mlflow
        secret_env: DEPLOY_BOT_SECRET     # the NAME of the variable holding the secret

:class:`Subscription` is the frozen pydantic model the policy loader validates. A
:class:`Notice` is what happened (an audit event, in the words a person reads);
:func:`payload` and :func:`slack_message` turn it into the body of a ``json`` or ``slack``
subscription. Bodies are signed exactly like MLflow's own webhooks (:func:`sign`).

:class:`Notifier` delivers: :meth:`Notifier.publish` starts one delivery per interested
subscription in a daemon thread and returns at once; retries, back-off and timeouts are
``urllib3``'s. A delivery that still fails calls ``on_failure`` once (the engine records it as
a ``notification.failed`` audit event). A notification never raises into its caller.

Nothing is imported from MLflow, ``requests`` is imported when the first delivery starts, and
nothing is done at import time.
"""

from __future__ import annotations

import atexit
import base64
import fnmatch
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

if TYPE_CHECKING:
    import requests

__all__ = [
    "DELIVERY_ID_HEADER",
    "EVENT_TYPES",
    "SIGNATURE_HEADER",
    "TEST_EVENT",
    "TIMESTAMP_HEADER",
    "Notice",
    "Notifier",
    "Outcome",
    "Subscription",
    "payload",
    "sign",
    "slack_message",
]

_logger = logging.getLogger(__name__)

DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
"""A uuid4 per delivery, the same on every retry of it (as MLflow's webhooks send)."""
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
"""Unix seconds when the delivery started; part of the signed text."""
SIGNATURE_HEADER = "X-MLflow-Signature"
"""``v1,<base64 HMAC-SHA256>`` of ``f"{delivery_id}.{timestamp}.{body}"``; absent unsigned."""
_SIGNATURE_VERSION = "v1"

TEST_EVENT = "notification.test"
"""The type of the notice that ``mlflow-approvals notify test`` sends."""

EVENT_TYPES: tuple[str, ...] = (
    "request.created",
    "signoff.approved",
    "signoff.rejected",
    "request.cancelled",
    "request.expired",
    "request.superseded",
    "request.invalidated",
    "stage.transitioned",
    "alias.set",
    "alias.deleted",
    "breakglass.reviewed",
    TEST_EVENT,
)
"""The notice types a subscription's ``events`` globs are matched against."""

_Text = Annotated[str, StringConstraints(min_length=1)]
_Globs = Annotated[tuple[_Text, ...], Field(min_length=1)]
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SLACK_TEXT_LIMIT = 2900  # a section's text holds at most 3,000 characters
_COMMENT_LIMIT = 500
_ERROR_BODY_LIMIT = 200


class Subscription(BaseModel):
    """Where to send which notices: ``events`` and ``models`` are :mod:`fnmatch` globs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: _Text
    url: str
    secret_env: _Text | None = None
    format: Literal["json", "slack"] = "json"
    events: _Globs = ("*",)
    models: _Globs = ("*",)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"url {value[:100]!r} is not an http:// or https:// address: write the full "
                "address, e.g. https://hooks.slack.com/services/..."
            )
        if any(char.isspace() for char in value):
            raise ValueError("url contains white space: remove it or percent-encode it")
        return value

    @field_validator("secret_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(
                f"secret_env {value[:40]!r} is not an environment variable name: write the "
                "NAME of the variable that holds the secret (e.g. DEPLOY_BOT_SECRET), never "
                "the secret itself"
            )
        return value

    def wants(self, event_type: str, model: str) -> bool:
        """Whether a notice of ``event_type`` about ``model`` goes to this subscription."""
        return any(fnmatch.fnmatchcase(event_type, glob) for glob in self.events) and any(
            fnmatch.fnmatchcase(model, glob) for glob in self.models
        )

    @property
    def origin(self) -> str:
        """``scheme://host[:port]`` of :attr:`url`: what error texts name (a path may be a
        secret, as in a Slack webhook address)."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"


@dataclass(frozen=True)
class Notice:
    """What happened, for the people to tell: one audit event and the state it left.

    ``missing`` is what the open level still needs (``{"role", "count"}`` each); ``next`` is who
    may sign now (``{"level": n, "roles": {role: [members]}}``); ``event`` is the audit event's
    hash; ``link`` is the request in the MLflow UI.
    """

    type: str
    name: str
    version: str | None
    actor: str
    display_name: str | None
    time: datetime
    request_id: str | None = None
    target: Mapping[str, Any] | None = None
    status: str | None = None
    comment: str | None = None
    missing: tuple[Mapping[str, Any], ...] = ()
    next: Mapping[str, Any] | None = None
    event: str | None = None
    link: str | None = None


@dataclass(frozen=True)
class Outcome:
    """How one delivery ended: ``status`` is the last HTTP status (``None`` if none came)."""

    subscription: str
    delivered: bool
    status: int | None
    error: str | None
    delivery_id: str


# -- bodies --------------------------------------------------------------------------------------


def _time(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def payload(notice: Notice, subscription: str | None = None) -> dict[str, Any]:
    """The body of a ``json`` subscription: the fixed shape documented in the docs."""
    return {
        "type": notice.type,
        "model": notice.name,
        "version": notice.version,
        "request_id": notice.request_id,
        "target": None if notice.target is None else dict(notice.target),
        "actor": {"id": notice.actor, "display_name": notice.display_name},
        "comment": notice.comment,
        "status": notice.status,
        "missing": [dict(item) for item in notice.missing],
        "next": None if notice.next is None else json.loads(json.dumps(notice.next)),
        "event": notice.event,
        "link": notice.link,
        "time": _time(notice.time),
        "subscription": subscription,
    }


def _esc(text: object) -> str:
    """Slack's three control characters escaped, so user text is never markup or a mention."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _title(notice: Notice) -> str:
    """``fraud-model v3 → Production`` (escaped)."""
    title = _esc(notice.name)
    if notice.version is not None:
        title += f" v{_esc(notice.version)}"
    target = notice.target or {}
    value = target.get("value")
    if value is not None:
        if target.get("kind") == "alias":
            removing = target.get("action") == "delete"
            title += f" → {'remove ' if removing else ''}@{_esc(value)}"
        else:
            title += f" → {_esc(value)}"
    return title


def _needs(notice: Notice) -> str | None:
    """``level 2 needs 1 business-owner (dave, frank)``, or ``None`` when nothing is missing."""
    if not notice.missing:
        return None
    nxt = notice.next or {}
    members = nxt.get("roles") or {}
    parts = []
    for item in notice.missing:
        role = item.get("role")
        who = members.get(role) if isinstance(members, Mapping) else None
        part = f"{_esc(item.get('count', 1))} {_esc(role)}"
        if who:
            part += " (" + ", ".join(_esc(person) for person in who) + ")"
        parts.append(part)
    level = nxt.get("level")
    return (f"level {_esc(level)} " if level is not None else "") + "needs " + ", ".join(parts)


_VERBS: dict[str, tuple[str, str]] = {  # type -> (emoji, what the actor did)
    "request.created": (":inbox_tray:", "requested"),
    "signoff.approved": (":ballot_box_with_check:", "approved"),
    "signoff.rejected": (":x:", "rejected"),
    "request.cancelled": (":no_entry_sign:", "cancelled"),
    "request.expired": (":alarm_clock:", "expired"),
    "request.superseded": (":arrows_counterclockwise:", "superseded"),
    "request.invalidated": (":warning:", "invalidated"),
    "stage.transitioned": (":white_check_mark:", "applied"),
    "alias.set": (":white_check_mark:", "applied"),
    "alias.deleted": (":white_check_mark:", "applied"),
    "breakglass.reviewed": (":rotating_light:", "break-glass reviewed"),
    TEST_EVENT: (":bell:", "test notification sent"),
}


def slack_message(notice: Notice) -> dict[str, Any]:
    """The body of a ``slack`` subscription: a ``text`` fallback and one mrkdwn section.

    The first line says where the request stands (``:hourglass: fraud-model v3 → Production:
    level 2 needs 1 business-owner (dave, frank)``, ``:white_check_mark: ... applied by dave``,
    ``:x: ... rejected by erin: <reason>``), the next who did what. ``&``, ``<`` and ``>`` in
    every user text are escaped.
    """
    emoji, verb = _VERBS.get(notice.type, (":information_source:", _esc(notice.type)))
    actor = _esc(notice.display_name or notice.actor)
    title = _title(notice)
    comment = _esc(_clip(notice.comment, _COMMENT_LIMIT)) if notice.comment else None
    needs = _needs(notice)
    if notice.type == "signoff.rejected":
        lines = [f"{emoji} {title}: rejected by {actor}" + (f": {comment}" if comment else "")]
        comment = None
    elif notice.status == "applied" or verb == "applied":
        lines = [f":white_check_mark: {title}: applied by {actor}"]
    elif needs is not None and notice.status in (None, "pending"):
        lines = [f":hourglass: {title}: {needs}", f"{emoji} {verb} by {actor}"]
    elif notice.type in ("request.expired", "request.superseded", "request.invalidated"):
        lines = [f"{emoji} {title}: {verb}"]
    else:
        lines = [f"{emoji} {title}: {verb} by {actor}"]
    if comment:
        lines.append(f"> {comment}")
    text = _clip("\n".join(lines), _SLACK_TEXT_LIMIT)
    section = text
    if notice.link:
        url = _esc(notice.link).replace("|", "%7C")
        section = _clip(text, _SLACK_TEXT_LIMIT - len(url) - 20) + f"\n<{url}|Open the request>"
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": section}}],
    }


def _body(subscription: Subscription, notice: Notice) -> str:
    data = (
        slack_message(notice)
        if subscription.format == "slack"
        else payload(notice, subscription.name)
    )
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    """``v1,<base64 HMAC-SHA256 of "{delivery_id}.{timestamp}.{body}">``, as MLflow signs."""
    signed = f"{delivery_id}.{timestamp}.{body}".encode()
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest()
    return f"{_SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


# -- delivery ------------------------------------------------------------------------------------


class _Failed(Exception):
    """A delivery that cannot start (e.g. its secret is missing); the message says why."""


class Notifier:
    """Delivers notices to subscriptions over HTTP POST, in the background.

    ``budget`` is how long :meth:`flush` (and the exit hook) wait at most; ``timeout`` is the
    (connect, read) timeout of each attempt; ``retries`` and ``backoff`` configure urllib3's
    ``Retry`` (on connection errors and on 500, 502, 503, 504). ``environ`` is where secrets are
    read (``os.environ`` by default). ``on_failure(subscription, notice, error)`` is called once
    for each delivery that still failed after its retries.
    """

    def __init__(
        self,
        subscriptions: Iterable[Subscription],
        on_failure: Callable[[Subscription, Notice, str], None],
        environ: Mapping[str, str] | None = None,
        budget: float = 3.0,
        timeout: tuple[float, float] = (2.0, 5.0),
        retries: int = 2,
        backoff: float = 0.2,
    ) -> None:
        self.subscriptions = tuple(subscriptions)
        self._on_failure = on_failure
        self._environ = environ
        self.budget = budget
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._lock = threading.Lock()
        self._running: list[tuple[threading.Thread, list[Outcome]]] = []
        _watch(self)

    def publish(self, notice: Notice) -> int:
        """Start a delivery to each subscription that wants ``notice``; return how many.

        Returns at once; never raises.
        """
        started = 0
        try:
            for sub in self.subscriptions:
                if not sub.wants(notice.type, notice.name):
                    continue
                box: list[Outcome] = []
                thread = threading.Thread(
                    target=lambda s=sub, b=box: b.append(self._deliver(s, notice)),
                    name=f"mlflow-approvals-notify-{sub.name}",
                    daemon=True,
                )
                with self._lock:
                    self._running.append((thread, box))
                thread.start()
                started += 1
        except Exception:  # e.g. no thread can be started: a notification never raises
            _logger.exception("could not start a notification delivery")
        return started

    def flush(self, timeout: float | None = None) -> list[Outcome]:
        """Wait at most ``timeout`` (default :attr:`budget`) seconds for started deliveries.

        Returns the outcomes of the deliveries that ended; those still running are left to
        run (and reported by a later flush).
        """
        deadline = time.monotonic() + (self.budget if timeout is None else timeout)
        with self._lock:
            running = list(self._running)
        for thread, _ in running:
            thread.join(max(0.0, deadline - time.monotonic()))
        outcomes: list[Outcome] = []
        with self._lock:
            for entry in running:
                thread, box = entry
                if not thread.is_alive():
                    self._running.remove(entry)
                    outcomes.extend(box)
        return outcomes

    def send(self, subscription: Subscription, notice: Notice) -> Outcome:
        """Deliver ``notice`` to ``subscription`` now, whatever its filters (``notify test``)."""
        return self._deliver(subscription, notice)

    # -- one delivery: _deliver -> _attempt -> _post --------------------------------------------

    def _deliver(self, sub: Subscription, notice: Notice) -> Outcome:
        """One delivery with its retries; a failure is reported to ``on_failure`` once."""
        delivery_id = str(uuid.uuid4())
        try:
            outcome = self._attempt(sub, notice, delivery_id)
        except Exception as exc:  # a bug here must not reach the caller either
            _logger.exception("notification %r failed unexpectedly", sub.name)
            outcome = Outcome(sub.name, False, None, f"{type(exc).__name__}: {exc}", delivery_id)
        if not outcome.delivered:
            _logger.warning("notification %r not delivered: %s", sub.name, outcome.error)
            try:
                self._on_failure(sub, notice, outcome.error or "not delivered")
            except Exception:
                _logger.exception("on_failure raised for notification %r", sub.name)
        return outcome

    def _attempt(self, sub: Subscription, notice: Notice, delivery_id: str) -> Outcome:
        body = _body(sub, notice)
        try:
            headers = self._headers(sub, delivery_id, body)
        except _Failed as exc:
            return Outcome(sub.name, False, None, str(exc), delivery_id)
        try:
            status, answer = self._post(sub.url, body, headers)
        except Exception as exc:
            error = f"{_describe(exc)} (to {sub.origin}, after {self.retries} retries)"
            return Outcome(sub.name, False, None, error, delivery_id)
        if 200 <= status < 300:
            return Outcome(sub.name, True, status, None, delivery_id)
        error = f"HTTP {status} from {sub.origin}"
        if status in (500, 502, 503, 504):
            error += f" after {self.retries} retries"
        if answer:
            error += f": {answer}"
        return Outcome(sub.name, False, status, error, delivery_id)

    def _headers(self, sub: Subscription, delivery_id: str, body: str) -> dict[str, str]:
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            DELIVERY_ID_HEADER: delivery_id,
            TIMESTAMP_HEADER: timestamp,
        }
        if sub.secret_env is not None:
            environ = os.environ if self._environ is None else self._environ
            secret = environ.get(sub.secret_env)
            if not secret:
                raise _Failed(
                    f"the environment variable {sub.secret_env} (secret_env of notification "
                    f"{sub.name!r}) is not set or empty, so the notice was not sent: set it to "
                    "the signing secret"
                )
            headers[SIGNATURE_HEADER] = sign(secret, delivery_id, timestamp, body)
        return headers

    def _post(self, url: str, body: str, headers: Mapping[str, str]) -> tuple[int, str]:
        """POST once through urllib3's retries; the status and the start of the answer."""
        with self._session() as session:
            response = session.post(
                url,
                data=body.encode("utf-8"),
                headers=dict(headers),
                timeout=self.timeout,
                allow_redirects=False,
                stream=True,
            )
            with response:
                answer = b""
                if not 200 <= response.status_code < 300:
                    answer = response.raw.read(_ERROR_BODY_LIMIT, decode_content=True) or b""
                text = " ".join(answer.decode("utf-8", "replace").split())
                return response.status_code, _clip(text, _ERROR_BODY_LIMIT)

    def _session(self) -> requests.Session:
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        retry = Retry(
            total=self.retries,
            backoff_factor=self.backoff,
            status_forcelist=(500, 502, 503, 504),
            allowed_methods={"POST"},
            raise_on_status=False,
            respect_retry_after_header=False,  # a Retry-After must not outlast the budget
        )
        session = requests.Session()
        session.trust_env = False  # no .netrc credentials sent to a subscriber
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session


_ERRNO = re.compile(r"\[Errno -?\d+\][^'\"),]*")


def _describe(exc: BaseException) -> str:
    """What went wrong, without the URL (whose path may be a secret)."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "no answer within the read timeout"
    found = _ERRNO.search(str(exc))
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error" + (f": {found.group(0).strip()}" if found else "")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "could not connect" + (f": {found.group(0).strip()}" if found else "")
    return type(exc).__name__


# -- waiting at exit -----------------------------------------------------------------------------

_live: weakref.WeakSet[Notifier] = weakref.WeakSet()
_hooked = False
_hook_lock = threading.Lock()


def _watch(notifier: Notifier) -> None:
    """Remember ``notifier`` and, once per process, register the exit hook."""
    global _hooked
    with _hook_lock:
        _live.add(notifier)
        if not _hooked:
            atexit.register(_wait_at_exit)
            _hooked = True


def _wait_at_exit() -> None:
    """Wait for deliveries still running, each notifier at most its budget."""
    for notifier in list(_live):
        try:
            notifier.flush()
        except Exception:  # pragma: no cover - never fail the exit
            _logger.exception("waiting for notifications at exit failed")
