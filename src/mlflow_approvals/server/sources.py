"""The server's :class:`~mlflow_approvals.ports.EvidenceSource`: a version's run and model files
read in process, from the server's own tracking store and artifact destination (never through
its HTTP routes, which would make a worker call itself)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from mlflow_approvals.server.sink import ServerTracking

__all__ = ["ServerEvidence"]


class ServerEvidence:
    """Runs from the server's tracking store; model files from its artifact storage."""

    def __init__(self, tracking: ServerTracking, registry_store: Callable[[], Any]) -> None:
        self.tracking = tracking
        self.registry_store = registry_store

    def run(self, run_id: str) -> Any | None:
        from mlflow_approvals.assess import run_or_none

        return run_or_none(self.tracking.get_run, run_id)

    def files(self, mv: ModelVersion) -> Any:
        from mlflow_approvals.server.sink import server_model_files

        uri = self.registry_store().get_model_version_download_uri(mv.name, str(mv.version))
        return server_model_files(str(uri))
