"""MLflow's artifact repository for a location, resolved against one tracking server.

MlflowClient's own artifact calls resolve an ``mlflow-artifacts:`` location against the
client's tracking URI on MLflow 3, but against the process-wide tracking URI
(``MLFLOW_TRACKING_URI``) on MLflow 2.x: there ``MlflowClient("http://host").log_text(...)``
fails unless that variable names the same server. The audit log and the evidence reader go
through :func:`repository` so that the tracking URI they were given is the one used, on every
MLflow the package supports. Nothing else of the package is imported here.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from typing import Any
from urllib.parse import urlparse

__all__ = ["log_text", "repository", "run_repository"]


def repository(uri: str, tracking_uri: str | None) -> Any:
    """MLflow's artifact repository for the storage location ``uri``."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if tracking_uri is None:
        return get_artifact_repository(uri)
    if "tracking_uri" in inspect.signature(get_artifact_repository).parameters:
        return get_artifact_repository(uri, tracking_uri=tracking_uri)
    # Older MLflow takes no tracking URI: resolve mlflow-artifacts: against ours first.
    if urlparse(uri).scheme == "mlflow-artifacts":
        from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

        proxied: Any = MlflowArtifactsRepository  # its methods carry no annotations
        uri = proxied.resolve_uri(uri, tracking_uri)
    return get_artifact_repository(uri)


def run_repository(client: Any, run_id: str) -> Any:
    """The artifact repository of a run, through ``client``'s tracking server (one ``get_run``)."""
    uri = str(client.get_run(run_id).info.artifact_uri)
    return repository(uri, str(client.tracking_uri))


def log_text(repo: Any, text: str, artifact_file: str) -> None:
    """Write ``text`` as the artifact ``artifact_file`` (a path with ``/``) of ``repo``."""
    folder, _, filename = artifact_file.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, filename)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        repo.log_artifact(path, folder or None)
