"""Verifying, exporting and reconciling the audit log of a registered model.

The audit log (see :mod:`mlflow_approvals.audit` and docs/audit.md) is a hash DAG: each event
names, in ``data.parents``, the hashes of the events anchored on its model version that its
writer saw, and every fact tag of a model version holds the hash of the event that backs it
(the anchors). Verifying compares the two stores:

* each file parses, is canonical JSON (RFC 8785), its content hashes to the hash in its name,
  and it sits where its content says (``events/v<version>/<time>-<sha256>.json``);
* every anchored hash, and every parent an event names, exists in the log ("missing" catches
  a deleted event, the newest included; "broken link" marks the event whose parent is gone);
* every event that changes something is anchored: its hash is in a fact tag, or it is an
  ancestor (through ``parents``) of an anchored event ("not anchored" catches an inserted
  event, and also an event whose change was never recorded);
* refused attempts and the records of ``reconcile`` change no tag, so nothing anchors them:
  they are valid but marked ``(unanchored)``; two files carrying the same CloudEvents id are
  two deliveries of one event, counted once;
* an event of a version that no longer exists (or never did) is valid only when that version's
  deletion, or the model's, was recorded and anchored: a tag of the audit run
  (``mlflow_approvals.deleted.v<version>`` / ``.model``) holds the hash of an intact event of
  that version (or of the model) recording the deletion. Otherwise it is ``orphaned``: a
  version deleted around the gate, or events planted for a version that never existed. With
  the deletion recorded, the usual rules apply (its events are anchored as ancestors of the
  deletion event, or are of a type that changes no tag).

:func:`verify_events` is the pure core (bytes and hashes in, a report out); :func:`verify_model`
reads the registry and the log through the ports (:mod:`mlflow_approvals.auditlog`) and writes
nothing. Exporting
(:mod:`mlflow_approvals.export`) and reconciling (:mod:`mlflow_approvals.reconcile`) build on
the reading and ordering helpers here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from mlflow_approvals.audit import (
    TYPE_PREFIX,
    canonical,
    event_path,
    parse_event,
)
from mlflow_approvals.auditlog import collect_anchors, read_log
from mlflow_approvals.segments import check_segments

if TYPE_CHECKING:
    from mlflow_approvals.ports import Ports

__all__ = [
    "ReportLine",
    "VerifyReport",
    "collect_anchors",
    "ordered_events",
    "verify_events",
    "verify_model",
]

Status = Literal["VALID", "INVALID"]
VALID: Status = "VALID"
INVALID: Status = "INVALID"

# The problems verify reports, most severe first (a line shows the first that applies).
PROBLEMS = (
    "unreadable",
    "hash mismatch",
    "not canonical",
    "misplaced",
    "missing",
    "broken link",
    "not anchored",
    "contradicted",  # an abandonment of an event a fact holds (see _mark_abandoned)
    "orphaned",  # last: a line whose problem is "orphaned" has no other (reconcile relies on it)
)
# Event types that change no tag, so nothing can anchor them.
UNANCHORED_TYPES = frozenset(
    {
        "attempt.denied",
        "checks.failed",
        "notification.failed",
        "change.detected",
        "registry.changed",
        "registry.unchanged",
        "access.changed",
        "gate.bypassed",
    }
)
_PLURALS = {"broken link": "broken links", "hash mismatch": "hash mismatches"}

_NAME = re.compile(r"^(?P<stamp>[0-9]{8}T[0-9]+Z)-(?P<hash>[0-9a-f]{64})\.json$")
_VERSION_FOLDER = re.compile(r"^events/v(?P<version>[^/]+)/")
_HASH = re.compile(r"^[0-9a-f]{64}$")
_BASENAME = re.compile(_NAME.pattern.removeprefix("^"))  # matched from the last "/"
_PREFIX_LEN = len(TYPE_PREFIX)
_ENVELOPE = ("specversion", "id", "source", "type", "time", "subject")
# The C scanner: json.loads without its wrapper (about a tenth of the cost of a small event).
_SCAN: Any = getattr(json.JSONDecoder(), "scan_once")  # noqa: B009 (not in typeshed)


# ---------------------------------------------------------------------------- reports ----
@dataclass(frozen=True)
class ReportLine:
    """The verdict on one event file (or on one event that should exist and does not)."""

    status: Status
    path: str | None  # None for a missing event
    hash: str  # the content hash (for a missing event: the hash that is named but absent)
    type: str | None  # the event type without the ``org.mlflow-approvals.`` prefix
    version: str | None  # the model version the event is about (None: the model as a whole)
    problem: str | None = None  # one of PROBLEMS when INVALID
    reason: str = ""  # why INVALID, or a note on a valid event ("(unanchored)", duplicates)
    duplicate_of: str | None = None  # a second delivery of the event with this hash
    abandoned_by: str | None = None  # the intent.abandoned event recording it never took effect

    def __str__(self) -> str:
        where = self.path if self.path is not None else f"(missing) {self.hash}"
        text = f"{self.status:<8}{where}  {self.type or '?'}"
        return f"{text}  {self.reason}" if self.reason else text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view with a stable shape."""
        return {
            "status": self.status,
            "path": self.path,
            "hash": self.hash,
            "type": self.type,
            "version": self.version,
            "problem": self.problem,
            "reason": self.reason,
            "duplicate_of": self.duplicate_of,
            "abandoned_by": self.abandoned_by,
        }


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_audit`` found: one line per event file or missing event, and a summary.

    ``ok`` is true when every line is VALID. Duplicate deliveries of one event are valid and
    counted once. ``notes`` say what this run could not check (unanchored events).
    """

    name: str | None
    version: str | None
    events: tuple[ReportLine, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(line.status == VALID for line in self.events)

    @property
    def total(self) -> int:
        """Distinct events: files and missing events, each duplicate delivery counted once."""
        return sum(1 for line in self.events if line.duplicate_of is None)

    @property
    def valid(self) -> int:
        return sum(1 for line in self.events if line.status == VALID and line.duplicate_of is None)

    @property
    def counts(self) -> dict[str, int]:
        """How many lines show each problem, in PROBLEMS order (problems found only)."""
        found = Counter(line.problem for line in self.events if line.problem)
        return {p: found[p] for p in PROBLEMS if found[p]}

    @property
    def duplicates(self) -> int:
        return sum(1 for line in self.events if line.duplicate_of is not None)

    @property
    def summary(self) -> str:
        """E.g. ``41/41 events valid``, or ``40/42 events valid; 1 missing, 1 broken link``."""
        text = f"{self.valid}/{self.total} events valid"
        problems = [f"{n} {p if n == 1 else _PLURALS.get(p, p)}" for p, n in self.counts.items()]
        if problems:
            text += "; " + ", ".join(problems)
        if self.duplicates:
            many = "deliveries" if self.duplicates > 1 else "delivery"
            text += f" ({self.duplicates} duplicate {many} counted once)"
        return text

    @property
    def lines(self) -> list[str]:
        """One human-readable line per event, like ``aws cloudtrail validate-logs``."""
        return [str(line) for line in self.events]

    def __str__(self) -> str:
        return "\n".join([*self.lines, self.summary, *self.notes])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view with a stable shape (the CLI's ``--json`` output)."""
        return {
            "ok": self.ok,
            "name": self.name,
            "version": self.version,
            "summary": self.summary,
            "total": self.total,
            "valid": self.valid,
            "duplicates": self.duplicates,
            "problems": self.counts,
            "events": [line.to_dict() for line in self.events],
            "notes": list(self.notes),
        }


