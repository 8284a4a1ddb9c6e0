"""Intents whose effect never happened: recognising them, and recording them as abandoned.

Every step writes its audit event before its effect (a fact tag, a registry change). A process
that dies in between leaves an event that nothing anchors. That is a normal outcome of a crash,
not tampering: :func:`settle_intents` (run by ``reconcile``) checks the registry for the
event's effect and, when it is absent and the event is old enough that no step can still be
writing it, records an ``intent.abandoned`` event that names the orphan as its parent and says
it was not applied. That event is anchored by a tag of the audit run
(:meth:`AuditStore.anchor_abandonment`), so the orphan is anchored through it and the log
verifies again; verify notes the orphan as abandoned, and reconcile never replays it. See
docs/audit.md, "Crash recovery".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from mlflow_approvals import tags as T
from mlflow_approvals.audit import deterministic_id, make_event, parse_event
from mlflow_approvals.lifecycle import SYSTEM

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from mlflow_approvals.ports import Ports
    from mlflow_approvals.verify import VerifyReport

__all__ = ["ABANDONABLE", "ABANDON_AFTER", "Intent", "abandoned_hashes", "settle_intents"]

ABANDON_AFTER = timedelta(hours=1)
"""How old an unanchored event must be before it is taken for abandoned. A step writes its
effect one round trip after its event; MLflow's client retries a failing request for up to
about 20 minutes (7 retries with backoff, 120 s timeouts), so an hour leaves no step in
flight."""

ABANDONABLE = frozenset(
    {
        "request.created",
        "signoff.approved",
        "signoff.rejected",
        "request.cancelled",
        "request.expired",
        "request.superseded",
        "request.invalidated",
        "breakglass.reviewed",
        "stage.transitioned",
        "version.archived",
        "alias.set",
        "alias.deleted",
    }
)
"""The lifecycle events whose effect is a fact tag (and, for an application, a registry
change): the only kinds an abandonment may record."""


@dataclass(frozen=True)
class Intent:
    """An event written before an effect that is not there."""

    version: str
    type: str
    event: str  # its hash
    request_id: str | None
    actor: str | None
    record: str | None = None  # hash of the intent.abandoned event recording it (None: left)
    why: str = ""  # why it was left alone (when not recorded)

    def __str__(self) -> str:
        by = f" by {self.actor}" if self.actor else ""
        of = f" (request {self.request_id})" if self.request_id else ""
        head = f"v{self.version} {self.type} {self.event[:12]}{by}{of}"
        if self.record:
            return f"{head}: written, never took effect; recorded as abandoned ({self.record[:12]})"
        return f"{head}: {self.why}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "type": self.type,
            "event": self.event,
            "request_id": self.request_id,
            "actor": self.actor,
            "record": self.record,
            "why": self.why,
        }


def abandoned_hashes(files: Sequence[tuple[str, bytes]], report: VerifyReport) -> set[str]:
    """The events that valid ``intent.abandoned`` events record as never applied."""
    valid = {
        line.path
        for line in report.events
        if line.type == "intent.abandoned" and line.status == "VALID" and line.path
    }
    found: set[str] = set()
    for path, raw in files:
        if path not in valid:
            continue
        data = parse_event(raw).get("data") or {}
        target = data.get("abandoned")
        if isinstance(target, str) and target in (data.get("parents") or []):
            found.add(target)
    return found


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _time(event: Mapping[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(event.get("time", "")).replace("Z", "+00:00"))
    except ValueError:
        return None


def _effect(
    digest: str,
    kind: str,
    data: Mapping[str, Any],
    mv: ModelVersion,
    versions: Mapping[str, ModelVersion],
    aliases: Mapping[str, str],
) -> str | None:
    """Where the registry shows the event's effect (None: nowhere)."""
    for key, value in sorted((mv.tags or {}).items()):
        if T.is_reserved(key) and digest in value:
            return f"the tag {key} names it: look at that fact"
    after = data.get("after")
    if not isinstance(after, dict):
        return None
    if kind in ("stage.transitioned", "version.archived"):
        v = str(after.get("version") or mv.version)
        held = versions.get(v)
        if held is not None and held.current_stage == after.get("stage"):
            return (
                f"v{v} is in stage {held.current_stage}, as it asks, without its fact: finish "
                "the step (`mlflow-approvals apply`)"
            )
    if kind in ("alias.set", "alias.deleted"):
        alias, target = str(after.get("alias")), after.get("version")
        if aliases.get(alias) == (None if target is None else str(target)):
            now = "does not exist" if target is None else f"points at v{target}"
            return f"alias @{alias} {now}, as it asks, without its fact: finish the step"
    return None


