"""The server app's audit sink: the audit log written through the server's own stores, in process.

Each test sets the variables `mlflow server` exports to its workers (backend store, default
artifact root `mlflow-artifacts:/`, a local `--artifacts-destination`, `--serve-artifacts`) and
resets the stores MLflow's request handlers cache, so every test gets a fresh "server".
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlflow_approvals.audit import (
    EXPERIMENT_ENV,
    LOCATION_ENV,
    MODEL_TAG,
    canonical,
    event_path,
    make_event,
)
from mlflow_approvals.server.sink import ServerAuditStore, ServerTracking, server_audit_store


@dataclass
class FakeServer:
    root: Path
    backend_uri: str
    destination: Path


@pytest.fixture
def server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _sqlite_template: Path
) -> Iterator[FakeServer]:
    """A fresh in-process "server worker": its env vars set, MLflow's cached stores reset."""
    # Import before the variables are set: mlflow.server decides at import time whether it runs
    # as a server (and then installs its security middleware on the shared Flask app).
    import mlflow.server
    from mlflow.server import handlers
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    db = tmp_path / "db.sqlite"
    shutil.copyfile(_sqlite_template, db)  # an already migrated database: saves ~1.5 s a test
    destination = tmp_path / "artifacts"
    backend_uri = f"sqlite:///{db}"
    env = {
        mlflow.server.BACKEND_STORE_URI_ENV_VAR: backend_uri,
        mlflow.server.ARTIFACT_ROOT_ENV_VAR: "mlflow-artifacts:/",
        mlflow.server.ARTIFACTS_DESTINATION_ENV_VAR: str(destination),
        mlflow.server.SERVE_ARTIFACTS_ENV_VAR: "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # _get_tracking_store() calls set_tracking_uri(), which also exports MLFLOW_TRACKING_URI: keep
    # that from leaking into other tests. (setenv first: delenv of an unset variable is not undone.)
    unset = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_ENABLE_WORKSPACES")
    for key in (*unset, EXPERIMENT_ENV, LOCATION_ENV):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    for name in ("_tracking_store", "_model_registry_store", "_artifact_repo"):
        monkeypatch.setattr(handlers, name, None)
    yield FakeServer(tmp_path, backend_uri, destination)
    for name in ("_tracking_store", "_model_registry_store", "_artifact_repo"):
        setattr(handlers, name, None)  # monkeypatch then restores what was there before


def _event(name: str = "fraud-model", version: str = "3", **kw: Any) -> dict[str, Any]:
    return make_event(type="request.created", name=name, version=version, actor="alice", **kw)


def test_append_writes_under_artifacts_destination(server: FakeServer) -> None:
    """An event lands in <destination>/<exp>/<run>/artifacts/events/ of a mlflow-artifacts:/ run."""
    store = server_audit_store()
    event = _event()
    digest = store.append(event)

    exp_id = store.experiment_id(create=False)
    assert exp_id is not None
    tracking = ServerTracking()
    exp = tracking.get_experiment_by_name(store.experiment_name)
    assert exp is not None
    assert exp.artifact_location == f"mlflow-artifacts:/{exp_id}"
    (run_id,) = store.run_ids("fraud-model", create=False)
    assert tracking.get_run(run_id).info.artifact_uri == (
        f"mlflow-artifacts:/{exp_id}/{run_id}/artifacts"
    )
    path = server.destination / exp_id / run_id / "artifacts" / event_path(event, digest)
    assert path.read_bytes() == canonical(event)
    assert [p for p in server.destination.rglob("*") if p.is_file()] == [path]
    assert not (server.root / "mlruns").exists()
    assert not (server.root / "mlflow-approvals-audit").exists()  # not beside the database


def test_read_returns_same_bytes_in_place(server: FakeServer) -> None:
    """read() returns each event's exact bytes, read in place from a local destination."""
    store = server_audit_store()
    events = [_event(), _event(version="4", comment="second")]
    digests = [store.append(e) for e in events]

    dest = server.root / "download"
    dest.mkdir()
    got = store.read("fraud-model", dest)
    assert sorted(got) == sorted(
        (event_path(e, d), canonical(e)) for e, d in zip(events, digests, strict=True)
    )
    assert list(dest.iterdir()) == []  # nothing was downloaded


def test_download_path_matches_in_place_read(server: FakeServer) -> None:
    """Reading the log through the server's artifact repository gives the in-place read's files."""
    writer = server_audit_store()
    event = _event()
    digest = writer.append(event)
    in_place = writer.read("fraud-model", server.root / "unused")

    class Remote(ServerAuditStore):
        def _local_root(self, run_id: str, artifact_uri: str) -> Path | None:
            return None  # as if the destination were not a local folder: list and download

    remote = Remote(experiment_name=writer.experiment_name)
    dest = server.root / "download"
    dest.mkdir()
    assert remote.read("fraud-model", dest) == in_place
    assert in_place == [(event_path(event, digest), canonical(event))]
    assert (dest / "run0" / event_path(event, digest)).read_bytes() == canonical(event)


def test_second_model_gets_its_own_run(server: FakeServer) -> None:
    """Each registered model has its own audit run, found again by a new store (another worker)."""
    store = server_audit_store()
    fraud, churn = _event("fraud-model"), _event("churn-model")
    store.append(fraud)
    store.append(churn)

    (fraud_run,) = store.run_ids("fraud-model", create=False)
    (churn_run,) = store.run_ids("churn-model", create=False)
    assert fraud_run != churn_run
    tracking = ServerTracking()
    assert tracking.get_run(fraud_run).data.tags[MODEL_TAG] == "fraud-model"
    assert tracking.get_run(churn_run).data.tags[MODEL_TAG] == "churn-model"

    other_worker = server_audit_store()
    assert other_worker.run_ids("churn-model", create=False) == [churn_run]
    dest = server.root / "d"
    assert [raw for _, raw in other_worker.read("churn-model", dest)] == [canonical(churn)]
    assert [raw for _, raw in other_worker.read("fraud-model", dest)] == [canonical(fraud)]


@pytest.mark.parametrize(
    "location",
    ["mlflow-artifacts:/../escape", "mlflow-artifacts://host:5000/a/../../escape"],
)
def test_dotdot_in_artifact_uri_is_refused(server: FakeServer, location: str) -> None:
    """A run whose mlflow-artifacts: URI has a '..' segment is refused, and nothing is written."""
    from mlflow.exceptions import MlflowException

    tracking = ServerTracking()
    exp_id = tracking.create_experiment("evil", artifact_location=location)
    run_id = tracking.create_run(exp_id).info.run_id
    with pytest.raises(MlflowException, match=r"\.\.") as err:
        tracking.log_text(run_id, "{}", "events/model/x.json")
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException, match=r"\.\."):
        tracking.local_artifact_dir(run_id)  # where every read of the run starts
    assert not [p for p in server.root.rglob("x.json")]


