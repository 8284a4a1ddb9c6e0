"""The reserved tag prefix, and the encoding of request facts to and from model-version tags.

Each fact is written once, under a key only its writer uses (see docs/architecture.md):

    mlflow_approvals.r.<rid>                  the request
    mlflow_approvals.r.<rid>.s.<actor-key>    one person's sign-off
    mlflow_approvals.r.<rid>.cancel           the cancellation
    mlflow_approvals.r.<rid>.applied          the application
    mlflow_approvals.r.<rid>.expired          the expiry, recorded by whoever noticed it
    mlflow_approvals.r.<rid>.breakglass       the emergency application (break-glass)
    mlflow_approvals.r.<rid>.superseded       the target moved before the request was applied
    mlflow_approvals.r.<rid>.invalidated      the model's files changed after the approvals
    mlflow_approvals.index                    "pending" | "idle": the searchable index
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from mlflow_approvals.lifecycle import (
    ApprovalRequest,
    Ending,
    RequestRecord,
    Requirement,
    SignOff,
    Target,
    derive,
)

_log = logging.getLogger(__name__)
_reported: set[tuple[str, str, str, str]] = set()

PREFIX = "mlflow_approvals."
INDEX_KEY = PREFIX + "index"
INDEX_PENDING = "pending"
INDEX_IDLE = "idle"
_REQ = PREFIX + "r."

MAX_COMMENT_CHARS = 5000
MODEL_PACKAGE_ARN = re.compile(
    r"^arn:aws[a-z-]*:sagemaker:(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}):(?P<account>[0-9]{12})"
    r":model-package/(?P<name>[A-Za-z0-9](?:-*[A-Za-z0-9]){0,62}(?:/[0-9]{1,10})?)$"
)
"""A SageMaker model package's ARN (``.../model-package/<group>/<version>``), and nothing else."""
MAX_VALUE_CHARS = 100_000  # MLflow's limit for model-version tag values
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
_FACT = re.compile(
    r"^mlflow_approvals\.r\.([0-9a-f]{12})(?:\.(s)\.(.+)|\.(cancel|applied|expired|breakglass|superseded|invalidated))?$"
)


def is_reserved(key: str) -> bool:
    """True for keys under the reserved prefix, which only mlflow-approvals writes."""
    return key.startswith(PREFIX)


def actor_key(actor: str) -> str:
    """A tag-key-safe key part for an actor name: readable, and distinct for distinct names.

    The readable part replaces what MLflow does not allow in a key, so ``a.b@x`` and ``a_b@x``
    read alike; 128 bits of SHA-256 of the exact name keep them apart, even for names chosen
    to collide (the 32 bits written at first could be matched in seconds).
    """
    return f"{_KEY_UNSAFE.sub('_', actor)[:60]}-{hashlib.sha256(actor.encode()).hexdigest()[:32]}"


def _is_actor_key(part: str, actor: str) -> bool:
    """True when ``part`` is ``actor``'s key part, as written now or by earlier releases."""
    if part == actor_key(actor):
        return True
    digest = hashlib.sha256(actor.encode()).hexdigest()[:8]  # the earlier, 32-bit form
    return part == f"{_KEY_UNSAFE.sub('_', actor)[:60]}-{digest}"


def request_key(rid: str) -> str:
    return f"{_REQ}{rid}"


def signoff_key(rid: str, actor: str) -> str:
    return f"{_REQ}{rid}.s.{actor_key(actor)}"


def cancel_key(rid: str) -> str:
    return f"{_REQ}{rid}.cancel"


def applied_key(rid: str) -> str:
    return f"{_REQ}{rid}.applied"


def expired_key(rid: str) -> str:
    return f"{_REQ}{rid}.expired"


def breakglass_key(rid: str) -> str:
    return f"{_REQ}{rid}.breakglass"


def superseded_key(rid: str) -> str:
    return f"{_REQ}{rid}.superseded"


def invalidated_key(rid: str) -> str:
    return f"{_REQ}{rid}.invalidated"


def encode_time(t: datetime | None) -> str | None:
    """A time as the facts and events write it (ISO 8601, ``Z``)."""
    return None if t is None else _ts(t)