def settle_intents(
    ports: Ports,
    name: str,
    files: Sequence[tuple[str, bytes]],
    report: VerifyReport,
    versions: Mapping[str, ModelVersion],
    aliases: Mapping[str, str],
    abandon_after: timedelta = ABANDON_AFTER,
) -> tuple[list[Intent], list[Intent]]:
    """Record as abandoned each unanchored lifecycle event whose effect is not in the registry
    and which is at least ``abandon_after`` old; return (recorded, left alone).

    ``report`` is verify's verdict on ``files``; ``versions`` and ``aliases`` are the registry
    now. An event is left alone while it is younger (its step may still be writing its effect),
    and when the registry shows its effect (a fact naming it, or the stage or alias it asks
    for): finishing the step is then the way out, not an abandonment.
    """
    raw_of = dict(files)
    now = ports.clock()
    recorded: list[Intent] = []
    left: list[Intent] = []
    seen: set[str] = set()
    for line in report.events:
        if (
            line.problem != "not anchored"
            or line.type not in ABANDONABLE
            or line.path is None
            or line.hash in seen
            or line.version not in versions
        ):
            continue
        seen.add(line.hash)
        version = str(line.version)
        event = parse_event(raw_of[line.path])
        data = event.get("data") or {}
        actor = _text((data.get("actor") or {}).get("id"))
        intent = Intent(version, line.type, line.hash, _text(data.get("request_id")), actor)
        written = _time(event)
        if written is None or now - written < abandon_after:
            why = (
                f"written {written.isoformat() if written else 'at an unreadable time'}: its "
                f"step may still be in flight; it is recorded as abandoned once "
                f"{abandon_after} old"
            )
            left.append(replace(intent, why=why))
            continue
        effect = _effect(line.hash, line.type, data, versions[version], versions, aliases)
        if effect is not None:
            left.append(replace(intent, why=effect))
            continue
        digest = _abandon(ports, name, intent, data, now)
        recorded.append(replace(intent, record=digest))
    return recorded, left


def _abandon(
    ports: Ports, name: str, intent: Intent, data: Mapping[str, Any], now: datetime
) -> str:
    """Write the intent.abandoned event, then its anchor; return the event's hash."""
    found = data.get("model")
    model: Mapping[str, Any] = found if isinstance(found, dict) else {}
    by = f" by {intent.actor}" if intent.actor else ""
    event = make_event(
        type="intent.abandoned",
        name=name,
        version=intent.version,
        actor=SYSTEM.id,
        display_name=SYSTEM.display_name,
        comment=(
            f"{intent.type} event {intent.event[:12]} of v{intent.version}{by} was written, but "
            "its step never took effect: no fact records it and the registry does not hold its "
            "change (the process stopped between the event and its effect). It was not applied."
        ),
        before={"event": intent.event, "type": intent.type, "status": "written"},
        after={"event": intent.event, "status": "abandoned", "applied": False},
        request_id=intent.request_id,
        policy_hash=ports.policy.content_hash,
        run_id=_text(model.get("run_id")),
        source=_text(model.get("source")),
        parents=[intent.event],
        event_id=deterministic_id("abandoned", name, intent.event),
        time=now,
        extra={"abandoned": intent.event},
    )
    digest = ports.audit.append(event)
    ports.audit.anchor_abandonment(name, intent.version, intent.event, digest)
    return digest