@functools.lru_cache(maxsize=4096)  # a log names few versions; its lines are sorted by them
def _version_order(version: str | None) -> tuple[int, int, str]:
    if version is None:
        return (0, 0, "")
    return (1, int(version), "") if version.isdigit() else (2, 0, version)


# ---------------------------------------------------------------------------- the core ---
_DELETION_OF = "deletion of "


def _deletion_where(version: str | None) -> str:
    """Where a deletion anchor is held, as a report line names it."""
    return _DELETION_OF + ("the model" if version is None else f"v{version}")


def _where_version(where: str) -> str | None:
    """The version an anchor's place names (``v3:<key>``, ``deletion of v3``), or None."""
    if where.startswith(_DELETION_OF):
        rest = where[len(_DELETION_OF) :]
        return rest[1:] if rest.startswith("v") else None
    return where.split(":", 1)[0].removeprefix("v")


@dataclass
class _Entry:
    path: str
    digest: str  # sha256 of the bytes as stored
    name_hash: str | None  # the hash the file name claims
    event: dict[str, Any] | None
    problems: list[tuple[str, str]] = field(default_factory=list)
    note: str = ""
    duplicate_of: str | None = None
    abandoned_by: str | None = None
    anchored: bool = False
    raw: bytes = b""  # the bytes as stored (checked for canonical form when nothing pins them)
    # Read from the event once, by _inspect (each is read many times per event).
    type: str | None = None  # without the org.mlflow-approvals. prefix
    data: dict[str, Any] = field(default_factory=dict)
    parents: list[str] = field(default_factory=list)
    version: str | None = None  # the model version the event is about (else its folder's)
    key: tuple[str, str] = ("None", "None")  # the CloudEvents identity: (source, id)

    @property
    def orphaned(self) -> bool:
        return any(p == "orphaned" for p, _ in self.problems)

    @property
    def intact(self) -> bool:
        return self.event is not None and not self.problems


