"""Reading a registered model's audit log and its anchors through the ports.

The readers (:mod:`mlflow_approvals.verify`, :mod:`mlflow_approvals.export`,
:mod:`mlflow_approvals.reconcile`) share this one way of reading: the versions' fact tags (the
anchors) and the event files, read so that live writers do not show up as tampering.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mlflow_approvals import tags as T

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from mlflow_approvals.ports import Ports

__all__ = ["collect_anchors", "read_log", "require_model"]


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
        facts = T.VersionFacts(name, v, mv.tags or {})
        for rid, record in facts.requests.items():
            add(record.event, v, T.request_key(rid))
            for s in facts.signoffs.get(rid, ()):
                add(s.event, v, T.signoff_key(rid, s.actor))
            for key, ending in (
                (T.cancel_key(rid), facts.cancelled.get(rid)),
                (T.applied_key(rid), facts.applied.get(rid)),
                (T.expired_key(rid), facts.expired.get(rid)),
                (T.breakglass_key(rid), facts.emergency.get(rid)),
            ):
                add(ending.event if ending else None, v, key)
    return anchors


def read_log(
    ports: Ports, name: str
) -> tuple[list[tuple[str, bytes]], dict[str, set[str]], list[ModelVersion]]:
    """The log's files, the anchors, and the versions, read so that live writers do not show
    up as tampering.

    Every step writes its event before its fact, so the tags are read first: each anchor seen
    then already has its event in the log read next. The tags are read again afterwards, and
    the new anchors whose events were downloaded are added, so steps that finished meanwhile
    are not reported as unanchored.
    """
    versions = ports.registry.versions_of(name)
    anchors = collect_anchors(name, versions)
    with tempfile.TemporaryDirectory(prefix="mlflow-approvals-audit-") as tmp:
        files = ports.audit.read(name, tmp)
    if not versions and not files:
        require_model(ports, name)
    present = {hashlib.sha256(raw).hexdigest() for _, raw in files}
    later = ports.registry.versions_of(name)
    for h, where in collect_anchors(name, later).items():
        if h in present or h in anchors:
            anchors.setdefault(h, set()).update(where)
    return files, anchors, later


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
