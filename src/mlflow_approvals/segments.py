"""Sealed segments of the audit log: many event files in one artifact, anchored by its hash.

Reading a log through a tracking server costs one request per event file. Sealing copies the
event files of a model into a few segment files, so a reader downloads a segment instead of
its events. A segment is ``segments/<UTC time, digits>-<sha256>.jsonl`` in the model's audit
run, and its bytes are one line per event, sorted by path::

    <the event's artifact path>\\t<the event file's bytes, exactly as stored>\\n

Canonical JSON has no raw newline, so an event is one line and its bytes are kept as they were:
each event still hashes to the hash in its path and is checked like a loose file. The segment's
own hash (the SHA-256 of its bytes, also in its name) is **anchored** in a tag of the audit run,
``mlflow_approvals.sealed.<sha256>``, written after the segment (see ``AuditStore.seal``).

Sealing only adds: the loose event files stay where they are. A reader skips the loose files an
anchored, intact segment holds (by path), and reads the rest. A segment no tag seals is valid
only when every event in it is in the log anyway (a seal that stopped before its anchor);
otherwise it is reported ``not anchored``. Pure: no I/O here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

__all__ = [
    "MAX_SEGMENT_EVENTS",
    "SEALED_TAG_PREFIX",
    "SEGMENT_FOLDER",
    "Checked",
    "Finding",
    "check_segments",
    "covered_paths",
    "decode",
    "encode",
    "sealable",
    "sealed_tag",
    "segment_path",
]

SEGMENT_FOLDER = "segments"
SEALED_TAG_PREFIX = "mlflow_approvals.sealed."
MAX_SEGMENT_EVENTS = 10_000
"""At most this many events in one segment (about 7 MB of typical events)."""

_SEGMENT_NAME = re.compile(r"^segments/(?P<stamp>[0-9]{8}T[0-9]+Z)-(?P<hash>[0-9a-f]{64})\.jsonl$")
_EVENT_PATH = re.compile(r"^events/[^/\t\n\r]+/[^/\t\n\r]+\.json$")
_HASH = re.compile(r"^[0-9a-f]{64}$")


def sealed_tag(digest: str) -> str:
    """The audit-run tag that anchors the segment whose bytes hash to ``digest``."""
    if not _HASH.match(digest):
        raise ValueError(f"not the SHA-256 hash of a segment: {digest!r}")
    return SEALED_TAG_PREFIX + digest


def sealed_hash(key: str) -> str | None:
    """The segment hash an audit-run tag key anchors, or None when it is not a seal tag."""
    if not key.startswith(SEALED_TAG_PREFIX):
        return None
    rest = key[len(SEALED_TAG_PREFIX) :]
    return rest if _HASH.match(rest) else None


def segment_path(digest: str, when: datetime) -> str:
    """The artifact path of a segment sealed at ``when`` whose bytes hash to ``digest``."""
    utc = when.astimezone(timezone.utc) if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return f"{SEGMENT_FOLDER}/{utc.strftime('%Y%m%dT%H%M%S%f')}Z-{digest}.jsonl"


def name_hash(path: str) -> str | None:
    """The hash a segment's path claims, or None when the path is not a segment's."""
    m = _SEGMENT_NAME.match(path)
    return m.group("hash") if m else None


def sealable(path: str, raw: bytes) -> bool:
    """Can this event file go into a segment line as it is? (An event path, one line of UTF-8.)

    Files that cannot (hand-made garbage, a re-serialised event with newlines) stay loose and
    are read and reported as loose files.
    """
    if not _EVENT_PATH.match(path) or b"\n" in raw or b"\r" in raw:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def encode(files: Sequence[tuple[str, bytes]]) -> bytes:
    """A segment's bytes: one ``path<TAB>bytes`` line per file, sorted by path, each once."""
    unique = dict(sorted(files))
    for path, raw in unique.items():
        if not sealable(path, raw):
            raise ValueError(f"{path!r} cannot be sealed into a segment line")
    return b"".join(path.encode() + b"\t" + raw + b"\n" for path, raw in unique.items())


def decode(raw: bytes) -> tuple[list[tuple[str, bytes]], str | None]:
    """The (path, bytes) of each event in a segment, and why a part of it is unreadable (None
    when all of it reads). Lines that read are returned even when others do not."""
    entries: list[tuple[str, bytes]] = []
    problem = None
    if raw and not raw.endswith(b"\n"):
        problem = "unreadable: the segment does not end with a newline (truncated?)"
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line:
            continue
        head, tab, body = line.partition(b"\t")
        try:
            path = head.decode("utf-8")
        except UnicodeDecodeError:
            path = ""
        if not tab or not _EVENT_PATH.match(path):
            problem = problem or f"unreadable: line {number} is not <event path><TAB><event>"
            continue
        entries.append((path, body))
    return entries, problem