def _all_hashes(parents: list[Any], known: Collection[str]) -> bool:
    """Is every item a SHA-256 hex digest? An item equal to the digest of a stored file is one
    by construction (a set look-up); only the others are matched against the pattern."""
    for p in parents:
        if type(p) is not str or (p not in known and not _HASH.fullmatch(p)):
            return False
    return True


def _shape_problem(event: dict[str, Any], known: Collection[str]) -> str | None:
    """Why a parsed JSON object is not an audit event, or None."""
    for attr in _ENVELOPE:
        if type(event.get(attr)) is not str:
            return f"not an audit event: CloudEvents attribute {attr!r} missing"
    data = event.get("data")
    if not isinstance(data, dict):
        return "not an audit event: no data object"
    parents = data.get("parents")
    if not isinstance(parents, list) or not _all_hashes(parents, known):
        return "not an audit event: data.parents is not a list of SHA-256 hashes"
    model = data.get("model")
    if not isinstance(model, dict) or "version" not in model:
        return "not an audit event: data.model missing"
    return None


def _folder_version(path: str) -> str | None:
    """The version an event file's folder names (``events/v3/...``), or None."""
    m = _VERSION_FOLDER.match(path)
    return m.group("version") if m else None


def _inspect(path: str, raw: bytes, digest: str, known: Collection[str]) -> _Entry:
    """Parse one file and check it on its own: readable, named by its hash, in its place.

    Its canonical form is checked later, by :func:`_check_canonical`, and only when no anchor
    pins its bytes. ``digest`` is the SHA-256 of ``raw``; ``known`` holds the digests of every
    file of the log.
    """
    m = _BASENAME.match(path, path.rfind("/") + 1)
    entry = _Entry(path, digest, m.group("hash") if m else None, None, raw=raw)
    try:
        text = raw.decode("utf-8")  # canonical JSON is UTF-8
        try:
            event, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):  # not one bare JSON value: let the full parser decide
            event = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        entry.problems.append(("unreadable", f"unreadable: {exc}"))
        entry.version = _folder_version(path)
        return entry
    shape = (
        "not an audit event: not a JSON object"
        if not isinstance(event, dict)
        else _shape_problem(event, known)
    )
    if shape:
        entry.problems.append(("unreadable", shape))
        entry.version = _folder_version(path)
        return entry
    entry.event = event
    # The shape is known good: derive the fields directly (the hot path of verify).
    data = event["data"]
    kind = event["type"]
    version = data["model"]["version"]
    entry.data = data
    entry.parents = data["parents"]
    entry.type = kind[_PREFIX_LEN:] if kind.startswith(TYPE_PREFIX) else kind
    entry.key = (event["source"], event["id"])
    entry.version = str(version) if version is not None else _folder_version(path)
    if entry.name_hash is None:
        entry.problems.append(("misplaced", "misplaced: the file name carries no event hash"))
    elif entry.name_hash != digest:
        entry.problems.append(
            (
                "hash mismatch",
                f"hash mismatch: the name says {entry.name_hash[:12]}, "
                f"the content hashes to {digest[:12]}",
            )
        )
    if not entry.problems:
        try:
            expected = event_path(event, digest)
        except (KeyError, TypeError, AttributeError):
            expected = None
        if expected != path:
            entry.problems.append(
                ("misplaced", f"misplaced: its content belongs at {expected or '?'}")
            )
    return entry