@pytest.mark.parametrize("artifact_file", ["../other/x.json", "events/../../x.json", "/x.json"])
def test_dotdot_in_artifact_path_is_refused(server: FakeServer, artifact_file: str) -> None:
    """A run-relative artifact path that would leave the run's folder is refused."""
    from mlflow.exceptions import MlflowException

    store = server_audit_store()
    run_id = store.writer_run("fraud-model")
    with pytest.raises(MlflowException, match="must be relative and contain no") as err:
        store.server_tracking.log_text(run_id, "{}", artifact_file)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"  # a 4xx, not a 500
    assert not [p for p in server.root.rglob("x.json")]


def test_host_form_maps_to_its_path(server: FakeServer) -> None:
    """mlflow-artifacts://host/<path> maps to <path> inside the destination repository."""
    tracking = ServerTracking()
    exp_id = tracking.create_experiment(
        "hosted", artifact_location="mlflow-artifacts://tracking.example:5000/audit"
    )
    run_id = tracking.create_run(exp_id).info.run_id
    tracking.log_text(run_id, "héllo", "events/model/a.json")
    written = server.destination / "audit" / run_id / "artifacts" / "events" / "model" / "a.json"
    assert written.read_text(encoding="utf-8") == "héllo"
    assert (
        tracking.local_artifact_dir(run_id) == server.destination / "audit" / run_id / "artifacts"
    )


def test_other_locations_use_their_own_repository(server: FakeServer) -> None:
    """An audit experiment on an explicit local folder is written and read there, in place."""
    elsewhere = server.root / "elsewhere"
    store = ServerAuditStore(artifact_location=str(elsewhere))
    event = _event()
    digest = store.append(event)
    (run_id,) = store.run_ids("fraud-model", create=False)
    assert store.server_tracking.local_artifact_dir(run_id) == elsewhere / run_id / "artifacts"
    written = elsewhere / run_id / "artifacts" / event_path(event, digest)
    assert written.read_bytes() == canonical(event)
    assert not server.destination.exists()
    dest = server.root / "d"
    dest.mkdir()
    assert store.read("fraud-model", dest) == [(event_path(event, digest), canonical(event))]
    assert list(dest.iterdir()) == []


def test_tracking_uri_is_the_backend_store(server: FakeServer) -> None:
    """ServerTracking.tracking_uri is the server's backend store URI, before any store exists."""
    from mlflow.server import handlers

    assert ServerTracking().tracking_uri == server.backend_uri
    assert handlers._tracking_store is None


def test_handler_store_sets_process_tracking_uri(server: FakeServer) -> None:
    """After the server's store is created, a later MlflowClient() talks to the backend DB directly.

    MLflow's `_get_tracking_store()` calls `set_tracking_uri(<backend store URI>)`, which also
    exports MLFLOW_TRACKING_URI. Such a client sees the server's data, but cannot write to runs
    under mlflow-artifacts:/ (it has no HTTP server to resolve them against): ServerTracking can.
    """
    import os

    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    store = server_audit_store()
    store.append(_event())  # creates the server's tracking store
    assert mlflow.get_tracking_uri() == server.backend_uri
    assert os.environ["MLFLOW_TRACKING_URI"] == server.backend_uri

    client = MlflowClient()
    assert client.tracking_uri == server.backend_uri
    exp = client.get_experiment_by_name(store.experiment_name)
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:/")
    (run_id,) = store.run_ids("fraud-model", create=False)
    with pytest.raises(MlflowException, match="http or https"):
        client.log_text(run_id, "{}", "events/model/x.json")
    store.server_tracking.log_text(run_id, "{}", "events/model/x.json")
    assert [p.name for p in server.destination.rglob("x.json")] == ["x.json"]