def _ts(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _parse_ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


class MalformedFact(ValueError):
    """A value under the reserved prefix that is not a fact as mlflow-approvals writes it."""


class _Fields:
    """Typed reads of one decoded fact: each wrong type is a MalformedFact naming the field."""

    def __init__(self, value: str, what: str) -> None:
        try:
            data = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise MalformedFact(f"{what} is not JSON ({exc.__class__.__name__})") from None
        if not isinstance(data, dict):
            kind = {list: "an array", str: "a string", type(None): "null"}.get(
                type(data), "a number"
            )
            raise MalformedFact(f"{what} is {kind}, not a JSON object")
        self.data: dict[str, Any] = data
        self.what = what

    def _bad(self, key: str, wanted: str) -> MalformedFact:
        got = self.data.get(key)
        return MalformedFact(f"{self.what}: field {key!r} should be {wanted}, not {got!r:.60}")

    def text(self, key: str) -> str:
        got = self.data.get(key)
        if not isinstance(got, str) or not got:
            raise self._bad(key, "a non-empty string")
        return got

    def opt_text(self, key: str) -> str | None:
        got = self.data.get(key)
        if got is not None and not isinstance(got, str):
            raise self._bad(key, "a string or null")
        return got

    def time(self, key: str) -> datetime:
        got = self.data.get(key)
        try:
            t = _parse_ts(got) if isinstance(got, str) else None
        except ValueError:
            t = None
        if t is None or t.tzinfo is None or t.utcoffset() is None:
            raise self._bad(key, "an ISO 8601 time with its UTC offset")
        return t

    def opt_time(self, key: str) -> datetime | None:
        return None if self.data.get(key) is None else self.time(key)

    def flag(self, key: str) -> bool:
        got = self.data.get(key, False)
        if not isinstance(got, bool):
            raise self._bad(key, "true or false")
        return got

    def opt_int(self, key: str) -> int | None:
        got = self.data.get(key)
        if got is not None and (isinstance(got, bool) or not isinstance(got, int)):
            raise self._bad(key, "an integer or null")
        return got

    def choice(self, key: str, *choices: str) -> str:
        got = self.data.get(key)
        if got not in choices:
            raise self._bad(key, " or ".join(repr(c) for c in choices))
        return str(got)


def _dump(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    if len(text) > MAX_VALUE_CHARS:  # pragma: no cover - comments are capped well below this
        raise ValueError(f"fact of {len(text)} characters exceeds MLflow's tag limit")
    return text


def encode_request(r: RequestRecord) -> str:
    data: dict[str, Any] = {
        "id": r.id,
        "name": r.name,
        "version": r.version,
        "target": {
            "kind": r.target.kind,
            "value": r.target.value,
            "action": r.target.action,
            "archive_existing_versions": r.target.archive_existing_versions,
        },
        "requester": r.requester,
        "created_at": _ts(r.created_at),
        "comment": r.comment,
        "rule": r.rule,
        "levels": [[[q.role, q.count] for q in lvl] for lvl in r.levels],
        "separation_of_duties": r.separation_of_duties,
        "expires_at": None if r.expires_at is None else _ts(r.expires_at),
        "policy_hash": r.policy_hash,
        "event": r.event,
        "requester_name": r.requester_name,
        "audit_run": r.audit_run,
    }
    if r.holders is not None:
        data["holders"] = list(r.holders)
    if r.checks:
        data["checks"] = [c.to_dict() for c in r.checks]
    if r.digest is not None:
        data["digest"] = r.digest
    if r.changes is not None:
        data["changes"] = dict(r.changes)
    if r.sagemaker_arn is not None:
        data["sagemaker_arn"] = r.sagemaker_arn
    if r.break_glass:
        data["break_glass"] = True
        data["review_by"] = None if r.review_by is None else _ts(r.review_by)
    return _dump(data)


def _levels(f: _Fields) -> tuple[tuple[Requirement, ...], ...]:
    raw = f.data.get("levels")
    wanted = "a list of levels, each a list of [role, count] pairs"
    if not isinstance(raw, list) or not raw:
        raise f._bad("levels", wanted)
    levels = []
    for level in raw:
        if not isinstance(level, list) or not level:
            raise f._bad("levels", wanted)
        reqs = []
        for pair in level:
            ok = isinstance(pair, list) and len(pair) == 2
            role, n = (pair[0], pair[1]) if ok else (None, None)
            if not (isinstance(role, str) and role and type(n) is int and n >= 1):
                raise f._bad("levels", wanted)
            reqs.append(Requirement(role, n))
        levels.append(tuple(reqs))
    return tuple(levels)


def _holders(f: _Fields) -> tuple[str, ...] | None:
    raw = f.data.get("holders")
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(v, str) and v.isdigit() for v in raw):
        raise f._bad("holders", "a list of version numbers")
    return tuple(raw)


def _checks(f: _Fields) -> tuple[Any, ...]:
    raw = f.data.get("checks")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise f._bad("checks", "a list of check results")
    from mlflow_approvals.checks import CheckResult

    try:
        return tuple(CheckResult.from_dict(item) for item in raw)
    except ValueError as exc:
        raise MalformedFact(f"{f.what}: field 'checks': {exc}") from None


def _changes(f: _Fields) -> dict[str, Any] | None:
    raw = f.data.get("changes")
    if raw is None:
        return None
    from mlflow_approvals.changes import check_diff

    try:
        return check_diff(raw)
    except ValueError as exc:
        raise MalformedFact(f"{f.what}: field 'changes': {exc}") from None


def _package_arn(f: _Fields) -> str | None:
    raw = f.opt_text("sagemaker_arn")
    if raw is not None and not MODEL_PACKAGE_ARN.fullmatch(raw):
        raise f._bad("sagemaker_arn", "a SageMaker model package ARN")
    return raw


def decode_request(name: str, version: str, value: str) -> RequestRecord:
    f = _Fields(value, "request fact")
    if f.data.get("name") != name or str(f.data.get("version")) != version:
        # copied here by copy_model_version: a request belongs to the version it was filed on
        raise MalformedFact("request fact filed on another model version")
    t = f.data.get("target")
    if not isinstance(t, dict):
        raise f._bad("target", "an object")
    tf = _Fields(json.dumps(t), "request fact's target")
    kind = tf.choice("kind", "stage", "alias")
    action = tf.choice("action", "set", "delete")
    if kind == "stage" and action != "set":
        raise tf._bad("action", "'set' for a stage")
    return RequestRecord(
        id=f.text("id"),
        name=name,
        version=version,
        target=Target(
            kind,  # type: ignore[arg-type]
            tf.text("value"),
            action,  # type: ignore[arg-type]
            tf.flag("archive_existing_versions"),
        ),
        requester=f.text("requester"),
        created_at=f.time("created_at"),
        comment=f.opt_text("comment"),
        rule=f.text("rule"),
        levels=_levels(f),
        separation_of_duties=f.flag("separation_of_duties"),
        expires_at=f.opt_time("expires_at"),
        policy_hash=f.text("policy_hash"),
        event=f.opt_text("event"),
        requester_name=f.opt_text("requester_name"),
        audit_run=f.opt_text("audit_run"),
        break_glass=f.flag("break_glass"),
        review_by=f.opt_time("review_by"),
        holders=_holders(f),
        checks=_checks(f),
        digest=f.opt_text("digest"),
        changes=_changes(f),
        sagemaker_arn=_package_arn(f),
    )


def encode_signoff(s: SignOff) -> str:
    return _dump(
        {
            "actor": s.actor,
            "display_name": s.display_name,
            "decision": s.decision,
            "role": s.role,
            "level": s.level,
            "comment": s.comment,
            "time": _ts(s.time),
            "event": s.event,
            **({"digest": s.digest} if s.digest is not None else {}),
        }
    )


def decode_signoff(value: str) -> SignOff:
    f = _Fields(value, "sign-off fact")
    decision = f.choice("decision", "approve", "reject")
    level = f.opt_int("level")
    if decision == "approve" and (level is None or level < 1):
        raise f._bad("level", "the level (1 or more) an approval counts toward")
    return SignOff(
        actor=f.text("actor"),
        decision=decision,  # type: ignore[arg-type]
        role=f.opt_text("role"),
        level=level,
        comment=f.opt_text("comment"),
        time=f.time("time"),
        display_name=f.opt_text("display_name"),
        event=f.opt_text("event"),
        digest=f.opt_text("digest"),
    )


def encode_ending(e: Ending) -> str:
    return _dump(
        {
            "actor": e.actor,
            "display_name": e.display_name,
            "time": _ts(e.time),
            "comment": e.comment,
            "event": e.event,
        }
    )


def decode_ending(value: str) -> Ending:
    f = _Fields(value, "fact")
    return Ending(
        f.text("actor"),
        f.time("time"),
        f.opt_text("comment"),
        f.opt_text("event"),
        f.opt_text("display_name"),
    )


class VersionFacts:
    """Every request fact found in one model version's tags, grouped by request id."""

    def __init__(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        self.name = name
        self.version = version
        self.requests: dict[str, RequestRecord] = {}
        self.signoffs: dict[str, list[SignOff]] = {}
        self.cancelled: dict[str, Ending] = {}
        self.applied: dict[str, Ending] = {}
        self.expired: dict[str, Ending] = {}
        self.emergency: dict[str, Ending] = {}
        self.superseded: dict[str, Ending] = {}
        self.invalidated: dict[str, Ending] = {}
        self.malformed: dict[str, str] = {}
        """Reserved keys whose value is not a fact as written by mlflow-approvals: key -> why."""
        self.index = tags.get(INDEX_KEY)
        if self.index not in (None, INDEX_PENDING, INDEX_IDLE):
            self.malformed[INDEX_KEY] = (
                f"index should be 'pending' or 'idle', not {self.index!r:.60}"
            )
        endings = {
            "cancel": self.cancelled,
            "applied": self.applied,
            "expired": self.expired,
            "breakglass": self.emergency,
            "superseded": self.superseded,
            "invalidated": self.invalidated,
        }
        for key, value in tags.items():
            if not is_reserved(key) or key == INDEX_KEY:
                continue
            m = _FACT.match(key)
            if not m:
                self.malformed[key] = "not a key mlflow-approvals writes"
                continue
            rid = m.group(1)
            try:
                if not isinstance(value, str):
                    raise MalformedFact(f"value is a {type(value).__name__}, not text")
                if m.group(2):
                    signoff = decode_signoff(value)
                    if not _is_actor_key(m.group(3), signoff.actor):
                        raise MalformedFact("sign-off filed under another person's key")
                    self.signoffs.setdefault(rid, []).append(signoff)
                elif m.group(4):
                    endings[m.group(4)][rid] = decode_ending(value)
                else:
                    record = decode_request(name, version, value)
                    if record.id != rid:
                        raise MalformedFact("request fact filed under another request's key")
                    self.requests[rid] = record
            except Exception as exc:  # reading is total: any value, any type, never a crash
                why = str(exc) if isinstance(exc, MalformedFact) else f"{type(exc).__name__}"
                self.malformed[key] = why
        for key, why in self.malformed.items():
            mark = (name, version, key, why)
            if mark not in _reported:  # once per process: readers go on without it
                _reported.add(mark)
                _log.warning(
                    "ignoring tag %r on %s v%s: %s. Only mlflow-approvals writes under %r; "
                    "`mlflow-approvals audit reconcile` lists such tags",
                    key,
                    name,
                    version,
                    why,
                    PREFIX,
                )

    def request(self, rid: str, now: datetime) -> ApprovalRequest:
        """The request ``rid`` with its status derived from the facts and ``now``."""
        return derive(
            self.requests[rid],
            tuple(self.signoffs.get(rid, ())),
            now,
            cancelled=self.cancelled.get(rid),
            applied=self.applied.get(rid),
            expired=self.expired.get(rid),
            emergency=self.emergency.get(rid) if self.requests[rid].break_glass else None,
            superseded=self.superseded.get(rid),
            invalidated=self.invalidated.get(rid),
        )

    def all_requests(self, now: datetime) -> list[ApprovalRequest]:
        """Every request on this version, oldest first."""
        found = [self.request(rid, now) for rid in self.requests]
        return sorted(found, key=lambda r: (r.created_at, r.id))

    def written(self) -> Iterator[tuple[str, str | None]]:
        """(tag key, event hash or None) of every decoded fact of a request filed on this very
        version: facts copied from another version (``copy_model_version``) are not its own."""
        for rid, record in self.requests.items():
            yield request_key(rid), record.event
            for s in self.signoffs.get(rid, ()):
                yield signoff_key(rid, s.actor), s.event
            for key, ending in (
                (cancel_key(rid), self.cancelled.get(rid)),
                (applied_key(rid), self.applied.get(rid)),
                (expired_key(rid), self.expired.get(rid)),
                (breakglass_key(rid), self.emergency.get(rid)),
                (superseded_key(rid), self.superseded.get(rid)),
                (invalidated_key(rid), self.invalidated.get(rid)),
            ):
                if ending is not None:
                    yield key, ending.event

    def anchored(self) -> Iterator[tuple[str, str]]:
        """(tag key, event hash) of every fact of this version's own requests that names its
        audit event: the anchors of the log."""
        return ((key, h) for key, h in self.written() if h)

    def event_hashes(self) -> list[str]:
        """The audit event hashes anchored in this version's facts (the heads a writer saw)."""
        return sorted({h for _, h in self.anchored()})


def check_comment(comment: str | None) -> str | None:
    """Normalise a comment; refuse one longer than MAX_COMMENT_CHARS."""
    if comment is None:
        return None
    if len(comment) > MAX_COMMENT_CHARS:
        from mlflow_approvals.errors import InvalidRequest

        raise InvalidRequest(
            f"comment is {len(comment)} characters; the limit is {MAX_COMMENT_CHARS}: "
            "shorten it, or link to a longer document"
        )
    return comment


def request_facts(request: ApprovalRequest) -> dict[str, str]:
    """The fact tags of one request, as written: the wire form of a request (the server's
    approval endpoints send it, and the client rebuilds the request with :class:`VersionFacts`).
    """
    rid = request.id
    facts = {request_key(rid): encode_request(request.record)}
    for s in request.signoffs:
        facts[signoff_key(rid, s.actor)] = encode_signoff(s)
    for key, ending in (
        (cancel_key(rid), request.cancelled),
        (applied_key(rid), request.applied),
        (expired_key(rid), request.expired),
        (breakglass_key(rid), request.emergency),
        (superseded_key(rid), request.superseded),
        (invalidated_key(rid), request.invalidated),
    ):
        if ending is not None:
            facts[key] = encode_ending(ending)
    return facts
