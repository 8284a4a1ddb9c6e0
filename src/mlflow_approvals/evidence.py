"""Evidence: the exact bytes of a model version, reduced to one digest a sign-off can carry.

A sign-off approves *these* model files. :func:`collect` reads every file of a model version's
artifacts, hashes each (SHA-256, streamed in 1 MiB chunks), and hashes the resulting manifest
together with the version's ``source`` and ``run_id`` into one digest::

    from mlflow import MlflowClient
    from mlflow_approvals.evidence import ArtifactFiles, collect

    client = MlflowClient(uri)
    mv = client.get_model_version("fraud-model", "3")
    files = ArtifactFiles.from_uri(client.get_model_version_download_uri(mv.name, mv.version), uri)
    evidence = collect(files, mv.source, mv.run_id)
    evidence.digest  # "sha256:..." changes when any byte, file, source or run id changes

The files are read through MLflow's artifact repositories (:class:`ArtifactFiles`): in place
when the repository is a local folder, otherwise one file at a time, downloaded into a temporary
folder and deleted once hashed, so neither memory nor disk ever holds a whole model.

What a version's download URI looks like (``MlflowClient.get_model_version_download_uri``,
measured with MLflow 3.17), and what :meth:`ArtifactFiles.from_uri` does with it:

* ``runs:/<run id>/<path>`` when the version was created from that URI with
  ``MlflowClient.create_model_version`` (the registry keeps it as given, on ``sqlite:///`` and
  through a server alike): the run's artifacts under ``<path>``. In MLflow 3 a model logged with
  ``log_model(name=...)`` lives outside the run's artifacts, as a *logged model*; when the run
  has no files under ``<path>`` and one of its logged models is named ``<path>``, its files are
  the model's (as MLflow's own download does). A run with files under ``<path>`` *and* a logged
  model of that name is refused: MLflow would download both, merged.
* a storage location (a local folder on ``sqlite:///`` registries,
  ``mlflow-artifacts:/<experiment>/models/<model id>/artifacts`` on a server with
  ``--serve-artifacts``) for a version made from a logged model (``models:/m-...``) or through
  ``mlflow.register_model``: the registry resolves those when the version is created.
* ``models:/<model id>``, ``models:/<name>/<version>`` and ``models:/<name>@<alias>`` are
  resolved too (they are never a download URI, but are what people hold).

Inside an ``mlflow server`` worker, use ``mlflow_approvals.server.sink.server_model_files``
instead: it reads ``mlflow-artifacts:`` locations straight from the server's
``--artifacts-destination``.

Nothing here imports MLflow when the module is imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlparse

import rfc8785

from mlflow_approvals.artifacts import repository

__all__ = [
    "CHUNK",
    "ArtifactFiles",
    "Evidence",
    "collect",
    "digest_of",
    "manifest",
    "resolve_model_files",
]

CHUNK = 1 << 20
"""Bytes read at a time when hashing a file (1 MiB)."""

_PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_INDIRECT = ("runs", "models")  # URI schemes that name a model rather than a storage location
_MAX_HOPS = 4  # models:/name/1 -> runs:/... -> storage: a few hops at most, never a loop


def _invalid(message: str) -> Exception:
    from mlflow_approvals.errors import InvalidRequest

    return InvalidRequest(message)


def _relative(path: str) -> str:
    """``path`` as a clean relative POSIX path; raises when absolute or with a ``..`` segment."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if path.startswith("/") or ".." in parts or not parts:
        raise _invalid(f"Invalid artifact path {path!r}: name a file, relative, with no '..'.")
    return "/".join(parts)


def _join(*parts: str) -> str:
    """The POSIX join of the non-empty ``parts`` ("" when there are none)."""
    kept = [p.strip("/") for p in parts if p.strip("/")]
    return posixpath.join(*kept) if kept else ""