def _check_canonical(entry: _Entry) -> None:
    """Add ``not canonical`` when the entry's bytes are not the RFC 8785 form of its content.

    Only needed for an event whose hash no anchor reaches: a reached event has exactly the
    bytes its writer hashed (canonical JSON), and canonicalising costs about ten times the
    other checks of an event. A file that is not canonical is not checked for its place.
    """
    if entry.event is None:
        return
    try:
        is_canonical = canonical(entry.event) == entry.raw
    except ValueError:  # a number RFC 8785 cannot represent
        is_canonical = False
    if not is_canonical:
        entry.problems = [p for p in entry.problems if p[0] != "misplaced"]
        entry.problems.append(("not canonical", "not canonical: not RFC 8785 JSON as written"))


def _same_event(a: _Entry, b: _Entry) -> bool:
    """Two deliveries of one event: same CloudEvents identity, and the same effect."""
    if a.key != b.key or a.event is None or b.event is None:
        return False
    return all(a.event.get(k) == b.event.get(k) for k in ("type", "subject")) and all(
        a.data.get(k) == b.data.get(k) for k in ("request_id", "after")
    )


def _orphan_reason(
    version: str,
    recorded: Mapping[str | None, Collection[str]],
    by_content: Mapping[str, Sequence[_Entry]],
    present: Collection[str],
) -> str | None:
    """Why the events of ``version``, which does not exist, are orphaned; None when a deletion
    anchor of the version (or of the model) names an intact event of that version (or model)."""
    faults = []
    for key in (version, None):
        whose = f"the deletion of v{version}" if key is not None else "the model's deletion"
        for h in sorted(recorded.get(key, ())):
            copies = by_content.get(h, ())
            if any(e.intact and e.version == key for e in copies):
                return None
            if h not in present:
                faults.append(f"{whose} names {h[:12]}, which is not in the log")
            elif not any(e.intact for e in copies):
                faults.append(f"{whose} names {h[:12]}, which does not verify")
            else:
                other = next(e.version for e in copies if e.intact)
                of = "the model" if other is None else f"version {other}"
                faults.append(f"{whose} names {h[:12]}, an event of {of}")
    if not faults:
        return f"orphaned: version {version} does not exist and its deletion was never recorded"
    return (
        f"orphaned: version {version} does not exist and its recorded deletion does not hold: "
        + "; ".join(faults)
    )


def _mark_abandoned(
    entries: Sequence[_Entry],
    by_content: Mapping[str, Sequence[_Entry]],
    anchors: Mapping[str, Collection[str]],
) -> None:
    """Note the events an anchored ``intent.abandoned`` event records as never applied.

    Such an event (``data.abandoned``, also its parent) was written and its step never took
    effect (a crash): it is anchored through the abandonment, as the record of an intent and
    of nothing that happened. An abandonment of an event a fact tag holds is ``contradicted``:
    that step did take effect.
    """
    for entry in entries:
        if entry.type != "intent.abandoned" or not entry.anchored or not entry.intact:
            continue
        target = entry.data.get("abandoned")
        if not isinstance(target, str) or target not in entry.parents:
            continue
        if target in anchors:
            held = ", ".join(sorted(anchors[target]))
            entry.problems.append(
                (
                    "contradicted",
                    f"contradicted: it records {target[:12]} as never applied, but {held} holds "
                    "that event, so its step took effect (recorded while the step was in "
                    "flight, or planted)",
                )
            )
            continue
        for abandoned in by_content.get(target, ()):
            abandoned.note = f"(abandoned by {entry.digest[:12]}: it never took effect)"
            abandoned.abandoned_by = entry.digest


