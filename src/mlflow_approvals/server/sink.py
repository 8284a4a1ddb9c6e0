"""The audit log's artifact sink inside the ``mlflow server`` worker process.

``AuditStore`` (``mlflow_approvals.audit``) writes the audit trail through an ``MlflowClient``.
Inside the ``approvals`` server app that client cannot be an ordinary one:

* an HTTP client pointed at the server would make the worker call itself (a request waiting on
  another request of the same worker pool, and a second round trip for every event);
* a direct ``MlflowClient(tracking_uri=<backend store URI>)`` talks to the database, but run
  artifact URIs under ``mlflow server --serve-artifacts`` (the default) are
  ``mlflow-artifacts:/<experiment>/<run>/artifacts``, which only an HTTP client can resolve:
  in process, MLflow refuses them ("the tracking URI must be a valid http or https URI").
  (MLflow 3.17.2 gives such a client the server's default artifact root, read from the variable
  ``mlflow server`` exports; where that is not done, its experiments would land in ``./mlruns``
  under the worker's working directory.)

:class:`ServerTracking` is the small ``MlflowClient``-shaped object that ``AuditStore`` needs,
built on the server's own stores instead: ``mlflow.server.handlers._get_tracking_store()`` (the
store the request handlers use, which knows the server's default artifact root), and for
artifacts of runs under ``mlflow-artifacts:`` the ``--artifacts-destination`` repository
(``_get_artifact_repo_mlflow_artifacts()``), addressed the way the server's own proxy handlers
address it. Other artifact URIs (``s3://``, a local folder, ...) get their ordinary repository.

:class:`ServerAuditStore` is the ``AuditStore`` to use there: it lets the server's default
artifact root decide where the audit experiment lives (the base class would put it beside a
``sqlite:///`` database file, a path that clients of the server cannot read), and it reads a
run's events in place when the destination is a local folder.

:func:`server_model_files` gives a model version's files (``mlflow_approvals.evidence``) the
same way: its ``mlflow-artifacts:`` location, or its run's or logged model's, on the
``--artifacts-destination`` repository, read in place when that is a local folder.

Nothing here imports MLflow when the module is imported.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlparse

from mlflow_approvals.audit import AuditStore

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Experiment, Run
    from mlflow.store.entities.paged_list import PagedList
    from mlflow.store.tracking.abstract_store import AbstractStore

    from mlflow_approvals.evidence import ArtifactFiles

__all__ = ["ServerAuditStore", "ServerTracking", "server_audit_store", "server_model_files"]

PROXIED_SCHEME = "mlflow-artifacts"


def _invalid(message: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _check_relative(path: str, what: str) -> str:
    """``path`` when it is a relative POSIX path with no ``..`` segment; raises otherwise."""
    for candidate in (path, unquote(path)):
        if candidate.startswith("/") or ".." in candidate.split("/"):
            raise _invalid(f"Invalid {what} {path!r}: it must be relative and contain no '..'.")
    return path


def _join(*parts: str | None) -> str | None:
    """The POSIX join of the non-empty ``parts`` (``None`` when there are none)."""
    kept = [p.strip("/") for p in parts if p and p.strip("/")]
    return posixpath.join(*kept) if kept else None


def _proxied_path(uri: str) -> str:
    """The path inside the ``--artifacts-destination`` repository that ``uri`` names.

    ``mlflow-artifacts:/<path>`` and ``mlflow-artifacts://<host>/<path>`` both map to ``<path>``
    (as in ``mlflow.server.handlers._get_proxied_run_artifact_destination_path``). A path with a
    ``..`` segment is refused: MLflow's handler does not check it, and a repository that is not a
    local folder (S3, ...) would not either.
    """
    return _check_relative(urlparse(uri).path.lstrip("/"), "mlflow-artifacts location")


class ServerTracking:
    """The part of ``MlflowClient`` that ``AuditStore`` uses, on the server's own stores.

    Create it inside an ``mlflow server`` worker (or wherever the variables ``mlflow server``
    exports to its workers are set). The stores are looked up on every call, so it holds no
    connection of its own; it only remembers each run's artifact URI, which never changes.
    """

    def __init__(self) -> None:
        self._artifact_uris: dict[str, str] = {}

    # -- stores ----------------------------------------------------------------------------
    @property
    def tracking_uri(self) -> str:
        """The server's backend store URI (what ``mlflow server --backend-store-uri`` named)."""
        # Spelled as MLflow's handlers import it (mlflow.server re-exports it without `__all__`).
        from mlflow.server import BACKEND_STORE_URI_ENV_VAR  # type: ignore[attr-defined]

        if uri := os.environ.get(BACKEND_STORE_URI_ENV_VAR):
            return uri
        from mlflow.tracking._tracking_service.utils import get_tracking_uri

        return get_tracking_uri()  # what _get_tracking_store() falls back to

    @property
    def store(self) -> AbstractStore:
        """The server's tracking store (created on first use by MLflow's request handlers)."""
        from mlflow.server import handlers

        return handlers._get_tracking_store()

    def _store(self) -> Any:  # MLflow's store methods carry no annotations
        return self.store

    # -- experiments and runs --------------------------------------------------------------
    def get_experiment_by_name(self, name: str) -> Experiment | None:
        """The active or deleted experiment called ``name``, or None."""
        experiment: Experiment | None = self._store().get_experiment_by_name(name)
        return experiment

    def create_experiment(
        self,
        name: str,
        artifact_location: str | None = None,
        tags: dict[str, Any] | None = None,
    ) -> str:
        """Create an experiment; ``artifact_location=None`` lets the server's default root apply."""
        from mlflow.entities import ExperimentTag

        if artifact_location is not None and artifact_location.startswith("runs:"):
            raise _invalid(
                f"Artifact location cannot be a runs:/ URI. Given: {artifact_location!r}"
            )
        experiment_tags = [ExperimentTag(k, v) for k, v in (tags or {}).items()]
        return str(self._store().create_experiment(name, artifact_location, experiment_tags))

    def create_run(
        self,
        experiment_id: str,
        start_time: int | None = None,
        tags: dict[str, Any] | None = None,
        run_name: str | None = None,
    ) -> Run:
        """Create a run (``user_id`` from the ``mlflow.user`` tag, as ``MlflowClient`` does)."""
        from mlflow.entities import RunTag
        from mlflow.utils.mlflow_tags import MLFLOW_USER

        tags = tags or {}
        run: Run = self._store().create_run(
            experiment_id=experiment_id,
            user_id=tags.get(MLFLOW_USER, "unknown"),
            start_time=start_time or int(time.time() * 1000),
            tags=[RunTag(k, v) for k, v in tags.items()],
            run_name=run_name,
        )
        self._artifact_uris[run.info.run_id] = run.info.artifact_uri
        return run

    def search_runs(
        self,
        experiment_ids: list[str] | str,
        filter_string: str = "",
        run_view_type: int | None = None,
        max_results: int | None = None,
        order_by: list[str] | None = None,
        page_token: str | None = None,
    ) -> PagedList[Run]:
        """Search runs; ``None`` means MLflow's defaults (active runs only, 1000 results)."""
        from mlflow.entities import ViewType
        from mlflow.store.tracking import SEARCH_MAX_RESULTS_DEFAULT

        ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids)
        found: PagedList[Run] = self._store().search_runs(
            experiment_ids=ids,
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY if run_view_type is None else run_view_type,
            max_results=SEARCH_MAX_RESULTS_DEFAULT if max_results is None else max_results,
            order_by=order_by,
            page_token=page_token,
        )
        return found

    def get_run(self, run_id: str) -> Run:
        """The run ``run_id`` (raises ``MlflowException`` RESOURCE_DOES_NOT_EXIST when absent)."""
        run: Run = self._store().get_run(run_id)
        self._artifact_uris[run_id] = run.info.artifact_uri
        return run

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        """Set a tag on a run, straight in the tracking store (not through the HTTP routes the
        gate guards: it refuses tag writes to the audit run there)."""
        from mlflow.entities import RunTag

        self._store().set_tag(run_id, RunTag(key, str(value)))

    # -- artifacts ---------------------------------------------------------------------------
    def artifact_uri(self, run_id: str) -> str:
        """The run's artifact root URI (remembered after the first look-up)."""
        uri = self._artifact_uris.get(run_id)
        if uri is None:
            uri = str(self.get_run(run_id).info.artifact_uri)
        return uri

    def _locate(self, run_id: str) -> tuple[Any, str | None]:
        """The repository holding the run's artifacts and the run's root inside it.

        The root is ``None`` when the repository is rooted at the run itself.
        """
        uri = self.artifact_uri(run_id)
        if urlparse(uri).scheme != PROXIED_SCHEME:
            from mlflow.store.artifact.artifact_repository_registry import (
                get_artifact_repository,
            )

            return get_artifact_repository(uri), None
        return _destination(
            uri,
            f"run {run_id} keeps its artifacts at {uri}, but this process has no "
            "--artifacts-destination (is it an `mlflow server` worker?)",
        )

    def local_artifact_dir(self, run_id: str) -> Path | None:
        """The run's artifact root as a local folder, when its repository is one, else None."""
        from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

        repo, root = self._locate(run_id)
        if not isinstance(repo, LocalArtifactRepository):
            return None
        base = Path(os.path.abspath(repo.artifact_dir))
        return base.joinpath(*root.split("/")) if root else base

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Write ``text`` (UTF-8) to the run-relative path ``artifact_file``."""
        _check_relative(artifact_file, "artifact path")
        head, tail = posixpath.split(artifact_file)
        if not tail:
            raise _invalid(f"Invalid artifact path {artifact_file!r}: it names no file.")
        repo, root = self._locate(run_id)
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, tail)
            with open(local, "w", encoding="utf-8") as f:
                f.write(text)
            repo.log_artifact(local, _join(root, head))


class ServerAuditStore(AuditStore):
    """The ``AuditStore`` of the server app: the server decides where the log lives.

    Unlike the base class it never places the audit experiment beside a ``sqlite:///`` database
    (a path on the server host that the server's clients cannot read); the server's default
    artifact root applies (``mlflow-artifacts:/`` when it proxies artifacts), unless
    MLFLOW_APPROVALS_AUDIT_ARTIFACT_LOCATION or ``artifact_location`` says otherwise. Events of a
    run whose artifacts are on a local folder, including an ``mlflow-artifacts:`` run on a local
    ``--artifacts-destination``, are read in place instead of downloaded.
    """

    def __init__(
        self,
        tracking: ServerTracking | None = None,
        experiment_name: str | None = None,
        artifact_location: str | None = None,
    ) -> None:
        self._server = tracking if tracking is not None else ServerTracking()
        # AuditStore is annotated with MlflowClient but uses only what ServerTracking provides.
        client = cast("MlflowClient", self._server)
        super().__init__(client, experiment_name, artifact_location)

    @property
    def server_tracking(self) -> ServerTracking:
        """The :class:`ServerTracking` the log is written through."""
        return self._server

    def _default_location(self) -> str | None:
        return None  # the server's default artifact root applies

    def _local_root(self, run_id: str, artifact_uri: str) -> Path | None:
        return self._server.local_artifact_dir(run_id)

    def _write_text(self, run_id: str, text: str, path: str) -> None:
        self._server.log_text(run_id, text, path)  # straight to the server's own destination

    def _repository(self, run_id: str, artifact_uri: str) -> Any:
        from mlflow_approvals.audit import _RepoListing

        return _RepoListing(*self._server._locate(run_id))


def server_audit_store() -> ServerAuditStore:
    """The audit store for code running inside an ``mlflow server`` worker.

    Keep one per worker process where you can: it remembers the audit experiment and each
    model's audit run, which saves a look-up per event.
    """
    return ServerAuditStore(ServerTracking())


class _ServerLookups:
    """What resolving a ``runs:/`` or ``models:/`` URI asks, answered by the server's stores."""

    def __init__(self) -> None:
        self._tracking = ServerTracking()

    @staticmethod
    def _registry() -> Any:  # MLflow's store methods carry no annotations
        from mlflow.server import handlers

        return handlers._get_model_registry_store()

    def get_run(self, run_id: str) -> Run:
        return self._tracking.get_run(run_id)

    def get_logged_model(self, model_id: str) -> Any:
        return self._tracking._store().get_logged_model(model_id)

    def search_logged_models(self, **kwargs: Any) -> Any:
        store = self._tracking._store()
        if not hasattr(store, "search_logged_models"):  # MLflow 2: no logged models
            return []
        return store.search_logged_models(**kwargs)

    def get_model_version_download_uri(self, name: str, version: str) -> str:
        return str(self._registry().get_model_version_download_uri(name, version))

    def get_model_version_by_alias(self, name: str, alias: str) -> Any:
        return self._registry().get_model_version_by_alias(name, alias)


def _server_files_at(uri: str) -> ArtifactFiles:
    """The files at a storage location; ``mlflow-artifacts:`` ones on the server's destination."""
    from mlflow_approvals.evidence import ArtifactFiles

    if urlparse(uri).scheme != PROXIED_SCHEME:
        return ArtifactFiles.from_uri(uri)
    repo, root = _destination(
        uri,
        f"{uri} is on the server's --artifacts-destination, but this process has none "
        "(is it an `mlflow server` worker?)",
    )
    return ArtifactFiles(repo, root or "")


def _destination(uri: str, missing: str) -> tuple[Any, str | None]:
    """The ``--artifacts-destination`` repository and the root in it of an ``mlflow-artifacts:``
    URI, as MLflow's proxy handlers resolve it; ``missing`` is the error when there is none."""
    from mlflow.server import handlers as _handlers

    handlers: Any = _handlers  # its helpers carry no annotations
    root: str | None = _proxied_path(uri)
    # With --enable-workspaces the proxy handlers keep each workspace under
    # `workspaces/<name>/`; the helper is a no-op otherwise (and absent from older MLflow).
    scope = getattr(handlers, "_get_workspace_scoped_repo_path_if_enabled", None)
    if scope is not None:
        root = scope(root)
    try:
        repo = handlers._get_artifact_repo_mlflow_artifacts()
    except KeyError as exc:  # the variable `mlflow server` sets is missing
        raise _invalid(missing) from exc
    return repo, root or None


def server_model_files(download_uri: str) -> ArtifactFiles:
    """The files of a model version, read through this server's own stores, in process.

    ``download_uri`` is what the registry reports for the version
    (``get_model_version_download_uri``): an ``mlflow-artifacts:`` location is mapped onto the
    ``--artifacts-destination`` repository (read in place when it is a local folder); a
    ``runs:/`` or ``models:/`` URI is looked up in the server's tracking and registry stores
    first; any other location (``s3://``, a local folder, ...) gets its ordinary repository
    (:meth:`ArtifactFiles.from_uri`). Call it inside an ``mlflow server`` worker, where an HTTP
    client would make the worker call itself.
    """
    from mlflow_approvals.evidence import resolve_model_files

    return resolve_model_files(download_uri, _ServerLookups(), _server_files_at)