class ArtifactFiles:
    """The files under ``root`` of an MLflow artifact repository: a model version's artifacts.

    ``repo`` is any ``mlflow.store.artifact.artifact_repo.ArtifactRepository``; ``root`` a
    folder inside it ("" for the repository's own root). Paths given to and returned by the
    methods are relative to ``root``, ``/``-separated.
    """

    def __init__(self, repo: Any, root: str = "") -> None:
        self.repo = repo
        self.root = root.strip("/")

    @classmethod
    def from_uri(cls, uri: str, tracking_uri: str | None = None) -> ArtifactFiles:
        """The files a model version's download URI (or any model or artifact URI) names.

        ``tracking_uri`` is the tracking server or database that ``runs:/`` and ``models:/``
        URIs are looked up in and that ``mlflow-artifacts:`` URIs are downloaded through; by
        default MLflow's current one. See the module's documentation for the URIs handled.
        """

        def files_at(location: str) -> ArtifactFiles:
            return cls(repository(location, tracking_uri))

        if urlparse(uri).scheme not in _INDIRECT:
            return files_at(uri)
        from mlflow import MlflowClient

        return resolve_model_files(uri, MlflowClient(tracking_uri), files_at)

    def __repr__(self) -> str:
        return f"ArtifactFiles({self.location!r})"

    @property
    def location(self) -> str:
        """The URI of ``root`` (for messages)."""
        base = str(getattr(self.repo, "artifact_uri", self.repo))
        return f"{base.rstrip('/')}/{self.root}" if self.root else base

    @property
    def local_dir(self) -> str | None:
        """``root`` as a local folder when the repository is one (files are read in place)."""
        from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

        if not isinstance(self.repo, LocalArtifactRepository):
            return None
        base = os.path.abspath(self.repo.artifact_dir)
        return os.path.join(base, *self.root.split("/")) if self.root else base

    # -- listing ---------------------------------------------------------------------------
    def _list(self, rel: str) -> list[tuple[str, bool]]:
        """(path relative to root, is_dir) of the entries directly under ``rel``."""
        # Repositories differ in what their listing's paths are relative to: keep the names.
        entries = self.repo.list_artifacts(_join(self.root, rel) or None)
        return [(_join(rel, posixpath.basename(e.path)), bool(e.is_dir)) for e in entries]

    def paths(self) -> list[str]:
        """Every file under ``root``, recursively: relative, ``/``-separated, sorted.

        Empty folders are not files and are not listed.
        """
        found: list[str] = []
        folders = [""]
        while folders:
            for path, is_dir in self._list(folders.pop()):
                (folders if is_dir else found).append(path)
        return sorted(found)

    def _is_file(self, path: str) -> bool:
        local = self.local_dir
        if local is not None:
            return os.path.isfile(os.path.join(local, *path.split("/")))
        return (path, False) in self._list(posixpath.dirname(path))

    # -- reading -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[IO[bytes]]:
        """The file ``path``, opened for binary reading, for the duration of the block.

        A local repository's file is read in place. Otherwise the one file is downloaded into a
        new temporary folder, which is deleted when the block ends. Raises when ``path`` is no
        file (``FileNotFoundError`` in place; MLflow's or the store's error otherwise).
        """
        rel = _relative(path)
        local = self.local_dir
        if local is not None:
            target = os.path.join(local, *rel.split("/"))
            with open(target, "rb") as f:
                yield f
            return
        folder = tempfile.mkdtemp(prefix="mlflow-approvals-evidence-")
        try:
            target = os.path.join(folder, posixpath.basename(rel))
            # The repository's one-file download (every repository implements it): the public
            # download_artifacts first lists the path to tell a file from a folder, one more
            # round trip per file.
            self.repo._download_file(_join(self.root, rel), target)
            with open(target, "rb") as f:
                yield f
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def read_text(self, path: str, limit: int = 1_000_000) -> str | None:
        """The UTF-8 text of the file ``path``; None when there is no such file.

        Raises ``InvalidRequest`` when the file is larger than ``limit`` bytes, and
        ``UnicodeDecodeError`` when it is not UTF-8.
        """
        rel = _relative(path)
        if not self._is_file(rel):
            return None
        with self.open(rel) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise _invalid(f"{rel} in {self.location} is larger than {limit:,} bytes.")
        return data.decode("utf-8")


# -- resolving runs:/ and models:/ URIs ------------------------------------------------------
def resolve_model_files(
    uri: str, lookup: Any, files_at: Callable[[str], ArtifactFiles], *, _hops: int = 0
) -> ArtifactFiles:
    """The files a ``runs:/``, ``models:/`` or storage URI names.

    ``lookup`` answers the questions (an ``MlflowClient``, or anything with its methods
    ``get_run``, ``get_logged_model``, ``search_logged_models``,
    ``get_model_version_download_uri`` and ``get_model_version_by_alias``); ``files_at`` turns
    a storage location into :class:`ArtifactFiles`. Used by :meth:`ArtifactFiles.from_uri` and,
    with the server's own stores, by ``server_model_files``.
    """
    if _hops > _MAX_HOPS:
        raise _invalid(f"{uri}: too many indirections (runs:/ and models:/ URIs) to resolve.")
    scheme = urlparse(uri).scheme
    if scheme == "runs":
        return _run_files(uri, lookup, files_at)
    if scheme == "models":
        return resolve_model_files(_models_location(uri, lookup), lookup, files_at, _hops=_hops + 1)
    return files_at(uri)


def _run_files(uri: str, lookup: Any, files_at: Callable[[str], ArtifactFiles]) -> ArtifactFiles:
    """The files of ``runs:/<run id>/<path>``: the run's, else its logged model called <path>."""
    from mlflow.utils import uri as _uri_utils

    uri_utils: Any = _uri_utils  # its helpers carry no annotations
    parsed = urlparse(uri)
    run_id, _, path = parsed.path.lstrip("/").partition("/")
    if not run_id:
        raise _invalid(f"Not a runs:/ URI: {uri!r} (expected runs:/<run id>/<path>).")
    path = path.strip("/")
    run = lookup.get_run(run_id)
    base = str(run.info.artifact_uri)
    files = files_at(uri_utils.append_to_uri_path(base, path) if path else base)
    model = _run_logged_model(lookup, run, path)
    if model is None:
        return files
    if files._list(""):
        raise _invalid(
            f"{uri} is ambiguous: run {run_id} has files under {path!r} and a logged model "
            f"{model.model_id} named {path!r}, which MLflow downloads merged. Register the "
            f"version from models:/{model.model_id} or from {files.location}."
        )
    return files_at(str(model.artifact_location))


