"""Reading a registered model's audit log and its anchors through the ports.

The readers (:mod:`mlflow_approvals.verify`, :mod:`mlflow_approvals.export`,
:mod:`mlflow_approvals.reconcile`) share this one way of reading: the versions' fact tags (the
anchors), the event files and the recorded deletions (tags of the audit run), read so that live
writers do not show up as tampering.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlflow_approvals import tags as T
from mlflow_approvals.segments import check_segments

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from mlflow_approvals.ports import Ports

__all__ = ["AuditLog", "collect_anchors", "read_log", "require_model"]


def collect_anchors(name: str, versions: Iterable[ModelVersion]) -> dict[str, set[str]]:
    """The anchor hashes held in the fact tags of ``versions``: hash -> {"v<version>:<key>"}.

    Only facts of requests filed on that very version count (``copy_model_version`` copies
    tags, and a copied fact anchors nothing of this model).
    """
    anchors: dict[str, set[str]] = {}

    def add(h: str | None, version: str, key: str) -> None:
        if h:
            anchors.setdefault(h, set()).add(f"v{version}:{key}")

    for mv in versions:
        v = str(mv.version)
        for key, h in T.VersionFacts(name, v, mv.tags or {}).anchored():
            add(h, v, key)
    return anchors


@dataclass(frozen=True)
class AuditLog:
    """What :func:`read_log` read: the event files and everything that anchors them."""

    files: list[tuple[str, bytes]]
    """Every event, as (artifact path, bytes) pairs: the loose files and the events of the
    sealed segments, each once."""
    anchors: dict[str, set[str]]
    """hash -> {"v<version>:<fact key>"}: the hashes the versions' fact tags hold, and the
    recorded abandonments (``v<version>:mlflow_approvals.abandoned.*`` tags of the audit run)."""
    versions: list[ModelVersion]
    """The model's versions as read last (the registry now)."""
    live_versions: frozenset[str]
    """The versions that existed while the log was read (in either read of the tags)."""
    deletions: dict[str | None, set[str]]
    """version (None: the model) -> the hashes of the events recording its deletion, from the
    audit run's ``mlflow_approvals.deleted.*`` tags."""
    loose: list[tuple[str, bytes]] = field(default_factory=list)
    """The loose event files read (those no intact, anchored segment holds)."""
    segments: list[tuple[str, bytes]] = field(default_factory=list)
    """The segment files, as (artifact path, bytes) pairs (:mod:`mlflow_approvals.segments`)."""
    sealed: dict[str, set[str]] = field(default_factory=dict)
    """Segment hash -> where it is anchored (the ``mlflow_approvals.sealed.*`` run tags)."""


def read_log(ports: Ports, name: str) -> AuditLog:
    """The log's files, the anchors, the versions and the recorded deletions, read so that
    live writers do not show up as tampering.

    Every step writes its event before its fact, so the tags are read first: each anchor seen
    then already has its event in the log read next. The tags are read again afterwards, and
    the new anchors whose events were downloaded are added, so steps that finished meanwhile
    are not reported as unanchored. A deletion writes its event, then its anchor (a tag of the
    audit run), then deletes: the deletion anchors are read last, so a version found deleted
    has its anchor read. A version that existed at the first read may have been deleted after
    the files were read; its anchor is then dropped when its event was not among them, and the
    version counts as live (its own fact tags, read first, anchor its events).
    """
    first = ports.registry.versions_of(name)
    anchors = collect_anchors(name, first)
    # Abandonments (reconcile writes the event, then its audit-run tag): read before the files.
    for h, where in ports.audit.abandonment_anchors(name).items():
        anchors.setdefault(h, set()).update(where)
    with tempfile.TemporaryDirectory(prefix="mlflow-approvals-audit-") as tmp:
        stored = ports.audit.load(name, tmp)
    files = check_segments(stored.loose, stored.segments, stored.sealed).files
    if not first and not files:
        require_model(ports, name)
    present = {hashlib.sha256(raw).hexdigest() for _, raw in files}
    later = ports.registry.versions_of(name)
    for h, where in collect_anchors(name, later).items():
        if h in present or h in anchors:
            anchors.setdefault(h, set()).update(where)
    before = {str(mv.version) for mv in first}
    deletions: dict[str | None, set[str]] = {}
    for version, digests in ports.audit.deletion_anchors(name).items():
        existed = bool(before) if version is None else version in before
        kept = {d for d in digests if d in present or not existed}
        if kept:
            deletions[version] = kept
    live = frozenset(before | {str(mv.version) for mv in later})
    return AuditLog(
        files, anchors, later, live, deletions, stored.loose, stored.segments, stored.sealed
    )


def require_model(ports: Ports, name: str) -> None:
    """Raise ModelVersionNotFound when ``name`` is not a registered model (it has no log either:
    a deleted model's log is still verified)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    from mlflow_approvals.errors import ModelVersionNotFound

    try:
        ports.registry.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        raise ModelVersionNotFound(
            f"registered model '{name}' does not exist and has no audit log: check the name"
        ) from None