def covered_paths(segments: Sequence[tuple[str, bytes]], sealed: Collection[str]) -> set[str]:
    """The event paths that intact, anchored segments hold.

    A segment counts when its bytes hash to the hash in its name and that hash is in ``sealed``.
    """
    paths: set[str] = set()
    for path, raw in segments:
        digest = hashlib.sha256(raw).hexdigest()
        if name_hash(path) == digest and digest in sealed:
            paths.update(p for p, _ in decode(raw)[0])
    return paths


@dataclass(frozen=True)
class Finding:
    """What is wrong with one segment (or with an anchor whose segment is not in the log)."""

    path: str | None  # None: an anchored segment that no file holds
    hash: str  # the segment's content hash (missing: the anchored hash)
    problem: str  # one of verify's PROBLEMS
    reason: str


@dataclass(frozen=True)
class Checked:
    """The events to verify (loose files and the events of every segment, each once), and what
    is wrong with the segments themselves."""

    files: list[tuple[str, bytes]]
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_segments(
    files: Sequence[tuple[str, bytes]],
    segments: Sequence[tuple[str, bytes]],
    sealed: Mapping[str, Collection[str]],
) -> Checked:
    """Check the segments against their anchors and merge their events with the loose ``files``.

    ``sealed`` maps each anchored segment hash to where it is held (the audit-run tag). Every
    segment that decodes contributes its events, anchored or not: each event is then checked on
    its own like a loose file (its hash, its place, its anchors). A segment is reported when its
    name carries no hash (``misplaced``), part of it does not read (``unreadable``), its bytes do
    not hash to its name (``hash mismatch``: an event edited, deleted or reordered inside it),
    or no tag seals it and it holds an event the log does not otherwise hold (``not anchored``).
    An anchored hash no segment holds is ``missing``.
    """
    out: list[tuple[str, bytes]] = []
    seen: set[tuple[str, bytes]] = set()
    for item in files:
        if item not in seen:
            seen.add(item)
            out.append(item)
    loose = set(seen)
    findings: list[Finding] = []
    notes: list[str] = []
    present: set[str] = set()
    decoded = []
    for path, raw in segments:
        digest = hashlib.sha256(raw).hexdigest()
        claimed = name_hash(path)
        present.add(digest)
        if claimed:
            present.add(claimed)
        entries, unreadable = decode(raw)
        decoded.append((path, digest, claimed, entries, unreadable))
    intact_sealed = {
        item
        for _, digest, claimed, entries, unreadable in decoded
        if claimed == digest and digest in sealed and not unreadable
        for item in entries
    }
    unfinished = 0
    for path, digest, claimed, entries, unreadable in decoded:
        reasons: list[tuple[str, str]] = []
        if claimed is None:
            reasons.append(("misplaced", "misplaced: the segment's name carries no hash"))
        elif claimed != digest:
            reasons.append(
                (
                    "hash mismatch",
                    f"hash mismatch: the name says {claimed[:12]}, the content hashes to "
                    f"{digest[:12]} (an event edited, removed, added or reordered inside it)",
                )
            )
        if unreadable:
            reasons.append(("unreadable", unreadable))
        anchored = digest in sealed or (claimed in sealed and claimed != digest)
        if not reasons and not anchored:
            if all(e in loose or e in intact_sealed for e in entries):
                unfinished += 1  # a seal that stopped before its anchor: nothing new in it
            else:
                reasons.append(
                    (
                        "not anchored",
                        "not anchored: no audit-run tag seals this segment, and it holds events "
                        "the log does not otherwise hold (planted)",
                    )
                )
        if reasons:
            order = ("unreadable", "hash mismatch", "misplaced", "not anchored")
            reasons.sort(key=lambda r: order.index(r[0]))
            findings.append(Finding(path, digest, reasons[0][0], "; ".join(r for _, r in reasons)))
        for item in entries:
            if item not in seen:
                seen.add(item)
                out.append(item)
    for h in sorted(set(sealed) - present):
        where = ", ".join(sorted(sealed[h]))
        findings.append(
            Finding(None, h, "missing", f"missing: a sealed segment anchored by {where}")
        )
    if unfinished:
        notes.append(
            f"note: {unfinished} segment(s) no tag seals hold only events the log holds anyway "
            "(a seal that stopped before its anchor); run the seal again"
        )
    return Checked(out, findings, notes)