def _run_logged_model(lookup: Any, run: Any, name: str) -> Any:
    """The run's first logged model called ``name`` (MLflow 3), as MLflow's download finds it."""
    search = getattr(lookup, "search_logged_models", None)
    if search is None or not name or "/" in name or "'" in name:
        return None
    run_id = run.info.run_id
    token: str | None = None
    while True:
        page = search(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"name = '{name}'",
            page_token=token,
        )
        for model in page:
            if model.source_run_id == run_id:
                return model
        token = getattr(page, "token", None)
        if not token:
            return None


def _models_location(uri: str, lookup: Any) -> str:
    """The location a ``models:/`` URI names: a logged model's, or a version's download URI."""
    parts = urlparse(uri).path.strip("/").split("/")
    if len(parts) == 1 and parts[0] and "@" not in parts[0]:
        return str(lookup.get_logged_model(parts[0]).artifact_location)
    if len(parts) == 2 and parts[0] and parts[1].isdigit():
        return str(lookup.get_model_version_download_uri(parts[0], parts[1]))
    if len(parts) == 1 and "@" in parts[0]:
        name, _, alias = parts[0].rpartition("@")
        if name and alias:
            version = lookup.get_model_version_by_alias(name, alias).version
            return str(lookup.get_model_version_download_uri(name, str(version)))
    raise _invalid(
        f"{uri!r} does not name one model: use models:/<model id>, models:/<name>/<version> or "
        "models:/<name>@<alias> (a stage or 'latest' moves, and evidence must not)."
    )


# -- hashing ---------------------------------------------------------------------------------
def _sha256(f: IO[bytes]) -> str:
    h = hashlib.sha256()
    while chunk := f.read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


def manifest(files: ArtifactFiles) -> dict[str, str]:
    """Every file's path mapped to the SHA-256 (hex) of its bytes, read in 1 MiB chunks."""
    result: dict[str, str] = {}
    for path in files.paths():
        with files.open(path) as f:
            result[path] = _sha256(f)
    return result


def digest_of(files: Mapping[str, str], source: str | None, run_id: str | None) -> str:
    """``sha256:`` and the SHA-256 of the RFC 8785 JSON of {files, source, run_id}."""
    body = {"files": dict(files), "source": source, "run_id": run_id}
    return _PREFIX + hashlib.sha256(rfc8785.dumps(body)).hexdigest()


@dataclass(frozen=True)
class Evidence:
    """What a sign-off is bound to: the model's files, its source and its run, in one digest."""

    digest: str
    """``sha256:<hex>``, the hash of the other three fields (:func:`digest_of`)."""
    manifest: dict[str, str]
    """Each file's path (relative, ``/``-separated) mapped to the SHA-256 (hex) of its bytes."""
    source: str | None
    """The model version's ``source``."""
    run_id: str | None
    """The model version's ``run_id``."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (read back with :meth:`from_dict`)."""
        return {
            "digest": self.digest,
            "manifest": dict(sorted(self.manifest.items())),
            "source": self.source,
            "run_id": self.run_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evidence:
        """The evidence ``data`` holds; raises ``ValueError`` when malformed or when its digest
        is not the hash of its contents."""
        if not isinstance(data, Mapping) or set(data) != {"digest", "manifest", "source", "run_id"}:
            raise ValueError("evidence must have exactly: digest, manifest, source, run_id")
        files = data["manifest"]
        if not isinstance(files, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and _HEX64.fullmatch(v)
            for k, v in files.items()
        ):
            raise ValueError("evidence manifest must map paths to SHA-256 hex digests")
        for key in ("source", "run_id"):
            if data[key] is not None and not isinstance(data[key], str):
                raise ValueError(f"evidence {key} must be a string or null")
        digest = data["digest"]
        expected = digest_of(files, data["source"], data["run_id"])
        if digest != expected:
            raise ValueError(f"evidence digest {digest!r} is not the hash of its contents")
        return cls(expected, dict(files), data["source"], data["run_id"])


def collect(files: ArtifactFiles, source: str | None, run_id: str | None) -> Evidence:
    """Hash every file of ``files`` and bind the manifest to ``source`` and ``run_id``.

    Raises ``InvalidRequest`` when there are no files: evidence of nothing would be a wrong URI
    signed off.
    """
    found = manifest(files)
    if not found:
        raise _invalid(f"No files at {files.location}: nothing to bind a sign-off to.")
    return Evidence(digest_of(found, source, run_id), found, source, run_id)