def _line(entry: _Entry) -> ReportLine:
    """The report line of one file: its most severe problem first, every reason listed."""
    problems = sorted(entry.problems, key=lambda p: PROBLEMS.index(p[0]))
    return ReportLine(
        status=INVALID if problems else VALID,
        path=entry.path,
        hash=entry.digest,
        type=entry.type,
        version=entry.version,
        problem=problems[0][0] if problems else None,
        reason="; ".join(r for _, r in problems) if problems else entry.note,
        duplicate_of=entry.duplicate_of,
        abandoned_by=entry.abandoned_by,
    )


def verify_events(
    files: Sequence[tuple[str, bytes]],
    anchors: Mapping[str, Collection[str]],
    *,
    name: str | None = None,
    version: str | None = None,
    live_versions: Collection[str] | None = None,
    deletions: Mapping[str | None, Collection[str]] | None = None,
    segments: Sequence[tuple[str, bytes]] = (),
    sealed: Mapping[str, Collection[str]] | None = None,
) -> VerifyReport:
    """Verify an audit log: ``files`` are (artifact path, bytes) pairs, ``anchors`` map each
    hash held in a fact tag to where it is held (for example ``v3:mlflow_approvals.r.<rid>``).

    With ``version``, the whole log is still checked (links cross versions: an archived
    version's event is anchored through the promoted version's), but only the lines of that
    version are reported. ``live_versions`` names the versions that exist (None: every version
    the log names is taken to exist). ``deletions`` maps a version (None: the model) to the
    hashes of the events recording its deletion (the audit run's ``mlflow_approvals.deleted.*``
    tags); they are anchors too ("deletion of v<N>", "deletion of the model"). Deleting a
    version deletes its fact tags: an event of a version that does not exist is valid only when
    a deletion anchor of that version, or of the model, names an intact event of that version
    (or of the model) and the event is anchored (an ancestor of any anchor, the deletion event
    included) or of a type that changes no tag; otherwise it is ``orphaned``. ``segments`` are
    sealed segment files and ``sealed`` maps each anchored segment hash to where it is held
    (:mod:`mlflow_approvals.segments`): their events are checked like loose ``files``, and a
    segment that is damaged or that nothing seals is a ``segment`` line. Pure: no I/O.
    """
    container = check_segments(files, segments, sealed or {}) if segments or sealed else None
    if container is not None:
        files = container.files
    recorded = {v: set(ds) for v, ds in (deletions or {}).items()}
    held: dict[str, set[str]] = {h: set(where) for h, where in anchors.items()}
    for v, digests in recorded.items():
        for h in digests:
            held.setdefault(h, set()).add(_deletion_where(v))
    anchors = held
    live = None if live_versions is None else {str(v) for v in live_versions}
    stored = [hashlib.sha256(raw).hexdigest() for _, raw in files]
    known = set(stored)
    entries = [
        _inspect(path, raw, digest, known)
        for (path, raw), digest in zip(files, stored, strict=True)
    ]
    by_content: dict[str, list[_Entry]] = {}
    named: set[str] = set()
    for entry in entries:
        if entry.event is not None:
            by_content.setdefault(entry.digest, []).append(entry)
        if entry.name_hash:
            named.add(entry.name_hash)
    present = set(by_content) | named

    # Anchored: the hashes in fact tags and, through parents, everything they descend from.
    # Parents are followed only from content that really hashes to the hash being visited.
    reached: set[str] = set()
    stack = [h for h in anchors if h in present]
    while stack:
        h = stack.pop()
        if h in reached:
            continue
        reached.add(h)
        for entry in by_content.get(h, ()):
            stack += [p for p in entry.parents if p not in reached and p in present]
    for h in reached:
        for entry in by_content.get(h, ()):
            entry.anchored = True
    for entry in entries:
        if entry.digest not in reached:
            _check_canonical(entry)
    _mark_abandoned(entries, by_content, anchors)

    # Events of versions that do not exist: only a recorded, anchored deletion accounts for them.
    deleted: dict[str, str | None] = {}  # version -> why its events are orphaned (None: not)
    for entry in entries:
        v = entry.version
        if entry.event is None or live is None or v is None or v in live or v in deleted:
            continue
        deleted[v] = _orphan_reason(v, recorded, by_content, present)
    for entry in entries:
        why = deleted.get(entry.version or "") if entry.event is not None else None
        if why:
            entry.problems.append(("orphaned", why))

    anchored_by_key: dict[tuple[str, str], list[_Entry]] = {}
    for entry in entries:
        if entry.anchored and entry.intact:
            anchored_by_key.setdefault(entry.key, []).append(entry)

    # Events nothing anchors: duplicate deliveries, refused attempts, reconcile records.
    duplicates: list[_Entry] = []
    unanchored_by_key: dict[tuple[str, str], list[_Entry]] = {}
    for entry in entries:
        if entry.anchored or entry.event is None or entry.orphaned:
            continue
        twin = next((e for e in anchored_by_key.get(entry.key, ()) if _same_event(entry, e)), None)
        if twin is None and entry.type in UNANCHORED_TYPES and entry.intact:
            # two reconcilers recording one change: the same event, delivered twice
            seen = unanchored_by_key.setdefault(entry.key, [])
            twin = next((e for e in seen if _same_event(entry, e)), None)
            if twin is None:
                seen.append(entry)
                entry.note = "(unanchored: it changes no tag)"
                continue
        if twin is not None:
            entry.duplicate_of = twin.digest
            entry.note = f"(duplicate delivery of {twin.digest[:12]}, counted once)"
            duplicates.append(entry)
        elif entry.type in UNANCHORED_TYPES:
            entry.note = "(unanchored: it changes no tag)"
    # A duplicate apply event anchors the archive events its own writer wrote for the request
    # (two appliers may see different versions to archive).
    for dup in duplicates:
        if not dup.intact:
            continue
        for parent in dup.parents:
            for entry in by_content.get(parent, ()):
                if (
                    not entry.anchored
                    and entry.type == "version.archived"
                    and entry.data.get("request_id") == dup.data.get("request_id")
                ):
                    entry.anchored = True
                    entry.note = f"(anchored through the duplicate delivery {dup.digest[:12]})"
    for entry in entries:
        if entry.event is None or entry.anchored or entry.duplicate_of or entry.note:
            continue
        if entry.problems and entry.name_hash in reached:
            continue  # a damaged copy of an anchored event: its own problem says enough
        if entry.orphaned:
            continue  # its version's deletion was never recorded: that says enough
        entry.problems.append(
            (
                "not anchored",
                "not anchored: no fact tag leads to it (written but its change was never "
                "recorded: a crash or a failed write; or inserted)",
            )
        )
    for entry in entries:
        gone = [p for p in entry.parents if p not in present]
        if gone:
            entry.problems.append(
                ("broken link", f"broken link: parent {', '.join(p[:12] for p in gone)} missing")
            )

    lines = [_line(entry) for entry in entries]

    # Missing: anchored hashes and parents that no file holds (by content or by name).
    named_by: dict[str, list[_Entry]] = {}
    for entry in entries:
        for p in entry.parents:
            if p not in present:
                named_by.setdefault(p, []).append(entry)
    missing = sorted({h for h in anchors if h not in present} | set(named_by))
    for h in missing:
        where = sorted(anchors.get(h, ()))
        children = named_by.get(h, [])
        reasons = []
        if where:
            reasons.append("anchored by " + ", ".join(where))
        if children:
            reasons.append(f"named as parent by {len(children)} event(s)")
        versions = [v for v in map(_where_version, where) if v is not None]
        versions += [c.version for c in children if c.version is not None]
        lines.append(
            ReportLine(
                status=INVALID,
                path=None,
                hash=h,
                type=None,
                version=versions[0] if versions else None,
                problem="missing",
                reason="missing: " + "; ".join(reasons),
            )
        )

    for finding in container.findings if container is not None else ():
        lines.append(
            ReportLine(
                status=INVALID,
                path=finding.path,
                hash=finding.hash,
                type="segment",
                version=None,
                problem=finding.problem,
                reason=finding.reason,
            )
        )
    if version is not None:
        lines = [line for line in lines if line.version == version]
    unanchored = Counter(
        line.type for line in lines if line.status == VALID and "changes no tag" in line.reason
    )
    shown = {line.version for line in lines}
    recorded_gone = sorted(
        (v for v, why in deleted.items() if not why and v in shown), key=_version_order
    )
    orphaned = sorted((v for v, why in deleted.items() if why and v in shown), key=_version_order)
    notes = []
    if unanchored:
        what = ", ".join(f"{n} {t}" for t, n in sorted(unanchored.items()))
        notes.append(
            f"note: {what} event(s) change no tag, so nothing anchors them: deleting one of "
            "them cannot be detected here (see docs/audit.md, 'What verify cannot catch')"
        )
    if recorded_gone:
        notes.append(
            f"note: version(s) {', '.join(recorded_gone)} no longer exist; their recorded deletion "
            "anchors their events"
        )
    if orphaned:
        notes.append(
            f"note: version(s) {', '.join(orphaned)} do not exist and no valid record of their "
            "deletion anchors their events: deleted around the gate (a plain MlflowClient), or "
            "planted (see docs/audit.md, 'Deleted versions')"
        )
    if container is not None and version is None:
        notes += container.notes
    lines.sort(
        key=lambda line: (
            line.path is None,
            _version_order(line.version),
            line.path or "",
            line.hash,
        )
    )
    return VerifyReport(name, version, tuple(lines), tuple(notes))


