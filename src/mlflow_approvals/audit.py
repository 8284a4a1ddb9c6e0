"""Audit events, their canonical hashing, and the artifact store that keeps them.

An audit event is a CloudEvents 1.0 document (structured mode) whose ``data`` holds what
21 CFR Part 11 §11.10(e)/§11.50 and EU GMP Annex 11 §9 ask of an audit trail: who (id and
printed name), what it meant, why (the comment), the values before and after, when, and which
policy rule applied. Its hash is the SHA-256 of its RFC 8785 canonical JSON.

Layout: one run per registered model in the audit experiment (``mlflow-approvals-audit``), one
artifact file per event, named ``events/v<version>/<time>-<sha256>.json`` (events about the
model as a whole go under ``events/model/``). Files are never rewritten: a second write of the
same event writes the same bytes to the same name. See docs/audit.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import rfc8785

from mlflow_approvals.artifacts import log_text, repository, run_repository
from mlflow_approvals.lifecycle import utcnow

if TYPE_CHECKING:
    from mlflow import MlflowClient

SPECVERSION = "1.0"
TYPE_PREFIX = "org.mlflow-approvals."
EXPERIMENT_ENV = "MLFLOW_APPROVALS_AUDIT_EXPERIMENT"
LOCATION_ENV = "MLFLOW_APPROVALS_AUDIT_ARTIFACT_LOCATION"
DEFAULT_EXPERIMENT = "mlflow-approvals-audit"
MODEL_TAG = "mlflow_approvals.audit.model"
_NAMESPACE = uuid.UUID("6f1c0a52-64a1-4f0e-9a1e-2d6b7c1e5a10")

# The kinds of event, and the meaning of the signature each one carries.
EVENT_TYPES: dict[str, str] = {
    "request.created": "request",
    "signoff.approved": "approval",
    "signoff.rejected": "rejection",
    "request.cancelled": "cancellation",
    "request.expired": "expiry",
    "request.superseded": "supersession",
    "request.invalidated": "invalidation",
    "checks.failed": "failed checks",
    "notification.failed": "failed notification",
    "stage.transitioned": "application",
    "version.archived": "application",
    "alias.set": "application",
    "alias.deleted": "application",
    "breakglass.reviewed": "retrospective review",
    "attempt.denied": "denied attempt",
    "change.detected": "change outside the gate",
    "registry.changed": "direct change",
    "access.changed": "user or permission change",
    "registry.unchanged": "direct change failed",
    "gate.bypassed": "change past the gate (report mode)",
    "intent.abandoned": "abandoned intent",
    "sagemaker.pending": "SageMaker package held for approval",
    "sagemaker.approved": "SageMaker package approval",
    "sagemaker.rejected": "SageMaker package rejection",
}


def canonical(event: Mapping[str, Any]) -> bytes:
    """The RFC 8785 canonical JSON bytes of an event."""
    return rfc8785.dumps(dict(event))


def event_hash(event: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the event's canonical JSON."""
    return hashlib.sha256(canonical(event)).hexdigest()


