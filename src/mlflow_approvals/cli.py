"""The ``mlflow-approvals`` command line, for people and for CI pipelines.

A thin click layer over :class:`~mlflow_approvals.client.ApprovalClient`: it parses arguments,
prints the result for a terminal or as one JSON document (``--json``), and maps the outcome to
an exit code a pipeline can branch on (see ``docs/cli.md``)::

    0  success (``wait``: applied)         3  still pending
    1  error                               4  rejected, cancelled, expired, superseded or
    2  usage error (a bad value too)          invalidated
                                           5  a check of the rule failed (check, request)
                                           6  not allowed (not authorized, separation of
                                              duties, a person signs once)

A step that was done already succeeds and says so: ``request`` for a target in effect (or with
its request open), ``approve`` by someone who signed, ``wait`` on a target in effect.

Start-up time matters here: importing MLflow takes seconds, so nothing from MLflow (nor the
modules that import it: ``client``, ``errors``, ``engine``, ...) is imported at module level.
``--help``, ``policy validate`` and ``policy explain`` never import MLflow.

Against a tracking server that runs the approvals app (``mlflow server --app-name approvals``),
``request``, ``approve``, ``reject``, ``cancel``, ``status``, ``list`` and ``wait`` never import
MLflow either: they go straight to the server's approval endpoints with
:class:`~mlflow_approvals.remote.RemoteLifecycle` (``requests`` only), one HTTP request a step.
There is no separate probe: the step itself is sent, and an answer that says the endpoints are
not there (404, 405, or basic-auth's plain 403 for a route it does not know, none of which
carries the approvals app's error class) means a plain tracking server, where the command
falls back to ``ApprovalClient`` (client-gated, as before) and nothing was changed. ``--as NAME``
costs one more request (the server's ``info``), so that a name other than the authenticated user
is refused before anything is sent. ``MLFLOW_APPROVALS_SERVER=1`` makes a server without the
endpoints an error instead of a fallback; ``MLFLOW_APPROVALS_SERVER=0`` skips the endpoints
(MLflow's way, as for any other server). The other commands import MLflow once, when they first
need the registry.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from mlflow_approvals._version import __version__
from mlflow_approvals.render import safe

if TYPE_CHECKING:
    from mlflow_approvals.client import ApprovalClient
    from mlflow_approvals.lifecycle import ApprovalRequest, Target
    from mlflow_approvals.policy import Policy
    from mlflow_approvals.remote import RemoteError, RemoteLifecycle

_T = TypeVar("_T")

__all__ = [
    "EXIT_CHECKS",
    "EXIT_ENDED",
    "EXIT_ERROR",
    "EXIT_NOT_ALLOWED",
    "EXIT_OK",
    "EXIT_PENDING",
    "EXIT_USAGE",
    "main",
]

DEFAULT_HTTP_RETRIES = "3"  # MLFLOW_HTTP_REQUEST_MAX_RETRIES unless the user set it
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # click's own code for usage errors
EXIT_PENDING = 3
EXIT_ENDED = 4
EXIT_CHECKS = 5
EXIT_NOT_ALLOWED = 6

_POLICY_ENV = "MLFLOW_APPROVALS_POLICY"  # as policy.ENV_VAR, which this module must not import
_SERVER_ENV = "MLFLOW_APPROVALS_SERVER"  # 1: an approvals server; 0: never its endpoints
_NO_POLICY_ENV = "MLFLOW_APPROVALS_NO_POLICY"  # true: no policy on purpose (nothing gated)
# The error classes of mlflow_approvals.errors (which imports MLflow), as the approvals server
# names them in its error answers ("mlflow_approvals_error"); tests check the two agree.
APPROVAL_ERRORS = frozenset(
    {
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
        "SageMakerUnavailable",
    }
)
_NOT_ALLOWED = frozenset({"NotAuthorized", "PermissionDenied"})  # exit 6, not 1
_ENDED = ("rejected", "cancelled", "expired", "superseded", "invalidated")
_STATUS_CHOICES = (
    "pending",
    "approved",
    "applied",
    "rejected",
    "cancelled",
    "expired",
    "superseded",
    "invalidated",
    "all",
)

_EXIT_CODES_HELP = """\b
Exit codes:
  0  success, also when it was done already (request: in effect; approve: signed;
     wait: the request was applied, or the target is in effect)
  1  error: the message on stderr says what to do (--debug shows the traceback)
  2  usage error: a missing or invalid argument or value (a version such as v2, --stage prod)
  3  still pending (request, status; wait when --timeout passes)
  4  rejected, cancelled, expired, superseded or invalidated (status, wait)
  5  a check the rule demands failed (check; request, approve: nothing filed or applied)
  6  not allowed: not authorized, separation of duties, a person signs once, a denied target