def verify_model(ports: Ports, name: str, version: str | None = None) -> VerifyReport:
    """Verify the audit log of model ``name`` (reporting one version's lines when given).

    Reads the model's versions (their fact tags) and downloads the log to a temporary folder;
    writes nothing to MLflow.
    """
    log = read_log(ports, name)
    return verify_events(
        log.loose,
        log.anchors,
        name=name,
        version=version,
        live_versions=log.live_versions,
        deletions=log.deletions,
        segments=log.segments,
        sealed=log.sealed,
    )


# ---------------------------------------------------------------------------- ordering ---
def _time_key(event: Mapping[str, Any]) -> tuple[float, str, str]:
    """Order by (time, id); an unparsable time sorts last."""
    text = str(event.get("time", ""))
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        when = float("inf")
    return (when, str(event.get("id", "")), text)


def ordered_events(
    files: Sequence[tuple[str, bytes]], report: VerifyReport
) -> list[tuple[dict[str, Any], ReportLine]]:
    """Every event that parses, one per CloudEvents (source, id), ordered by (time, id).

    Of two deliveries of one event, the anchored one (else a valid one) is kept. ``report`` is
    the verdict of :func:`verify_events` on the same files.
    """
    line_of = {(line.path, line.hash): line for line in report.events if line.path}
    best: dict[tuple[str, str], tuple[tuple[int, int, str], dict[str, Any], ReportLine]] = {}
    for path, raw in files:
        try:
            event = parse_event(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        line = line_of.get((path, hashlib.sha256(raw).hexdigest()))
        if line is None or line.problem == "unreadable":
            continue
        rank = (
            0 if line.status == VALID and line.duplicate_of is None else 1,
            0 if line.status == VALID else 1,
            line.hash,
        )
        key = (str(event.get("source")), str(event.get("id")))
        if key not in best or rank < best[key][0]:
            best[key] = (rank, event, line)
    chosen = [(event, line) for _, event, line in best.values()]
    return sorted(chosen, key=lambda pair: _time_key(pair[0]))