def deterministic_id(*parts: str) -> str:
    """A CloudEvents id derived from ``parts``: two deliveries of one event share it."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def _ts(t: datetime) -> str:
    """A fixed-width UTC time: microseconds always present, so the text sorts as the time does.

    ``isoformat()`` drops the fraction when it is zero, and "...:05Z" sorts after
    "...:05.3Z": an event stamped on a whole second would read as the newest of its second.
    """
    utc = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    return utc.isoformat(timespec="microseconds").replace("+00:00", "Z")


def make_event(
    *,
    type: str,
    name: str,
    version: str | None,
    actor: str,
    display_name: str | None = None,
    comment: str | None = None,
    before: Any = None,
    after: Any = None,
    request_id: str | None = None,
    policy_hash: str | None = None,
    rule: str | None = None,
    run_id: str | None = None,
    source: str | None = None,
    parents: Iterable[str] = (),
    event_id: str | None = None,
    time: datetime | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build one audit event (a structured-mode CloudEvent)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown audit event type {type!r}")
    data: dict[str, Any] = {
        "actor": {"id": actor, "display_name": display_name or actor},
        "meaning": EVENT_TYPES[type],
        "comment": comment,
        "before": before,
        "after": after,
        "request_id": request_id,
        "policy": {"hash": policy_hash, "rule": rule},
        "model": {"name": name, "version": version, "run_id": run_id, "source": source},
        "parents": sorted(set(parents)),
    }
    if extra:
        data.update(extra)
    return {
        "specversion": SPECVERSION,
        "id": event_id or str(uuid.uuid4()),
        "source": f"/mlflow-approvals/registered-models/{name}",
        "type": TYPE_PREFIX + type,
        "time": _ts(time or utcnow()),
        "subject": f"models:/{name}/{version}" if version is not None else f"models:/{name}",
        "datacontenttype": "application/json",
        "data": data,
    }


def event_path(event: Mapping[str, Any], digest: str) -> str:
    """The artifact path of an event: its folder (by version) and a name carrying its hash."""
    version = event["data"]["model"]["version"]
    folder = f"v{version}" if version is not None else "model"
    stamp = event["time"].replace("-", "").replace(":", "").replace(".", "")
    return f"events/{folder}/{stamp}-{digest}.json"


# The audit-run tags that anchor a recorded deletion (see AuditStore.anchor_deletion).
DELETED_TAG_PREFIX = "mlflow_approvals.deleted."
DELETED_MODEL_TAG = DELETED_TAG_PREFIX + "model"


def deletion_tag(version: str | None) -> str:
    """The audit-run tag anchoring the recorded deletion of ``version`` (None: the model)."""
    return DELETED_MODEL_TAG if version is None else f"{DELETED_TAG_PREFIX}v{version}"


# The audit-run tags that anchor a recorded abandonment (see AuditStore.anchor_abandonment).
ABANDONED_TAG_PREFIX = "mlflow_approvals.abandoned."


def abandonment_tag(version: str, orphan: str) -> str:
    """The audit-run tag anchoring the abandonment of event ``orphan`` of ``version``."""
    return f"{ABANDONED_TAG_PREFIX}v{version}.{orphan}"


class AuditStore:
    """Writes and reads the audit log of registered models as MLflow artifacts.

    ``tracking`` is a plain ``MlflowClient`` for the same tracking server. The audit experiment
    is created on first use. On a local ``sqlite:///`` registry its artifacts live beside the
    database file (``<db folder>/mlflow-approvals-audit``) rather than under the working
    directory, so every process writes the trail to one place; elsewhere the server decides,
    unless MLFLOW_APPROVALS_AUDIT_ARTIFACT_LOCATION says otherwise.
    """

    def __init__(
        self,
        tracking: MlflowClient,
        experiment_name: str | None = None,
        artifact_location: str | None = None,
    ) -> None:
        self._client = tracking
        self.experiment_name = (
            experiment_name or os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
        )
        self._artifact_location = artifact_location or os.environ.get(LOCATION_ENV)
        self._experiment_id: str | None = None
        self._runs: dict[str, list[str]] = {}
        self._repos: dict[str, Any] = {}  # run id -> its artifact repository
        self._lock = threading.Lock()

    @property
    def tracking(self) -> MlflowClient:
        """The tracking client the log is written through."""
        return self._client

    # -- where the log lives -------------------------------------------------------------
    def _default_location(self) -> str | None:
        uri = str(self._client.tracking_uri)
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///") :])
            return str((db.parent / "mlflow-approvals-audit").resolve())
        return None

    def experiment_id(self, create: bool = True) -> str | None:
        """The audit experiment's id (created when missing and ``create``)."""
        if self._experiment_id is not None:
            return self._experiment_id
        exp = self._client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            if not create:
                return None
            from mlflow.exceptions import MlflowException

            try:
                self._experiment_id = self._client.create_experiment(
                    self.experiment_name,
                    artifact_location=self._artifact_location or self._default_location(),
                    tags={"mlflow_approvals.audit": "true"},
                )
            except MlflowException:  # created meanwhile by another writer
                exp = self._client.get_experiment_by_name(self.experiment_name)
                if exp is None:
                    raise
                self._experiment_id = exp.experiment_id
        else:
            self._experiment_id = exp.experiment_id
        return self._experiment_id

    def run_ids(self, name: str, create: bool = True) -> list[str]:
        """The audit runs of model ``name``, oldest first (normally exactly one).

        Two writers creating the first run at once may both create one; events are then read
        from all of them, and new ones go to the oldest, so none is lost.
        """
        with self._lock:
            if self._runs.get(name):
                return self._runs[name]
            exp_id = self.experiment_id(create=create)
            if exp_id is None:
                return []
            runs = self._find_runs(exp_id, name)
            if not runs and create:
                run = self._client.create_run(
                    exp_id, run_name=f"audit-{name}"[:250], tags={MODEL_TAG: name}
                )
                runs = self._find_runs(exp_id, name) or [run.info.run_id]
            if runs:
                self._runs[name] = runs
            return runs

    def _find_runs(self, exp_id: str, name: str) -> list[str]:
        """The audit runs whose model tag is exactly ``name`` (the filter may select more)."""
        from mlflow_approvals.ports import search_filter, tag_field

        found: list[Any] = []
        token = None
        while True:
            page = self._client.search_runs(
                [exp_id],
                filter_string=search_filter({tag_field(MODEL_TAG): name}),
                order_by=["attributes.start_time ASC"],
                max_results=1000,
                page_token=token,
            )
            found += [r for r in page if r.data.tags.get(MODEL_TAG) == name]
            token = page.token
            if not token:
                break
        ordered = sorted(found, key=lambda r: (r.info.start_time, r.info.run_id))
        return [r.info.run_id for r in ordered]

    # -- writing ---------------------------------------------------------------------------
    def writer_run(self, name: str) -> str:
        """The audit run new events of model ``name`` go to (the oldest; created if none).

        Raises ``AuditUnavailable`` when the audit experiment or run cannot be reached.
        """
        try:
            return self.run_ids(name)[0]
        except Exception as exc:
            raise _unavailable(name, exc) from exc

    def append(self, event: Mapping[str, Any], run_id: str | None = None) -> str:
        """Write one event as its own artifact file; return its hash.

        ``run_id`` names the audit run when the caller already knows it (a request records its
        audit run, so each signer skips the look-up). Raises ``AuditUnavailable`` when the
        artifact store cannot be written: the caller must then not make the change the event
        records.
        """
        digest = event_hash(event)
        name = event["data"]["model"]["name"]
        try:
            run_id = run_id or self.writer_run(name)
            self._write_text(run_id, canonical(event).decode(), event_path(event, digest))
        except Exception as exc:
            if type(exc).__name__ == "AuditUnavailable":
                raise
            raise _unavailable(name, exc) from exc
        return digest

    def anchor_deletion(self, name: str, version: str | None, digest: str) -> None:
        """Anchor the recorded deletion of ``version`` of model ``name`` (None: the model).

        ``digest`` is the hash of the audit event that recorded the deletion, already written
        (its ``data.parents`` name the version's head hashes, so the deleted version's events
        stay anchored as its ancestors). It goes to a tag of the model's audit run,
        :func:`deletion_tag` (``mlflow_approvals.deleted.v<version>`` or
        ``mlflow_approvals.deleted.model``): run tags outlive the version, the model and a
        rename. Call it after the event is stored and before the registry deletes anything.
        Raises ``AuditUnavailable`` when the tag cannot be written: the deletion must then not
        happen.
        """
        if version is not None and not str(version).isdigit():
            raise ValueError(f"not a model version number: {version!r}")
        if not isinstance(digest, str) or not _SHA256_HEX.match(digest):
            raise ValueError(f"not the SHA-256 hash of an audit event: {digest!r}")
        key = deletion_tag(None if version is None else str(version))
        try:
            self._anchor(self.writer_run(name), key, digest)
        except Exception as exc:
            if type(exc).__name__ == "AuditUnavailable":
                raise
            raise _unavailable(name, exc) from exc

    def anchor_abandonment(self, name: str, version: str, orphan: str, digest: str) -> None:
        """Anchor the ``intent.abandoned`` event ``digest`` that records event ``orphan`` of
        ``version`` of model ``name`` as never having taken effect.

        The tag, :func:`abandonment_tag`, goes to the model's audit run, keyed by the orphan's
        hash: one key per abandoned event, so concurrent reconcilers write the same key (one
        event delivered twice), and, like a deletion anchor, it outlives the version. Call it
        after the event is stored. Raises ``AuditUnavailable`` when it cannot be written.
        """
        if not str(version).isdigit():
            raise ValueError(f"not a model version number: {version!r}")
        for h in (orphan, digest):
            if not isinstance(h, str) or not _SHA256_HEX.match(h):
                raise ValueError(f"not the SHA-256 hash of an audit event: {h!r}")
        try:
            self._anchor(self.writer_run(name), abandonment_tag(version, orphan), digest)
        except Exception as exc:
            if type(exc).__name__ == "AuditUnavailable":
                raise
            raise _unavailable(name, exc) from exc

    def abandonment_anchors(self, name: str) -> dict[str, set[str]]:
        """The recorded abandonments of model ``name``: the hash of each ``intent.abandoned``
        event an audit-run tag holds -> {"v<version>:<tag key>"} (the form of a fact anchor).

        One ``get_run`` per audit run; empty when the model has no audit run.
        """
        found: dict[str, set[str]] = {}
        for run_id in self.run_ids(name, create=False):
            tags = self._client.get_run(run_id).data.tags or {}
            for key, value in tags.items():
                if not key.startswith(ABANDONED_TAG_PREFIX + "v"):
                    continue
                version = key[len(ABANDONED_TAG_PREFIX) + 1 :].split(".", 1)[0]
                found.setdefault(str(value), set()).add(f"v{version}:{key}")
        return found

    # -- reading ---------------------------------------------------------------------------
    def read(self, name: str, dest: str | os.PathLike[str]) -> list[tuple[str, bytes]]:
        """Every event of model ``name`` as (artifact path, bytes), each path once: the loose
        files and the events sealed in segments (read as :meth:`load` reads them)."""
        from mlflow_approvals import segments as S

        stored = self.load(name, dest)
        found = dict(stored.loose)
        for _, raw in stored.segments:
            for path, body in S.decode(raw)[0]:
                found.setdefault(path, body)
        return sorted(found.items())

    def deletion_anchors(self, name: str) -> dict[str | None, set[str]]:
        """The recorded deletions of model ``name``: version (None: the model) -> event hashes.

        Read from the tags :meth:`anchor_deletion` wrote on the model's audit runs (one
        ``get_run`` each; normally there is one run). When two runs carry one key, every value
        is kept. Empty when the model has no audit run.
        """
        found: dict[str | None, set[str]] = {}
        for run_id in self.run_ids(name, create=False):
            tags = self._client.get_run(run_id).data.tags or {}
            for key, value in tags.items():
                if key == DELETED_MODEL_TAG:
                    found.setdefault(None, set()).add(str(value))
                elif key.startswith(DELETED_TAG_PREFIX + "v"):
                    version = key[len(DELETED_TAG_PREFIX) + 1 :]
                    found.setdefault(version, set()).add(str(value))
        return found

    def load(self, name: str, dest: str | os.PathLike[str]) -> StoredLog:
        """The log of model ``name`` as stored: loose event files, segments and seal anchors.

        Read in this order, so that a seal running meanwhile is never mistaken for tampering:
        the audit runs' tags (one ``get_run`` each: the seal anchors and where the artifacts
        are), then every segment (a sealer writes its segment before its anchor, so each anchor
        read has its segment), then the loose event files that no intact, anchored segment
        holds. Through a tracking server that costs one request per folder listed, one per
        segment and one per loose file not yet sealed; a local artifact store is read in place.
        """
        from mlflow_approvals import segments as S

        runs = [(run_id, self._client.get_run(run_id)) for run_id in self.run_ids(name, False)]
        sealed: dict[str, set[str]] = {}
        for _, run in runs:
            for key in run.data.tags or {}:
                digest = S.sealed_hash(key)
                if digest is not None:
                    sealed.setdefault(digest, set()).add(f"the audit run's tag {key}")
        places = [
            self._place(run_id, str(run.info.artifact_uri), Path(dest) / f"run{i}")
            for i, (run_id, run) in enumerate(runs)
        ]
        segments: list[tuple[str, bytes]] = []
        for place in places:
            segments += place.files(S.SEGMENT_FOLDER, ".jsonl", set())
        covered = S.covered_paths(segments, sealed)
        loose: list[tuple[str, bytes]] = []
        for place in places:
            loose += place.files("events", ".json", covered)
        return StoredLog(loose, segments, sealed)

    def seal(
        self, name: str, *, min_events: int = 1, max_events: int | None = None
    ) -> list[tuple[str, int]]:
        """Seal the loose events of model ``name`` into segments; return (path, events) of each.

        The events no intact, anchored segment holds yet are copied, byte for byte, into
        segments of at most ``max_events`` (default ``segments.MAX_SEGMENT_EVENTS``); nothing is
        sealed when fewer than ``min_events`` are loose. Each segment is written, and only then
        anchored by the audit-run tag ``mlflow_approvals.sealed.<sha256>`` (intent before
        effect): a crash in between leaves a segment no tag seals, whose events are all still
        in the log as loose files, which verify accepts (and the next seal seals again). The
        loose files are never deleted, and two sealers at once write two segments (the same
        events, read once). Sealing judges nothing: a damaged event is sealed as it is, and
        is reported as before. Raises ``AuditUnavailable`` when a segment or its anchor cannot
        be written.
        """
        import tempfile

        from mlflow_approvals import segments as S

        limit = max_events or S.MAX_SEGMENT_EVENTS
        if limit < 1 or min_events < 1:
            raise ValueError("min_events and max_events must be at least 1")
        if not self.run_ids(name, create=False):
            return []
        with tempfile.TemporaryDirectory(prefix="mlflow-approvals-seal-") as tmp:
            stored = self.load(name, tmp)
        # ``loose`` leaves out every event an intact, anchored segment holds already.
        todo = sorted({(p, raw) for p, raw in stored.loose if S.sealable(p, raw)})
        if len(todo) < min_events:
            return []
        written: list[tuple[str, int]] = []
        run_id = self.writer_run(name)
        for start in range(0, len(todo), limit):
            chunk = todo[start : start + limit]
            body = S.encode(chunk)
            digest = hashlib.sha256(body).hexdigest()
            path = S.segment_path(digest, utcnow())
            try:
                self._write_text(run_id, body.decode("utf-8"), path)
                self._anchor(run_id, S.sealed_tag(digest), path)
            except Exception as exc:
                if type(exc).__name__ == "AuditUnavailable":
                    raise
                raise _unavailable(name, exc) from exc
            written.append((path, len(chunk)))
        return written

    def _place(self, run_id: str, artifact_uri: str, dest: Path) -> _RunFiles:
        """How to read the files of audit run ``run_id`` (in place, or one request each)."""
        local = self._local_root(run_id, artifact_uri)
        if local is not None:
            return _RunFiles(local=local)
        return _RunFiles(remote=self._repository(run_id, artifact_uri), dest=dest)

    def _local_root(self, run_id: str, artifact_uri: str) -> Path | None:
        """The run's artifact root when it is a local folder, else None."""
        from urllib.parse import unquote, urlparse

        parsed = urlparse(artifact_uri)
        if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
            return Path(unquote(parsed.path))
        if parsed.scheme == "" and os.path.isabs(artifact_uri):
            return Path(artifact_uri)
        return None

    def _repository(self, run_id: str, artifact_uri: str) -> _Listing:
        """List and fetch the run's artifacts straight from its artifact repository: one
        request per listing and one per file."""
        return _RepoListing(repository(artifact_uri, str(self._client.tracking_uri)))

    def _anchor(self, run_id: str, key: str, value: str) -> None:
        """Set the audit-run tag ``key``, which several writers may set at once (two sealers of
        the same events, two reconcilers of one orphan): MLflow has no compare-and-set, and two
        first writes of one key can make one fail on the store's unique constraint. When the
        key is there after a failure, the other writer's anchor stands; else the error is
        raised."""
        try:
            self._client.set_tag(run_id, key, value)
        except Exception:
            if key not in (self._client.get_run(run_id).data.tags or {}):
                raise

    def _write_text(self, run_id: str, text: str, path: str) -> None:
        """Write one artifact of an audit run, through the run's artifact repository resolved
        against this store's tracking server (``MlflowClient.log_text`` resolves an
        ``mlflow-artifacts:`` run against the process-wide tracking URI on MLflow 2.x)."""
        repo = self._repos.get(run_id)
        if repo is None:
            repo = self._repos[run_id] = run_repository(self._client, run_id)
        log_text(repo, text, path)


