"""Exporting a model's audit trail for a SIEM or an auditor: JSON Lines, ordered, one event a line.

``jsonl`` flattens each event into one record (and says whether it verified); ``cloudevents``
writes each structured-mode CloudEvent as stored. Two deliveries of one event (same CloudEvents
id) are written once. See docs/audit.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mlflow_approvals.audit import (
    TYPE_PREFIX,
    canonical,
)
from mlflow_approvals.auditlog import read_log
from mlflow_approvals.verify import (
    VALID,
    ReportLine,
    ordered_events,
    verify_events,
)

if TYPE_CHECKING:
    from mlflow_approvals.ports import Ports

__all__ = ["EXPORT_FORMATS", "export_events", "export_model", "flatten"]

EXPORT_FORMATS = ("jsonl", "cloudevents")


def flatten(event: Mapping[str, Any], line: ReportLine | None = None) -> dict[str, Any]:
    """One flat audit record (the ``jsonl`` export format) from a stored event."""
    data = dict(event.get("data") or {})
    actor = data.pop("actor", None) or {}
    policy = data.pop("policy", None) or {}
    model = data.pop("model", None) or {}
    kind = str(event.get("type", ""))
    record: dict[str, Any] = {
        "time": event.get("time"),
        "id": event.get("id"),
        "type": kind[len(TYPE_PREFIX) :] if kind.startswith(TYPE_PREFIX) else kind,
        "subject": event.get("subject"),
        "model": model.get("name"),
        "version": model.get("version"),
        "actor": actor.get("id"),
        "display_name": actor.get("display_name"),
        "meaning": data.pop("meaning", None),
        "comment": data.pop("comment", None),
        "before": data.pop("before", None),
        "after": data.pop("after", None),
        "request_id": data.pop("request_id", None),
        "policy_hash": policy.get("hash"),
        "rule": policy.get("rule"),
        "run_id": model.get("run_id"),
        "source": model.get("source"),
        "parents": data.pop("parents", []),
        "details": data,  # the rest: role, level, target, attempted, ...
        "hash": None if line is None else line.hash,
        "verified": None if line is None else line.status == VALID,
        # An intent whose step never took effect (a crash), as reconcile recorded it.
        "abandoned_by": None if line is None else line.abandoned_by,
    }
    return record


def export_events(
    files: Sequence[tuple[str, bytes]],
    anchors: Mapping[str, Collection[str]],
    out: IO[str],
    format: str = "jsonl",
    live_versions: Collection[str] | None = None,
    deletions: Mapping[str | None, Collection[str]] | None = None,
) -> int:
    """Write the trail to ``out``, ordered, one event per line; return how many were written.

    Every event that parses is written, the suspicious ones too (dropping evidence would be
    worse); in ``jsonl`` each record says whether it verified. Run verify for the details.
    ``live_versions`` and ``deletions`` are those of
    :func:`~mlflow_approvals.verify.verify_events`.
    """
    _check_format(format)
    report = verify_events(files, anchors, live_versions=live_versions, deletions=deletions)
    count = 0
    for event, line in ordered_events(files, report):
        if format == "cloudevents":
            out.write(canonical(event).decode() + "\n")
        else:
            out.write(json.dumps(flatten(event, line), sort_keys=True, ensure_ascii=False) + "\n")
        count += 1
    return count


def export_model(
    ports: Ports, name: str, path: str | os.PathLike[str], format: str = "jsonl"
) -> int:
    """Write the whole audit trail of ``name`` to ``path`` (JSON Lines); return the count."""
    _check_format(format)
    log = read_log(ports, name)
    target = Path(path)
    tmp = target.with_name(target.name + ".partial")
    with open(tmp, "w", encoding="utf-8", newline="\n") as out:
        count = export_events(log.files, log.anchors, out, format, log.live_versions, log.deletions)
    os.replace(tmp, target)
    return count


def _check_format(format: str) -> None:
    if format not in EXPORT_FORMATS:
        from mlflow_approvals.errors import InvalidRequest

        raise InvalidRequest(
            f"unknown export format {format!r}: use {' or '.join(map(repr, EXPORT_FORMATS))}"
        )
