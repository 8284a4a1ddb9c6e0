"""The reserved tag prefix, and the encoding of request facts to and from model-version tags.

Each fact is written once, under a key only its writer uses (see docs/architecture.md):

    mlflow_approvals.r.<rid>                  the request
    mlflow_approvals.r.<rid>.s.<actor-key>    one person's sign-off
    mlflow_approvals.r.<rid>.cancel           the cancellation
    mlflow_approvals.r.<rid>.applied          the application
    mlflow_approvals.r.<rid>.expired          the expiry, recorded by whoever noticed it
    mlflow_approvals.r.<rid>.breakglass       the emergency application (break-glass)
    mlflow_approvals.index                    "pending" | "idle": the searchable index
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
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

PREFIX = "mlflow_approvals."
INDEX_KEY = PREFIX + "index"
INDEX_PENDING = "pending"
INDEX_IDLE = "idle"
_REQ = PREFIX + "r."

MAX_COMMENT_CHARS = 5000
MAX_VALUE_CHARS = 100_000  # MLflow's limit for model-version tag values
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
_FACT = re.compile(
    r"^mlflow_approvals\.r\.([0-9a-f]{12})(?:\.(s)\.(.+)|\.(cancel|applied|expired|breakglass))?$"
)


def is_reserved(key: str) -> bool:
    """True for keys under the reserved prefix, which only mlflow-approvals writes."""
    return key.startswith(PREFIX)


def actor_key(actor: str) -> str:
    """A tag-key-safe, collision-free key part for an actor name."""
    readable = _KEY_UNSAFE.sub("_", actor)[:60]
    return f"{readable}-{hashlib.sha256(actor.encode()).hexdigest()[:8]}"


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


def encode_time(t: datetime | None) -> str | None:
    """A time as the facts and events write it (ISO 8601, ``Z``)."""
    return None if t is None else _ts(t)


def _ts(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _parse_ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


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
    if r.break_glass:
        data["break_glass"] = True
        data["review_by"] = None if r.review_by is None else _ts(r.review_by)
    return _dump(data)


def decode_request(name: str, version: str, value: str) -> RequestRecord:
    d = json.loads(value)
    if d.get("name") != name or str(d.get("version")) != version:
        # copied here by copy_model_version: a request belongs to the version it was filed on
        raise ValueError("request fact filed on another model version")
    t = d["target"]
    return RequestRecord(
        id=d["id"],
        name=name,
        version=version,
        target=Target(t["kind"], t["value"], t["action"], bool(t["archive_existing_versions"])),
        requester=d["requester"],
        created_at=_parse_ts(d["created_at"]),
        comment=d.get("comment"),
        rule=d["rule"],
        levels=tuple(tuple(Requirement(role, int(n)) for role, n in lvl) for lvl in d["levels"]),
        separation_of_duties=bool(d["separation_of_duties"]),
        expires_at=None if d.get("expires_at") is None else _parse_ts(d["expires_at"]),
        policy_hash=d["policy_hash"],
        event=d.get("event"),
        requester_name=d.get("requester_name"),
        audit_run=d.get("audit_run"),
        break_glass=d.get("break_glass") is True,
        review_by=None if d.get("review_by") is None else _parse_ts(d["review_by"]),
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
        }
    )


def decode_signoff(value: str) -> SignOff:
    d = json.loads(value)
    return SignOff(
        actor=d["actor"],
        decision=d["decision"],
        role=d.get("role"),
        level=d.get("level"),
        comment=d.get("comment"),
        time=_parse_ts(d["time"]),
        display_name=d.get("display_name"),
        event=d.get("event"),
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
    d = json.loads(value)
    return Ending(
        d["actor"], _parse_ts(d["time"]), d.get("comment"), d.get("event"), d.get("display_name")
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
        self.index = tags.get(INDEX_KEY)
        for key, value in tags.items():
            m = _FACT.match(key)
            if not m:
                continue
            rid = m.group(1)
            try:
                if m.group(2):
                    self.signoffs.setdefault(rid, []).append(decode_signoff(value))
                elif m.group(4) == "cancel":
                    self.cancelled[rid] = decode_ending(value)
                elif m.group(4) == "applied":
                    self.applied[rid] = decode_ending(value)
                elif m.group(4) == "expired":
                    self.expired[rid] = decode_ending(value)
                elif m.group(4) == "breakglass":
                    self.emergency[rid] = decode_ending(value)
                else:
                    record = decode_request(name, version, value)
                    if record.id == rid:
                        self.requests[rid] = record
            except (ValueError, KeyError, TypeError):
                # A fact that does not decode was not written by us; it is ignored here and
                # reported by `audit reconcile`.
                continue

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
        )

    def all_requests(self, now: datetime) -> list[ApprovalRequest]:
        """Every request on this version, oldest first."""
        found = [self.request(rid, now) for rid in self.requests]
        return sorted(found, key=lambda r: (r.created_at, r.id))

    def event_hashes(self) -> list[str]:
        """The audit event hashes anchored in this version's facts (the heads a writer saw)."""
        own = self.requests  # facts copied from another version (copy_model_version) don't count
        hashes = [r.event for r in own.values()]
        hashes += [s.event for rid, sl in self.signoffs.items() if rid in own for s in sl]
        for endings in (self.cancelled, self.applied, self.expired, self.emergency):
            hashes += [e.event for rid, e in endings.items() if rid in own]
        return sorted({h for h in hashes if h})


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
    ):
        if ending is not None:
            facts[key] = encode_ending(ending)
    return facts