_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class StoredLog:
    """A model's log as :meth:`AuditStore.load` read it."""

    loose: list[tuple[str, bytes]]
    """The loose event files that no intact, anchored segment holds, as (path, bytes)."""
    segments: list[tuple[str, bytes]]
    """Every segment file, anchored or not, as (path, bytes)."""
    sealed: dict[str, set[str]]
    """Segment hash -> where it is anchored (the audit runs' ``mlflow_approvals.sealed.*``)."""


class _Listing(Protocol):
    """Listing and fetching the artifacts of one run, with run-relative paths."""

    def list(self, path: str) -> list[tuple[str, bool]]: ...

    def fetch(self, path: str, local: str) -> None: ...


class _RepoListing:
    """An artifact repository rooted at the run (one request per listing, one per file)."""

    def __init__(self, repo: Any, root: str | None = None) -> None:
        self._repo, self._root = repo, root

    def _full(self, path: str) -> str:
        return f"{self._root}/{path}" if self._root else path

    def list(self, path: str) -> list[tuple[str, bool]]:
        cut = len(self._root) + 1 if self._root else 0
        return [(i.path[cut:], bool(i.is_dir)) for i in self._repo.list_artifacts(self._full(path))]

    def fetch(self, path: str, local: str) -> None:
        # One GET: the repository's own download would list the path first to tell a file
        # from a folder (a second request per file).
        self._repo._download_file(remote_file_path=self._full(path), local_path=local)