\b
Global options may come before or after the command.
Environment: MLFLOW_TRACKING_URI, MLFLOW_REGISTRY_URI, MLFLOW_TRACKING_USERNAME
(the actor, unless --as), MLFLOW_APPROVALS_POLICY (the policy file, unless --policy),
MLFLOW_APPROVALS_NO_POLICY (true: no policy on purpose), MLFLOW_APPROVALS_SERVER (1: the
tracking server must run the approvals app; 0: do not send steps to its approval endpoints
directly).
"""


# ------------------------------------------------------------------------- settings ------
@dataclass
class Settings:
    """The global options, and the one client (or approvals server) the command uses."""

    tracking_uri: str | None = None
    policy: str | None = None
    no_policy: bool = False
    actor: str | None = None
    json: bool = False
    debug: bool = False
    uri_given: bool = False  # --tracking-uri on the command line (not from the environment)
    _client: ApprovalClient | None = field(default=None, repr=False)
    _server: RemoteLifecycle | None = field(default=None, repr=False)
    _server_state: str = field(default="unknown", repr=False)  # unknown/assumed/confirmed/none

    def client(self) -> ApprovalClient:
        """The ``ApprovalClient`` (MLflow is imported here, on first use, once)."""
        if self._client is None:
            # MLflow retries an unreachable server for about four minutes by default; a command
            # in a terminal or a pipeline should say so within seconds. A value the user set wins.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", DEFAULT_HTTP_RETRIES)
            from mlflow_approvals.client import ApprovalClient
            from mlflow_approvals.policy import Policy

            # No policy is the command's to refuse or allow (see require_policy), not a warning.
            self._client = ApprovalClient(
                tracking_uri=self.tracking_uri, policy=self.policy or Policy(), actor=self.actor
            )
        return self._client

    def require_policy(self, client: ApprovalClient) -> None:
        """Refuse a gated step without a policy, unless an approvals server decides (it applies
        its own) or --no-policy says so on purpose, which is then said on stderr."""
        if self.policy is not None or client.enforcing_server:
            return
        if not self.no_policy:
            raise Failure(
                "no policy: without one nothing is gated, and the change would be applied at "
                "once. Pass --policy FILE or set MLFLOW_APPROVALS_POLICY (check its spelling "
                f"in the pipeline's environment); to run without a policy on purpose, pass "
                f"--no-policy or set {_NO_POLICY_ENV}=true",
                "NoPolicy",
            )
        _echo(
            f"warning: no policy (--no-policy / {_NO_POLICY_ENV}): nothing is gated, the "
            "change is applied at once",
            err=True,
        )

    # -- the approvals server's endpoints, without MLflow ----------------------------------
    def _server_mode(self) -> str:
        """``auto`` (try the endpoints, fall back), ``required`` or ``off``, from the env."""
        value = (os.environ.get(_SERVER_ENV) or "").strip().lower()
        if value in ("1", "true", "yes", "on"):
            return "required"
        if value in ("0", "false", "no", "off"):
            return "off"
        return "auto"

    def server(self) -> RemoteLifecycle | None:
        """The approval endpoints the registry commands use when the tracking server may have
        them (an ``http(s)`` tracking URI that is also the registry's), else None.

        Without ``--as`` nothing is sent here: the first step tells (see :meth:`run`). With
        ``--as`` the server's ``info`` says who it authenticates the caller as, and a different
        name is refused before anything else is sent.
        """
        if self._server_state == "none" or self._client is not None:
            return None
        if self._server is not None:
            return self._server
        mode, uri = self._server_mode(), self.tracking_uri or ""
        registry = (os.environ.get("MLFLOW_REGISTRY_URI") or "").rstrip("/")
        usable = uri.startswith(("http://", "https://")) and registry in ("", uri.rstrip("/"))
        if mode == "off" or not usable:
            if mode == "required":
                raise Failure(
                    f"{_SERVER_ENV}=1 asks for an approvals server, but the tracking URI "
                    f"({self.where()}) is not an http(s) server that is also the registry: set "
                    f"--tracking-uri / MLFLOW_TRACKING_URI to it, or unset {_SERVER_ENV}",
                    "NoApprovalsServer",
                )
            self._server_state = "none"
            return None
        from mlflow_approvals.remote import RemoteError, RemoteLifecycle, probe

        remote = RemoteLifecycle(uri)
        if self.actor is None:
            self._server, self._server_state = remote, "assumed"
            return remote
        try:
            info = probe(uri)
        except RemoteError as exc:
            if not _no_endpoints(exc):
                raise
            info = None
        if info is None:  # not an approvals server (or not reachable): --as is a claim there
            if mode == "required":
                raise _not_approvals(self.where(), None)
            self._server_state = "none"
            return None
        remote.info = dict(info)
        if remote.user and self.actor != remote.user:
            raise NotAllowed(
                f"the server authenticated you as '{remote.user}'; acting as '{self.actor}' "
                f"cannot be claimed. Sign in as '{self.actor}' instead "
                "(MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD), or drop --as",
                "NotAuthorized",
            )
        self._server, self._server_state = remote, "confirmed"
        return remote

    def run(
        self,
        on_server: Callable[[RemoteLifecycle], _T],
        on_client: Callable[[ApprovalClient], _T],
    ) -> _T:
        """One step: ``on_server`` on the approval endpoints when the tracking server has them
        (no MLflow import), else ``on_client`` on the ``ApprovalClient``.

        Until the server has answered one step, an answer that says the endpoints are not there
        (or a server that cannot be reached) sends the step to ``ApprovalClient`` instead, which
        then does what it does for any tracking server: nothing was changed by the attempt.
        """
        remote = self.server()
        if remote is not None:
            import requests

            from mlflow_approvals.remote import RemoteError

            try:
                result = on_server(remote)
            except RemoteError as exc:
                if self._server_state == "confirmed" or not _no_endpoints(exc):
                    raise
                if self._server_mode() == "required":
                    raise _not_approvals(self.where(), exc) from None
            except requests.ConnectionError:
                if self._server_state == "confirmed" or self._server_mode() == "required":
                    raise
            else:
                self._server_state = "confirmed"
                return result
            self._server, self._server_state = None, "none"
        return on_client(self.client())

    def acting(self) -> str | None:
        """Who the command acts as, when known: the client's actor, else the user the approvals
        server authenticated (from ``info``), else the user whose credentials are sent."""
        if self._client is not None:
            return str(self._client.actor)
        if self._server is not None and self._server.user:
            return self._server.user
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        return user if user and os.environ.get("MLFLOW_TRACKING_PASSWORD") else None

    def where(self) -> str:
        """The tracking URI in use, for messages."""
        if self.tracking_uri:
            return self.tracking_uri
        if self._client is not None:
            return str(self._client.tracking_uri)
        return "MLflow's default tracking URI (set MLFLOW_TRACKING_URI or --tracking-uri)"

    # -- output ------------------------------------------------------------------------
    def out(self, doc: Any, human: Callable[[], list[str]]) -> None:
        """Print the result: ``doc`` as one JSON document, or the lines ``human()`` returns."""
        if self.json:
            _echo_json(doc)
        else:
            for line in human():
                _echo(line)

    def note(self, text: str) -> None:
        """A message for the person reading: stdout in human mode, stderr under ``--json``."""
        _echo(text, err=self.json)


def _echo(line: str = "", err: bool = False) -> None:
    """Write one line for a person: every human-readable line the command prints comes here
    (click's own usage errors excepted, whose message ``_Group`` escapes before click shows it).

    The line is escaped whole (:func:`~mlflow_approvals.render.safe`), so no value in it (a
    comment, a name, an event type) can move the cursor, reorder the text or start a line of
    its own. Callers pass one line at a time, never text whose newlines are meant as breaks.
    """
    click.echo(safe(line), err=err)


def _echo_json(doc: Any) -> None:
    """Write one JSON document on stdout, exactly as the values are: ``json.dumps`` already
    escapes every control and non-ASCII character (``ensure_ascii``), and round-trips them."""
    click.echo(json.dumps(doc, indent=2, default=str))


def _error_lines(message: str, multiline: bool = False) -> list[str]:
    """``error: MESSAGE`` as lines for :func:`_echo`; only a ``multiline`` message (a policy
    file's problems, one per line) is split at its newlines."""
    lines = message.split("\n") if multiline else [message]
    return [f"error: {lines[0]}", *lines[1:]]


class Failure(click.ClickException):
    """An error the command line reports in one short message, exit code 1.

    Under ``--json`` stdout also gets ``{"error": {"type": ..., "message": ...}}``. A newline
    in the message is shown as ``\\n`` unless ``multiline`` (see :func:`_error_lines`).
    """

    exit_code = EXIT_ERROR

    def __init__(self, message: str, kind: str = "Error", *, multiline: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.multiline = multiline
        self.as_json = False  # set from --json by the group, on the way out

    def show(self, file: IO[Any] | None = None) -> None:
        if self.as_json:
            _echo_json({"error": {"type": self.kind, "message": self.message}})
        for line in _error_lines(self.message, self.multiline):
            _echo(line, err=True)


class NotAllowed(Failure):
    """A refusal: not authorized, separation of duties, a person signs once (exit code 6)."""

    exit_code = EXIT_NOT_ALLOWED


def _refusal(message: str, kind: str, *, multiline: bool = False) -> Failure:
    """A Failure of error class ``kind``: exit 6 for a refusal (``_NOT_ALLOWED``), else 1."""
    cls = NotAllowed if kind in _NOT_ALLOWED else Failure
    return cls(message, kind, multiline=multiline)


class ChecksFailure(Failure):
    """Checks the rule demands failed (exit code 5): the message, then one line per check."""

    exit_code = EXIT_CHECKS

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message, "ChecksFailed")
        self.report = report

    def show(self, file: IO[Any] | None = None) -> None:
        if self.as_json:
            doc = {"type": self.kind, "message": self.message, "checks": self.report.to_dict()}
            _echo_json({"error": doc})
        for line in [*_error_lines(self.message), *self.report.lines()]:
            _echo(line, err=True)


def _short_cause(text: str) -> str:
    """The useful tail of a ``requests``/urllib3 connection error, e.g. 'Connection refused'."""
    for marker in ("[Errno", "Name or service not known", "timed out", "Connection refused"):
        at = text.find(marker)
        if at >= 0:
            tail = text[at:]
            if tail.startswith("[Errno"):
                tail = tail.split("]", 1)[-1]
            return tail.strip().split('"')[0].split("'")[0].rstrip(")").strip()
    return text[:200]


def _no_endpoints(exc: RemoteError) -> bool:
    """True when an error answer says the approval endpoints are not there: a plain tracking
    server's 404/405 for an unknown route, or basic-auth's plain 403 for a route it has no
    rule for (it refuses those by default). The approvals app names its error class in every
    error answer it makes, so none of its own refusals (a 404 for an unknown request, a 403
    for a sign-off the policy does not allow) looks like this."""
    return exc.kind is None and (exc.status < 400 or exc.status in (403, 404, 405))


def _not_approvals(where: str, exc: RemoteError | None) -> Failure:
    answer = f" (HTTP {exc.status} from its approval endpoints)" if exc is not None else ""
    return Failure(
        f"{_SERVER_ENV}=1 asks for an approvals server, but the tracking server at {where} "
        f"does not run the approvals app{answer}: start it with `mlflow server --app-name "
        f"approvals`, or unset {_SERVER_ENV} to use this server client-gated",
        "NoApprovalsServer",
    )


def _remote_failure(exc: RemoteError, settings: Settings) -> Failure:
    """An error answer of the approval endpoints, reported as ``ApprovalClient``'s would be."""
    if exc.kind == "ChecksFailed" and exc.checks is not None:
        from mlflow_approvals.checks import CheckReport

        return ChecksFailure(exc.message, CheckReport.from_dict(exc.checks))
    if exc.kind in APPROVAL_ERRORS:
        # as client._remote_call reports it
        return _refusal(
            exc.message, "InvalidRequest" if exc.kind == "ApprovalPending" else exc.kind
        )
    if exc.status == 401:
        return Failure(
            f"the tracking server at {settings.where()} did not accept the credentials (HTTP "
            "401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
            "MLFLOW_TRACKING_TOKEN)",
            "MlflowException",
        )
    text = exc.message.strip()
    first = text.splitlines()[0] if text else f"HTTP {exc.status}"
    kind = "PermissionDenied" if exc.status == 403 else "MlflowException"
    return _refusal(f"MLflow: {first[:500]}", kind)


def _failure(exc: Exception, settings: Settings) -> Failure:
    """Map an exception to a short message (exit 1); expected errors get no traceback."""
    remote = sys.modules.get("mlflow_approvals.remote")  # not imported: no RemoteError raised
    if remote is not None and isinstance(exc, remote.RemoteError):
        return _remote_failure(exc, settings)
    if "mlflow" in sys.modules:  # no MLflow imported means no MLflow error can be raised
        from mlflow.exceptions import MlflowException

        from mlflow_approvals.errors import ApprovalError, ChecksFailed, PolicyError

        if isinstance(exc, ChecksFailed):
            return ChecksFailure(exc.message, exc.results)
        if isinstance(exc, ApprovalError):
            # a PolicyError lists the local policy file's problems, one per line
            multiline = isinstance(exc, PolicyError)
            return _refusal(exc.message, type(exc).__name__, multiline=multiline)
        if isinstance(exc, MlflowException):
            message = str(exc.message)
            if message.startswith("API request to") and "failed with exception" in message:
                return Failure(
                    f"could not reach the tracking server at {settings.where()} "
                    f"({_short_cause(message)}): check --tracking-uri / MLFLOW_TRACKING_URI "
                    "and that the server is running",
                    "ConnectionError",
                )
            first = message.strip().splitlines()[0] if message.strip() else repr(exc)
            denied = exc.error_code == "PERMISSION_DENIED"  # e.g. basic-auth: not allowed
            kind = "PermissionDenied" if denied else type(exc).__name__
            return _refusal(f"MLflow: {first[:500]}", kind)
    if "requests" in sys.modules:
        import requests

        if isinstance(exc, requests.ConnectionError):
            return Failure(
                f"could not reach the tracking server at {settings.where()} "
                f"({_short_cause(str(exc))}): check --tracking-uri / MLFLOW_TRACKING_URI",
                "ConnectionError",
            )
    return Failure(
        f"unexpected {type(exc).__name__}: {exc} (run again with --debug to see the traceback)",
        type(exc).__name__,
    )


@contextmanager
def _quiet_mlflow(debug: bool) -> Iterator[None]:
    """Hide MLflow's stage-deprecation FutureWarnings, which every stage call emits."""
    with warnings.catch_warnings():
        if not debug:
            warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def _escaped(exc: click.ClickException) -> click.ClickException:
    """Click's own error ``exc`` with its message escaped, shown by click as before (with the
    command's usage for a usage error, exit 2; else exit 1). ``exc`` itself when there is
    nothing to escape, or when it is the help that a bare ``mlflow-approvals`` prints."""
    message = exc.format_message()
    if safe(message) == message or type(exc).__name__ == "NoArgsIsHelpError":
        return exc
    if isinstance(exc, click.UsageError):
        return click.UsageError(safe(message), exc.ctx)
    return click.ClickException(safe(message))


class _Group(click.Group):
    """A group that turns every non-click exception of its commands into a short message,
    and escapes the message of click's own errors (which click prints itself, not ``_echo``)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as exc:  # a usage error in the global options
            escaped = _escaped(exc)
            if escaped is exc:
                raise
            raise escaped from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with _quiet_mlflow(bool(ctx.params.get("debug"))):
                return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except click.ClickException as exc:
            if not isinstance(exc, Failure):  # a usage error of a command
                escaped = _escaped(exc)
                if escaped is exc:
                    raise
                raise escaped from exc
            found = ctx.find_object(Settings)
            exc.as_json = found.json if found else bool(ctx.params.get("as_json"))
            raise
        except Exception as exc:
            settings = ctx.find_object(Settings) or Settings()
            if settings.debug:
                for line in traceback.format_exc().rstrip("\n").split("\n"):
                    _echo(line, err=True)
            failure = _failure(exc, settings)
            failure.as_json = settings.json
            raise failure from exc


# ------------------------------------------------------------------------- formatting ----
def _ts(t: datetime | None) -> str:
    return "-" if t is None else t.strftime("%Y-%m-%d %H:%M:%SZ")


def _target(request: ApprovalRequest) -> str:
    return str(request.record.target)


def _signers(request: ApprovalRequest) -> str:
    return ", ".join(s.actor for s in request.signoffs if s.decision == "approve") or "nobody"


def _needs(request: ApprovalRequest) -> str:
    return ", ".join(str(m) for m in request.missing)


def _status_line(request: ApprovalRequest) -> str:
    """Where a request stands, in one phrase."""
    status = request.status.value
    if status == "pending":
        return (
            f"pending at level {request.open_level} of {len(request.levels)} "
            f"(needs {_needs(request)})"
        )
    if status == "approved":
        return (
            "approved by every level but not applied yet: run `mlflow-approvals approve "
            f"{request.name} {request.version}` to retry the apply"
        )
    if status == "applied" and request.applied is not None:
        return f"applied by {request.applied.actor} at {_ts(request.applied.time)}"
    if status == "rejected":
        who = next((s for s in request.signoffs if s.decision == "reject"), None)
        if who is not None:
            reason = f": {who.comment}" if who.comment else ""
            return f"rejected by {who.actor} at {_ts(who.time)}{reason}"
    if status == "cancelled" and request.cancelled is not None:
        reason = f": {request.cancelled.comment}" if request.cancelled.comment else ""
        return f"cancelled by {request.cancelled.actor} at {_ts(request.cancelled.time)}{reason}"
    if status == "expired":
        deadline = request.expired.time if request.expired else request.expires_at
        if request.fully_signed:
            return f"expired at {_ts(deadline)}: approved, but not applied before its deadline"
        return f"expired at {_ts(deadline)} without complete sign-off"
    if status == "superseded" and request.superseded is not None:
        return f"superseded at {_ts(request.superseded.time)}: {request.superseded.comment}"
    return status


def _level_lines(request: ApprovalRequest) -> list[str]:
    """One line per level: done, open or waiting, and who signed each requirement."""
    lines = []
    for number, level in enumerate(request.levels, start=1):
        parts = []
        done = True
        for req in level:
            names = [
                s.actor
                for s in request.signoffs
                if s.decision == "approve" and s.level == number and s.role == req.role
            ]
            done = done and len(names) >= req.count
            signed = f" ({', '.join(names)})" if names else ""
            parts.append(f"{req.role} {min(len(names), req.count)}/{req.count}{signed}")
        if done:
            state = "done"
        elif number == request.open_level:
            state = "OPEN"
        elif request.status.value == "pending":
            state = "waiting"
        else:
            state = "-"
        lines.append(f"  level {number}  {state:<8} " + "; ".join(parts))
    return lines


def _request_view(request: ApprovalRequest) -> list[str]:
    """The level-by-level view of a request that ``status`` and the sign-off commands print."""
    comment = f' "{request.comment}"' if request.comment else ""
    lines = [
        f"request {request.id}: {request.name} v{request.version} -> {_target(request)}",
        f"  status   {_status_line(request)}",
        f"  filed    by {request.requester} at {_ts(request.created_at)}{comment}",
    ]
    rule = f"  rule     {request.rule}"
    if request.expires_at is not None and request.is_open:
        rule += f" (expires {_ts(request.expires_at)})"
    lines.append(rule)
    lines += _level_lines(request)
    if request.missing:
        lines.append(f"  missing  {_needs(request)} at level {request.open_level}")
    if request.checks:
        when = request.checks[0].evaluated_at
        lines.append(f"  checks   when filed{'' if when is None else ' at ' + _ts(when)}:")
        lines += [f"    {line}" for line in _check_lines(request.checks)]
    if request.digest:
        lines.append(f"  evidence {request.digest} (the model files every signer approves)")
    if request.changes is not None:
        from mlflow_approvals.changes import lines as change_lines

        lines.append("  changes")
        lines += [f"    {line}" for line in change_lines(dict(request.changes))]
    return lines


def _check_lines(results: Any) -> list[str]:
    from mlflow_approvals.checks import CheckReport

    return CheckReport(tuple(results)).lines()


def _applied_at_once(request: ApprovalRequest) -> bool:
    """True for the result of an ungated request: no rule matched, the change was made."""
    return not request.id and request.status.value == "applied"


def _exit_for(request: ApprovalRequest) -> int:
    """``status``'s exit code: 0 applied, 3 pending or approved, 4 ended otherwise."""
    status = request.status.value
    if status == "applied":
        return EXIT_OK
    if status in _ENDED:
        return EXIT_ENDED
    return EXIT_PENDING


def _table(rows: list[list[str]]) -> list[str]:
    """Aligned columns, as they will look once ``_echo`` has escaped each line."""
    widths = [max(len(safe(row[i])) for row in rows) for i in range(len(rows[0]))]
    # only the padding is stripped: a value's trailing CR or tab is shown, not dropped
    padded = [
        [c + " " * (w - len(safe(c))) for c, w in zip(row, widths, strict=True)] for row in rows
    ]
    return ["  ".join(cells).rstrip(" ") for cells in padded]


def _parse_duration(text: str, option: str) -> timedelta:
    from mlflow_approvals.policy import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _load_policy(path: str) -> Policy:
    """Read a policy file with the pure parser (no MLflow import); exit 1 if invalid."""
    from mlflow_approvals.policy import PolicyInvalid, parse_policy

    try:
        return parse_policy(path)
    except PolicyInvalid as exc:
        raise Failure(str(exc), "PolicyInvalid", multiline=True) from None


def _finish(code: int) -> NoReturn:
    raise click.exceptions.Exit(code)


# ------------------------------------------------------------------------- the group -----
# The global options, defined once: on the group (where they read the environment), and on
# every command, so that they may follow the command too (`approve fraud-model 3 --as bob`).
_GLOBAL_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (
        ("--tracking-uri", "tracking_uri"),
        {
            "envvar": "MLFLOW_TRACKING_URI",
            "metavar": "URI",
            "help": "The MLflow tracking server (http://...) or sqlite:/// registry. The "
            "registry URI follows it unless MLFLOW_REGISTRY_URI is set.",
        },
    ),
    (
        ("--policy", "policy"),
        {
            "envvar": _POLICY_ENV,
            "metavar": "FILE",
            "help": "The approval policy (YAML or JSON). Without one `request` refuses, "
            "unless --no-policy or an approvals server (which applies its own) decides.",
        },
    ),
    (
        ("--no-policy", "no_policy"),
        {
            "is_flag": True,
            "envvar": _NO_POLICY_ENV,
            "help": "Run without a policy on purpose: nothing is gated, every request is "
            "applied at once.",
        },
    ),
    (
        ("--as", "actor"),
        {
            "metavar": "USER",
            "help": "Who acts (default: MLFLOW_TRACKING_USERNAME, else the OS user). In "
            "client-gated mode this is a claim, not a proof; against an approvals server it "
            "must be the user you signed in as.",
        },
    ),
    (
        ("--json", "as_json"),
        {
            "is_flag": True,
            "help": "Print one JSON document on stdout and nothing else there; messages go to "
            "stderr.",
        },
    ),
    (("--debug", "debug"), {"is_flag": True, "help": "Show the traceback of an error."}),
)
_F = TypeVar("_F", bound=Callable[..., Any])


def _check_uri(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A tracking URI MLflow can use: one without a scheme is a usage error saying what to
    write (MLflow would take it for a file store path and answer with its file-store notice)."""
    if not value:
        return None
    if "://" in value or re.match(r"^(databricks|databricks-uc|uc)(:|$)", value):
        return value
    raise click.BadParameter(
        f"the tracking URI '{value}' has no scheme. Write http://{value.lstrip('/')} (or "
        f"https://...) for a tracking server, or sqlite:///path/to/mlflow.db for a local "
        "registry.",
        param_hint="'--tracking-uri' / MLFLOW_TRACKING_URI",
    )


def _hoist(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the command: it overrides the group's value."""
    if param.name is None or ctx.get_parameter_source(param.name) is not (
        click.core.ParameterSource.COMMANDLINE
    ):
        return
    settings = ctx.ensure_object(Settings)
    if param.name == "tracking_uri":
        settings.tracking_uri = _check_uri(ctx, param, value)
        settings.uri_given = True
    else:
        attribute = {"as_json": "json"}.get(param.name, param.name)
        setattr(settings, attribute, value)


def _global(command: _F) -> _F:
    """Accept the global options after the command as well (the same definitions)."""
    for decls, kwargs in reversed(_GLOBAL_OPTIONS):
        extra = {k: v for k, v in kwargs.items() if k != "envvar"}
        command = click.option(*decls, expose_value=False, callback=_hoist, **extra)(command)
    return command


def _group_options(group: _F) -> _F:
    for decls, kwargs in reversed(_GLOBAL_OPTIONS):
        extra: dict[str, Any] = {"show_envvar": "envvar" in kwargs, **kwargs}
        if decls[0] == "--tracking-uri":
            extra["callback"] = _check_uri
        group = click.option(*decls, **extra)(group)
    return group


@click.group(cls=_Group, epilog=_EXIT_CODES_HELP, context_settings={"max_content_width": 100})
@_group_options
@click.version_option(__version__, prog_name="mlflow-approvals")
@click.pass_context
def main(
    ctx: click.Context,
    tracking_uri: str | None,
    policy: str | None,
    no_policy: bool,
    actor: str | None,
    as_json: bool,
    debug: bool,
) -> None:
    """Multi-level human sign-off in front of MLflow model promotion.

    Ask for a model version to move to a stage or alias (request), sign off (approve, reject),
    follow it (status, wait, list), and check the tamper-evident audit trail (audit verify).
    The global options may come before or after the command.
    """
    source = ctx.get_parameter_source("tracking_uri")
    ctx.obj = Settings(
        tracking_uri=tracking_uri or None,
        policy=policy or None,
        no_policy=no_policy,
        actor=actor,
        json=as_json,
        debug=debug,
        uri_given=source is click.core.ParameterSource.COMMANDLINE,
    )


_comment = click.option("--comment", "-m", help="Why: recorded with the request and audit event.")
_request_id = click.option(
    "--request",
    "request_id",
    metavar="ID",
    help="The request (default: the version's open one, else the one applied last, else the "
    "newest).",
)
_pass_settings = click.make_pass_decorator(Settings, ensure=True)


def _pass(command: _F) -> _F:
    """Pass the Settings to a command, which also accepts the global options after its name."""
    passed: _F = _pass_settings(command)  # type: ignore[assignment]
    return _global(passed)


class _Version(click.ParamType):  # type: ignore[type-arg]
    """A model version: a whole number (``3``), else a usage error."""

    name = "version"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from mlflow_approvals.targets import version_problem

        problem = version_problem(value)
        if problem:
            self.fail(problem)
        return str(int(str(value).strip()))


VERSION = _Version()


def _stage(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The canonical spelling of a --stage value; else a usage error listing the stages."""
    from mlflow_approvals.policy import canonical_stage

    if value is None:
        return None
    try:
        return canonical_stage(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _alias(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An --alias value MLflow accepts; else a usage error saying what an alias may be."""
    from mlflow_approvals.targets import alias_problem

    if value is None:
        return None
    problem = alias_problem(value)
    if problem:
        raise click.BadParameter(problem)
    return value


# ------------------------------------------------------------------------- requests ------
_stage_option = click.option(
    "--stage",
    metavar="STAGE",
    callback=_stage,
    help="Ask for this stage (None, Staging, Production, Archived).",
)
_alias_option = click.option(
    "--alias", metavar="ALIAS", callback=_alias, help="Ask for this alias to point at the version."
)


@main.command()
@click.argument("model")
@click.argument("version", type=VERSION)
@_stage_option
@click.option(
    "--archive-existing",
    is_flag=True,
    help="With --stage: archive the versions in that stage when the request is applied.",
)
@_alias_option
@_comment
@_pass
def request(
    settings: Settings,
    model: str,
    version: str,
    stage: str | None,
    archive_existing: bool,
    alias: str | None,
    comment: str | None,
) -> None:
    """Ask for MODEL VERSION to move to a stage (--stage) or an alias (--alias).

    Exits 3 while the request waits for sign-off (a request for the same target that is open
    already is returned, not filed again), 0 when no rule gates the target and the change was
    applied at once, or when the version holds the target already (nothing is filed).
    """
    if (stage is None) == (alias is None):
        raise click.UsageError("give exactly one of --stage STAGE or --alias ALIAS")
    if archive_existing and stage is None:
        raise click.UsageError("--archive-existing goes with --stage")
    from mlflow_approvals.lifecycle import Target

    if stage is not None:
        target = Target("stage", stage, "set", archive_existing)
    else:
        target = Target("alias", alias or "", "set")

    def on_client(client: ApprovalClient) -> tuple[ApprovalRequest, bool]:
        settings.require_policy(client)
        return client.file_request(
            model,
            version,
            stage=stage,
            alias=alias,
            archive_existing_versions=archive_existing,
            comment=comment,
        )

    try:
        req, created = settings.run(
            lambda server: server.filed(model, version, target, comment), on_client
        )
    except Exception as exc:
        if not _is_error(exc, "AlreadyInEffect"):
            raise
        _in_effect(settings, model, version, target)
        return
    doc = {**req.to_dict(), "created": created, "already": None if created else "open"}
    notes = [] if created else _not_new(req, comment, archive_existing)
    for line in notes if settings.json else ():
        _echo(line, err=True)

    def human() -> list[str]:
        if _applied_at_once(req):
            return [
                f"no rule of the policy gates {_target(req)} of {model}: applied at once "
                f"({req.name} v{req.version} -> {_target(req)})"
            ]
        lines = [*notes, *_request_view(req)]
        if req.status.value == "pending":
            lines.append(
                f"next: approvers run `mlflow-approvals approve {req.name} {req.version}`; "
                f"follow it with `mlflow-approvals wait {req.name} {req.version}`"
            )
        return lines

    settings.out(doc, human)
    _finish(_exit_for(req))


def _unrecorded(comment: str) -> str:
    return f'your comment was not recorded: "{comment}" (nothing new was signed)'


def _is_error(exc: Exception, kind: str) -> bool:
    """True when ``exc`` is the error class ``kind`` (or a subclass), raised in this process
    or named by the approvals server's answer."""
    remote = sys.modules.get("mlflow_approvals.remote")
    if remote is not None and isinstance(exc, remote.RemoteError):
        return bool(exc.kind == kind)
    return kind in {cls.__name__ for cls in type(exc).__mro__}


def _not_new(req: ApprovalRequest, comment: str | None, archive: bool) -> list[str]:
    """What a `request` that found its request open already tells: nothing new, and what of
    the asked was not recorded (a comment, another --archive-existing)."""
    lines = [
        f"not new: request {req.id} for {_target(req)} was open already (filed by "
        f"{req.requester} at {_ts(req.created_at)}); nothing was filed"
    ]
    if comment and comment != req.comment:
        lines.append(
            f'your comment was not recorded: "{comment}" (the request keeps its own). To '
            "record it, cancel the request and file it again"
        )
    if req.target_kind == "stage" and req.archive_existing_versions != archive:
        does = "archives" if req.archive_existing_versions else "does not archive"
        asked = "with" if archive else "without"
        lines.append(
            f"the open request {does} the versions in stage {req.target} when applied; you "
            f"asked {asked} --archive-existing. To change that, cancel it (`mlflow-approvals "
            f"cancel {req.name} {req.version} --request {req.id}`) and file it again"
        )
    return lines


def _in_effect(settings: Settings, model: str, version: str, target: Target) -> NoReturn:
    """`request` for a target the version holds already: nothing filed, exit 0, with the
    request that applied it when there is one."""
    from mlflow_approvals.targets import same_target

    held: ApprovalRequest | None = None
    try:
        found = _get(settings, model, version, None)
        if found.status.value == "applied" and same_target(found.record.target, target):
            held = found
    except Exception:  # no request, or several open: the registry's word is enough
        held = None
    what = f"stage {target.value}" if target.kind == "stage" else f"alias @{target.value}"
    if held is not None:
        doc: dict[str, Any] = held.to_dict()
    else:
        doc = {
            "id": "",
            "name": model,
            "version": version,
            "target": {
                "kind": target.kind,
                "value": target.value,
                "action": target.action,
                "archive_existing_versions": target.archive_existing_versions,
            },
            "status": "applied",
        }
    doc.update(created=False, already="in effect")

    def human() -> list[str]:
        head = f"{model} v{version} already has {what}: nothing was filed"
        if held is None:
            return [head]
        return [f"{head} (applied by request {held.id})", *_request_view(held)]

    settings.out(doc, human)
    _finish(EXIT_OK)


@main.command()
@click.argument("model")
@click.argument("version", type=VERSION)
@click.option(
    "--stage", metavar="STAGE", callback=_stage, help="Check what moving to this stage demands."
)
@click.option(
    "--alias", metavar="ALIAS", callback=_alias, help="Check what pointing this alias here demands."
)
@_pass
def check(
    settings: Settings, model: str, version: str, stage: str | None, alias: str | None
) -> None:
    """Dry-run the checks the rule gating --stage or --alias demands of MODEL VERSION.

    Every check is evaluated and printed, and nothing is written. Exits 0 when all pass (or no
    rule gates the target), 5 when any fails: a CI job can fail fast before anyone is asked.
    """
    if (stage is None) == (alias is None):
        raise click.UsageError("give exactly one of --stage STAGE or --alias ALIAS")
    from mlflow_approvals.checks import CheckReport
    from mlflow_approvals.lifecycle import Target

    target = (
        Target("stage", stage, "set") if stage is not None else Target("alias", alias or "", "set")
    )
    found = settings.run(
        lambda server: server.check(model, version, target),
        lambda client: client.check(model, version, stage=stage, alias=alias).to_dict(),
    )
    report = CheckReport.from_dict(found)
    what = f"{model} v{version} -> {'stage ' + stage if stage else '@' + (alias or '')}"

    def human() -> list[str]:
        if not report.results:
            return [f"{what}: no checks (no rule gates it, or its rule demands none)"]
        verdict = "all checks pass" if report.passed else f"{len(report.failed)} check(s) fail"
        return [f"{what}: {verdict}", *report.lines()]

    settings.out(report.to_dict(), human)
    _finish(EXIT_OK if report.passed else EXIT_CHECKS)


@main.command(name="break-glass")
@click.argument("model")
@click.argument("version", type=VERSION)
@click.option("--stage", metavar="STAGE", callback=_stage, help="Apply this stage now.")
@click.option(
    "--archive-existing",
    is_flag=True,
    help="With --stage: archive the versions in that stage.",
)
@click.option(
    "--alias", metavar="ALIAS", callback=_alias, help="Point this alias at the version now."
)
@click.option("--reason", required=True, help="What the emergency is (recorded; required).")
@_pass
def break_glass(
    settings: Settings,
    model: str,
    version: str,
    stage: str | None,
    archive_existing: bool,
    alias: str | None,
    reason: str,
) -> None:
    """Apply a gated stage or alias NOW, in an emergency (roles the rule's break_glass names).

    The change is audited as break-glass, and a review by the rule's levels opens, due within
    the rule's review_within: approvers sign it with `approve` as usual. Exits 3 while the
    review waits (the change is already applied); `status` exits 0 once it is reviewed.
    """
    if (stage is None) == (alias is None):
        raise click.UsageError("give exactly one of --stage STAGE or --alias ALIAS")
    if archive_existing and stage is None:
        raise click.UsageError("--archive-existing goes with --stage")
    from mlflow_approvals.lifecycle import Target

    if stage is not None:
        target = Target("stage", stage, "set", archive_existing)
    else:
        target = Target("alias", alias or "", "set")
    req = settings.run(
        lambda server: server.break_glass(model, version, target, reason),
        lambda client: client.break_glass(
            model,
            version,
            reason=reason,
            stage=stage,
            alias=alias,
            archive_existing_versions=archive_existing,
        ),
    )

    def human() -> list[str]:
        return [
            f"{req.name} v{req.version} -> {_target(req)}: applied now by break-glass",
            *_request_view(req),
            f"next: reviewers run `mlflow-approvals approve {req.name} {req.version}`",
        ]

    settings.out(req.to_dict(), human)
    _finish(_exit_for(req))


@main.command()
@click.argument("model")
@click.argument("version", type=VERSION)
@_request_id
@_comment
@_pass
def approve(
    settings: Settings, model: str, version: str, request_id: str | None, comment: str | None
) -> None:
    """Sign off the request on MODEL VERSION at its open level.

    The sign-off that completes the last level applies the promotion. Approving a request that
    is approved but not applied (its apply failed) retries the apply. Approving again what you
    signed already records nothing and exits 0; refusals (separation of duties, no role at the
    open level) exit 6.
    """
    req, new = settings.run(
        lambda server: server.signed(model, version, "approve", comment, request_id),
        lambda client: client.sign_request(model, version, "approve", comment, request_id),
    )
    actor = settings.acting()
    mine = next((s for s in req.signoffs if s.actor == actor), None)
    notes = [] if new or not comment else [_unrecorded(comment)]
    for line in notes if settings.json else ():
        _echo(line, err=True)

    def human() -> list[str]:
        if not new:
            what = f": {mine.meaning} at {_ts(mine.time)}" if mine is not None else ""
            head = f"{actor or 'you'} had already signed request {req.id}{what}; nothing new "
            head += "was recorded"
        elif mine is not None:
            head = f"{actor} signed request {req.id}: {mine.meaning}"
        else:
            head = f"request {req.id}"
        if req.status.value == "applied":
            head += f"; applied: {req.name} v{req.version} -> {_target(req)}"
        return [head, *notes, *_request_view(req)]

    settings.out({**req.to_dict(), "already": None if new else "signed"}, human)


@main.command()
@click.argument("model")
@click.argument("version", type=VERSION)
@click.option("--comment", "-m", required=True, help="Why it is rejected (required).")
@_request_id
@_pass
def reject(
    settings: Settings, model: str, version: str, comment: str, request_id: str | None
) -> None:
    """Reject the request on MODEL VERSION: one rejection ends it. A reason is required."""
    req, new = settings.run(
        lambda server: server.signed(model, version, "reject", comment, request_id),
        lambda client: client.sign_request(model, version, "reject", comment, request_id),
    )
    rejection = next((s for s in req.signoffs if s.decision == "reject"), None)
    actor = rejection.actor if rejection is not None else settings.acting()
    head = f"{actor} rejected request {req.id}"
    if not new:
        head = f"{actor} had already rejected request {req.id}; nothing new was recorded"
    doc = {**req.to_dict(), "already": None if new else "signed"}
    settings.out(doc, lambda: [head, *_request_view(req)])


@main.command()
@click.argument("model")
@click.argument("version", type=VERSION)
@_request_id
@_comment
@_pass
def cancel(
    settings: Settings, model: str, version: str, request_id: str | None, comment: str | None
) -> None:
    """Withdraw the open request on MODEL VERSION (the requester, or an admin)."""
    req = settings.run(
        lambda server: server.cancel(model, version, comment, request_id),
        lambda client: client.cancel(model, version, comment=comment, request_id=request_id),
    )
    actor = req.cancelled.actor if req.cancelled is not None else settings.acting()
    settings.out(
        req.to_dict(), lambda: [f"{actor} cancelled request {req.id}", *_request_view(req)]
    )


_follow_stage = click.option(
    "--stage",
    metavar="STAGE",
    callback=_stage,
    help="The request for this stage; if none, whether the version holds it (applied at once).",
)
_follow_alias = click.option(
    "--alias",
    metavar="ALIAS",
    callback=_alias,
    help="The request for this alias; if none, whether the version holds it.",
)


@main.command()
@click.argument("model")
@click.argument("version", type=VERSION)
@_request_id
@_follow_stage
@_follow_alias
@_pass
def status(
    settings: Settings,
    model: str,
    version: str,
    request_id: str | None,
    stage: str | None,
    alias: str | None,
) -> None:
    """Show the request on MODEL VERSION level by level: who signed, what is missing.

    Without --request: the open request, else the one applied last, else the newest (with
    --stage or --alias: the request for that target). Exits 0 when applied (or the target is in
    effect), 3 when still pending (or approved but not applied), 4 when rejected, cancelled,
    expired, superseded or invalidated.
    """
    target = _follow_target(stage, alias)
    req = _follow(settings, model, version, request_id, target)
    if req is None:
        assert target is not None
        doc = {"name": model, "version": version, "in_effect": True, "request": None}
        settings.out(doc, lambda: [_held_line(model, version, target)])
        _finish(EXIT_OK)
    settings.out(req.to_dict(), lambda: _request_view(req))
    _finish(_exit_for(req))


def _follow_target(stage: str | None, alias: str | None) -> Target | None:
    """The target --stage or --alias names (at most one), or None."""
    from mlflow_approvals.lifecycle import Target

    if stage is not None and alias is not None:
        raise click.UsageError("give at most one of --stage STAGE or --alias ALIAS")
    if stage is not None:
        return Target("stage", stage, "set")
    return None if alias is None else Target("alias", alias, "set")


def _held_line(model: str, version: str, target: Target) -> str:
    return (
        f"{model} v{version} already has {target} and no request for it: it was applied at "
        "once (no rule gates it) or changed outside the approvals; nothing to wait for"
    )


def _follow(
    settings: Settings, model: str, version: str, request_id: str | None, target: Target | None
) -> ApprovalRequest | None:
    """The request `status` and `wait` follow: ``request_id``; else, for ``target``, its open
    request, else the one applied last, else the newest; else the version's obvious request.
    None when ``target`` has no request and the version holds it already."""
    from mlflow_approvals.lifecycle import obvious_request
    from mlflow_approvals.targets import is_in_effect, same_target

    if request_id is not None:
        return _get(settings, model, version, request_id)
    if target is None:
        try:
            return _get(settings, model, version, None)
        except Exception as exc:
            if not _is_error(exc, "RequestNotFound"):
                raise
            raise Failure(
                f"{model} v{version} has no approval request. If its target was applied at once "
                "(no rule gates it), pass --stage STAGE or --alias ALIAS to check that the "
                "version holds it; else file one with `mlflow-approvals request`",
                "RequestNotFound",
            ) from None
    found = settings.run(
        lambda server: server.list_requests(model, None),
        lambda client: client.list_requests(model, status=None),
    )
    mine = [r for r in found if r.version == version and same_target(r.record.target, target)]
    followed = obvious_request(mine)  # one target has at most one open request
    if followed is not None:
        return followed
    if is_in_effect(settings.client().get_model_version(model, version), target):
        return None
    raise Failure(
        f"{model} v{version} has no request for {target}, and does not hold it: file one with "
        f"`mlflow-approvals request {model} {version} --{target.kind} {target.value}`",
        "RequestNotFound",
    )


@main.command(name="list")
@click.option("--model", help="Only this registered model.")
@click.option(
    "--status",
    "status_",
    type=click.Choice(_STATUS_CHOICES),
    default="pending",
    show_default=True,
    help="Only requests with this status ('all' for every status).",
)
@_pass
def list_(settings: Settings, model: str | None, status_: str) -> None:
    """List requests across the registry (one server-side query)."""
    from mlflow_approvals.lifecycle import Status

    wanted = None if status_ == "all" else status_
    found = settings.run(
        lambda server: server.list_requests(model, None if wanted is None else Status(wanted)),
        lambda client: client.list_requests(name=model, status=wanted),
    )

    def human() -> list[str]:
        if not found:
            which = f"{wanted} requests" if wanted else "requests"
            return [f"no {which} of {model}" if model else f"no {which} in the registry"]
        rows = [["REQUEST", "MODEL", "VERSION", "TARGET", "STATUS", "NEEDS", "REQUESTER", "FILED"]]
        for r in found:
            needs = f"level {r.open_level}: {_needs(r)}" if r.missing else "-"
            rows.append(
                [
                    r.id,
                    r.name,
                    r.version,
                    f"{r.target_kind} {r.target}"
                    + (" (archive existing)" if r.archive_existing_versions else ""),
                    r.status.value,
                    needs,
                    r.requester,
                    _ts(r.created_at),
                ]
            )
        return _table(rows)

    settings.out({"count": len(found), "requests": [r.to_dict() for r in found]}, human)


def _get(settings: Settings, model: str, version: str, request_id: str | None) -> ApprovalRequest:
    """The request ``request_id`` on MODEL VERSION (without it: the open one, else the newest)."""
    return settings.run(
        lambda server: server.get(model, version, request_id),
        lambda client: client.get_request(model, version, request_id=request_id),
    )


def _progress_key(req: ApprovalRequest) -> tuple[Any, ...]:
    return (req.status, req.open_level, tuple(s.actor for s in req.signoffs), req.missing)


def _progress_line(req: ApprovalRequest) -> str:
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    signed = f"; signed by {_signers(req)}" if req.signoffs else ""
    if req.status.value == "pending":
        return (
            f"[{stamp}Z] {req.name} v{req.version} -> {_target(req)}: pending at level "
            f"{req.open_level} of {len(req.levels)}{signed}; needs {_needs(req)}"
        )
    return f"[{stamp}Z] {req.name} v{req.version} -> {_target(req)}: {_status_line(req)}"


@main.command()
@click.argument("model")
@click.argument("version", type=VERSION)
@_request_id
@_follow_stage
@_follow_alias
@click.option(
    "--timeout",
    default="2h",
    metavar="DURATION",
    show_default=True,
    envvar="MLFLOW_APPROVALS_WAIT_TIMEOUT",
    show_envvar=True,
    help="Give up after this long (30s, 15m, 2h, 7d) and exit 3.",
)
@click.option(
    "--interval",
    default="10s",
    metavar="DURATION",
    show_default=True,
    envvar="MLFLOW_APPROVALS_WAIT_INTERVAL",
    show_envvar=True,
    help="How often to look.",
)
@_pass
def wait(
    settings: Settings,
    model: str,
    version: str,
    request_id: str | None,
    stage: str | None,
    alias: str | None,
    timeout: str,
    interval: str,
) -> None:
    """Block until the request on MODEL VERSION is applied or ends (rejected, cancelled, ...).

    Without --request: the open request, else the one applied last, else the newest; with
    --stage or --alias, the request for that target, and when it has none but the version holds
    it (applied at once: no rule gates it), there is nothing to wait for. Prints a progress line
    whenever something changes (which level is open, who signed, what is missing). Exits 0 when
    applied or in effect, 4 when it ended otherwise, 3 on timeout.
    """
    limit = _parse_duration(timeout, "--timeout").total_seconds()
    every = _parse_duration(interval, "--interval").total_seconds()
    started = time.monotonic()
    target = _follow_target(stage, alias)
    found = _follow(settings, model, version, request_id, target)
    if found is None:
        assert target is not None
        doc = {"outcome": "in effect", "waited_seconds": 0.0, "request": None}
        settings.out(doc, lambda: [_held_line(model, version, target)])
        _finish(EXIT_OK)
    req = found
    request_id = req.id  # follow this request, even if another one is filed meanwhile
    seen: tuple[Any, ...] | None = None
    outcome = "timeout"
    while True:
        key = _progress_key(req)
        if key != seen:
            settings.note(_progress_line(req))
            seen = key
        if req.status.value == "applied" or req.status.value in _ENDED:
            outcome = req.status.value
            break
        left = limit - (time.monotonic() - started)
        if left <= 0:
            break
        time.sleep(min(every, left))
        req = _get(settings, model, version, request_id)
    waited = round(time.monotonic() - started, 1)

    def human() -> list[str]:
        if outcome == "timeout":
            return [
                f"still {req.status.value} after {timeout}: needs {_needs(req) or 'the apply'}; "
                f"run `mlflow-approvals wait {model} {version} --request {req.id}` again later"
            ]
        return _request_view(req)

    settings.out({"outcome": outcome, "waited_seconds": waited, "request": req.to_dict()}, human)
    if outcome == "applied":
        _finish(EXIT_OK)
    _finish(EXIT_PENDING if outcome == "timeout" else EXIT_ENDED)


# ------------------------------------------------------------------------- audit ---------
@main.group()
def audit() -> None:
    """Verify, export, reconcile and seal the tamper-evident audit trail."""


@audit.command(name="verify")
@click.argument("model")
@click.argument("version", type=VERSION, required=False)
@_pass
def audit_verify(settings: Settings, model: str, version: str | None) -> None:
    """Check every audit event of MODEL (or one VERSION); exit 1 if any event is INVALID.

    One line per event (valid or INVALID, with the reason), then a summary line.
    """
    report = settings.client().verify_audit(model, version)
    # str(report)'s lines, one list item each: splitting the text would let a newline in an
    # event's type or path start a line of its own
    settings.out(report.to_dict(), lambda: [*report.lines, report.summary, *report.notes])
    if not report.ok:
        _echo(f"error: the audit trail of {model} does not verify: {report.summary}", err=True)
        _finish(EXIT_ERROR)


@audit.command(name="export")
@click.argument("model")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "cloudevents"]),
    default="jsonl",
    show_default=True,
    help="jsonl: one flat record per line; cloudevents: the events as stored, one per line.",
)
@_pass
def audit_export(settings: Settings, model: str, out: str, fmt: str) -> None:
    """Write the whole audit trail of MODEL to a file, oldest event first."""
    try:
        count = settings.client().export_audit(model, out, format=fmt)
    except OSError as exc:
        raise Failure(f"could not write {out}: {exc.strerror or exc}", "OSError") from None
    settings.out(
        {"name": model, "path": out, "format": fmt, "events": count},
        lambda: [f"wrote {count} audit events of {model} to {out} ({fmt})"],
    )


@audit.command(name="reconcile")
@click.argument("model")
@_pass
def audit_reconcile(settings: Settings, model: str) -> None:
    """Report stage and alias changes of MODEL that did not go through the gate; exit 1 if any.

    Each change found is recorded in the audit trail, so the next run does not report it again.
    """
    report = settings.client().reconcile(model)
    settings.out(report.to_dict(), lambda: [*report.lines, report.summary])  # as in verify
    if not report.ok:
        _finish(EXIT_ERROR)


@audit.command(name="seal")
@click.argument("model")
@click.option(
    "--min-events",
    type=click.IntRange(1, 999_999_999),
    default=1,
    show_default=True,
    help="Seal only when at least this many events are loose (not yet in a segment).",
)
@_pass
def audit_seal(settings: Settings, model: str, min_events: int) -> None:
    """Copy MODEL's loose audit events into anchored segments (nothing is deleted).

    Reading the log through a tracking server then downloads a segment instead of one file per
    event. Sealing again seals only events written since; against an approvals server it runs
    on the server.
    """
    report = settings.client().seal_audit(model, min_events)
    settings.out(report.to_dict(), lambda: [*report.lines, report.summary])


# ------------------------------------------------------------------------- sagemaker -----
@main.group()
def sagemaker() -> None:
    """Link model versions to SageMaker model packages (docs/sagemaker.md)."""


@sagemaker.command(name="link")
@click.argument("model")
@click.argument("version")
@click.argument("arn")
@_pass
def sagemaker_link(settings: Settings, model: str, version: str, arn: str) -> None:
    """Link MODEL VERSION to the SageMaker model package ARN (which must exist).

    Sets the tag sagemaker.model_package_arn. A rule with `sagemaker:` then drives the
    package's approval status; a request records the link when it is filed.
    """
    status = settings.client().link_model_package(model, version, arn)
    settings.out(
        {"name": model, "version": version, "model_package_arn": arn, "status": status},
        lambda: [f"linked {model} v{version} to {arn} ({status})"],
    )


# ------------------------------------------------------------------------- policy --------
@main.group()
def policy() -> None:
    """Check a policy file and ask what it requires (no registry, no MLflow import)."""


@policy.command(name="validate")
@click.argument("file", type=click.Path(dir_okay=False))
@_pass
def policy_validate(settings: Settings, file: str) -> None:
    """Check the policy FILE: exit 0 if valid, 1 with every problem listed if not."""
    from mlflow_approvals.policy import PolicyInvalid, describe_rule, parse_policy

    try:
        pol = parse_policy(file)
    except PolicyInvalid as exc:
        if settings.json:
            _echo_json({"path": file, "valid": False, "error": str(exc)})
        for line in _error_lines(str(exc), multiline=True):  # every problem, one per line
            _echo(line, err=True)
        _finish(EXIT_ERROR)
    doc = {
        "path": file,
        "valid": True,
        "policy_hash": pol.content_hash,
        "default": pol.default,
        "roles": {role: list(members) for role, members in pol.roles.items()},
        "admins": list(pol.admins),
        "rules": [
            {
                "name": rule.name,
                "levels": [
                    [{"role": r.role, "count": r.count} for r in lvl] for lvl in rule.levels
                ],
            }
            for rule in pol.rules
        ],
    }

    def human() -> list[str]:
        n_rules = len(pol.rules)
        lines = [
            f"{file}: valid ({len(pol.roles)} roles, {n_rules} rule{'s' * (n_rules != 1)}, "
            f"default {pol.default})"
        ]
        for rule in pol.rules:
            lines.append(f"  rule {rule.name}")
            lines += [f"    {text}" for text in describe_rule(rule)]
        return lines

    settings.out(doc, human)


@policy.command(name="explain")
@click.argument("model")
@click.option("--stage", help="The stage to ask about.")
@click.option("--alias", help="The alias to ask about.")
@_pass
def policy_explain(settings: Settings, model: str, stage: str | None, alias: str | None) -> None:
    """Say which rule gates MODEL's move to a stage or alias, and who must sign, in order.

    Reads the policy of --policy / MLFLOW_APPROVALS_POLICY.
    """
    from mlflow_approvals.policy import canonical_stage, describe_rule, format_duration

    if (stage is None) == (alias is None):
        raise click.UsageError("give exactly one of --stage STAGE or --alias ALIAS")
    if settings.policy is None:
        raise Failure(
            "no policy to explain: pass --policy FILE or set MLFLOW_APPROVALS_POLICY", "NoPolicy"
        )
    pol = _load_policy(settings.policy)
    if stage is not None:
        try:
            kind, value = "stage", canonical_stage(stage)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--stage") from None
    else:
        assert alias is not None
        kind, value = "alias", alias
    gate = pol.gate(model, "stage" if kind == "stage" else "alias", value)
    rule = gate.rule
    what = f"{model} -> {kind} {value}"
    doc: dict[str, Any] = {
        "model": model,
        "target": {"kind": kind, "value": value},
        "policy": settings.policy,
        "policy_hash": pol.content_hash,
        "rule": None if rule is None else rule.name,
        "outcome": "sign-off" if rule is not None else ("deny" if gate.denied else "allow"),
        "levels": [],
        "expires_after": None,
        "separation_of_duties": None,
    }
    if rule is None:
        verdict = (
            "refused (the policy's default is deny): add a rule for it"
            if gate.denied
            else "applied at once (the policy's default is allow)"
        )
        settings.out(doc, lambda: [f"{what}: no rule matches; {verdict}"])
        return
    doc["levels"] = [
        [
            {"role": r.role, "count": r.count, "members": list(pol.roles.get(r.role, ()))}
            for r in lvl
        ]
        for lvl in rule.levels
    ]
    doc["expires_after"] = (
        None if rule.expires_after is None else format_duration(rule.expires_after)
    )
    doc["separation_of_duties"] = rule.separation_of_duties

    def human() -> list[str]:
        lines = [f"{what}: rule '{rule.name}' applies; sign-off needed, level by level:"]
        lines += [f"  {text}" for text in describe_rule(rule)]
        roles = sorted({r.role for lvl in rule.levels for r in lvl})
        lines.append("who holds the roles:")
        lines += [f"  {role}: {', '.join(pol.roles.get(role, ())) or 'nobody'}" for role in roles]
        if rule.expires_after is not None:
            lines.append(f"a request expires after {format_duration(rule.expires_after)}")
        if rule.separation_of_duties:
            lines.append("the requester cannot sign their own request (separation of duties)")
        return lines

    settings.out(doc, human)


# ------------------------------------------------------------------------- demo ----------
@main.group()
def notify() -> None:
    """The policy's notifications (webhooks, Slack)."""


@notify.command(name="test")
@click.option("--subscription", metavar="NAME", help="Only this subscription (default: all).")
@_pass
def notify_test(settings: Settings, subscription: str | None) -> None:
    """Send a test notification to the policy's subscriptions and print each outcome.

    Reads the policy of --policy / MLFLOW_APPROVALS_POLICY, and the signing secrets from the
    environment variables it names. Exits 0 when every delivery succeeded, 1 otherwise.
    """
    from datetime import datetime, timezone

    from mlflow_approvals.notify import Notice, Notifier

    if settings.policy is None:
        raise Failure("no policy: pass --policy FILE or set MLFLOW_APPROVALS_POLICY", "NoPolicy")
    pol = _load_policy(settings.policy)
    subs = [s for s in pol.notifications if subscription in (None, s.name)]
    if not subs:
        names = ", ".join(s.name for s in pol.notifications) or "none"
        raise Failure(
            f"no subscription {'named ' + repr(subscription) if subscription else ''} in the "
            f"policy (its notifications: {names}): add one under `notifications:`",
            "NoSubscription",
        )
    failures: list[str] = []
    notifier = Notifier(subs, lambda sub, notice, error: failures.append(f"{sub.name}: {error}"))
    from mlflow_approvals.identity import resolve_actor

    actor = resolve_actor(settings.actor)
    notice = Notice(
        type="notification.test",
        name="(test)",
        version=None,
        actor=actor,
        display_name=None,
        time=datetime.now(timezone.utc),
        comment="a test notification from mlflow-approvals",
    )
    outcomes = [notifier.send(sub, notice) for sub in subs]
    doc = {"outcomes": [o.__dict__ for o in outcomes]}

    def human() -> list[str]:
        return [
            f"{o.subscription}: "
            + (f"delivered (HTTP {o.status})" if o.delivered else f"FAILED: {o.error}")
            + f"  delivery {o.delivery_id}"
            for o in outcomes
        ]

    settings.out(doc, human)
    _finish(EXIT_OK if all(o.delivered for o in outcomes) else EXIT_ERROR)


@main.command()
@click.pass_context
@_global
def demo(ctx: click.Context) -> None:
    """Tell the story `make demo` runs, on a temporary sqlite registry.

    Only an explicit --tracking-uri moves it elsewhere (MLFLOW_TRACKING_URI is ignored here,
    so the demo never writes to a registry by accident).
    """
    from mlflow_approvals.demo import run_demo

    settings = ctx.find_object(Settings) or Settings()
    uri = settings.tracking_uri if settings.uri_given else None

    def tell(text: str) -> None:  # the demo's own text: its newlines are line breaks
        for line in text.split("\n"):
            _echo(line, err=settings.json)

    code = run_demo(tell, uri)
    if settings.json:
        _echo_json({"ok": code == 0, "exit_code": code})
    _finish(code)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="mlflow-approvals")