class _RunFiles:
    """The files under one folder of an audit run: read in place, or listed and fetched."""

    def __init__(
        self, local: Path | None = None, remote: _Listing | None = None, dest: Path | None = None
    ) -> None:
        self._local, self._remote, self._dest = local, remote, dest

    def files(self, folder: str, suffix: str, skip: set[str]) -> list[tuple[str, bytes]]:
        """Every file under ``folder`` ending in ``suffix`` whose path is not in ``skip``."""
        if self._local is not None:
            base = self._local / folder
            if not base.is_dir():
                return []
            found = []
            for path in sorted(base.rglob("*" + suffix)):
                rel = folder + "/" + path.relative_to(base).as_posix()
                if rel not in skip and path.is_file():
                    found.append((rel, path.read_bytes()))
            return found
        assert self._remote is not None and self._dest is not None
        wanted: list[str] = []
        pending = [folder]
        while pending:
            for rel, is_dir in self._remote.list(pending.pop()):
                if is_dir:
                    pending.append(rel)
                elif rel.endswith(suffix) and rel not in skip:
                    wanted.append(rel)
        return self._fetch_all(sorted(wanted))

    def _fetch_all(self, paths: list[str]) -> list[tuple[str, bytes]]:
        from concurrent.futures import ThreadPoolExecutor

        assert self._remote is not None and self._dest is not None
        remote, dest = self._remote, self._dest

        def one(rel: str) -> tuple[str, bytes]:
            local = dest.joinpath(*rel.split("/"))
            local.parent.mkdir(parents=True, exist_ok=True)
            remote.fetch(rel, str(local))
            return rel, local.read_bytes()

        if len(paths) < 2:
            return [one(p) for p in paths]
        with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
            return list(pool.map(one, paths))


def _unavailable(name: str, exc: Exception) -> Exception:
    from mlflow_approvals.errors import AuditUnavailable

    return AuditUnavailable(
        f"the audit log of '{name}' could not be written ({type(exc).__name__}: "
        f"{str(exc)[:300]}); nothing was changed. Check the audit artifact store "
        "(its location and permissions) and try again."
    )


def parse_event(raw: bytes) -> dict[str, Any]:
    """Parse one event file; raises ValueError when it is not a JSON object."""
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
