"""The helpers of `mlflow_approvals.testing`, against a real MLflow."""

from __future__ import annotations

import copy
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from mlflow import MlflowClient
from requests.adapters import HTTPAdapter

from conftest import Server, unique_name
from mlflow_approvals.policy import load_policy
from mlflow_approvals.testing import (
    EXAMPLE_POLICY,
    RoundTrip,
    RoundTripCounter,
    mlflow_server,
    register_versions,
)


def test_import_loads_neither_mlflow_nor_requests():
    """Importing the module does no work: MLflow and requests are imported on use."""
    code = (
        "import sys, mlflow_approvals.testing; "
        "print('mlflow' in sys.modules, 'requests' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_example_policy_loads_as_described():
    """EXAMPLE_POLICY loads with load_policy: two levels for fraud-* Production, root is admin."""
    before = copy.deepcopy(EXAMPLE_POLICY)
    policy = load_policy(EXAMPLE_POLICY)
    assert before == EXAMPLE_POLICY  # loading does not change it
    rule = policy.match("fraud-model", "stage", "Production")
    assert rule is not None and rule.name == "production"
    assert [[(r.role, r.count) for r in level] for level in rule.levels] == [
        [("data-scientist", 1), ("ml-engineer", 1)],
        [("business-owner", 1)],
    ]
    assert policy.match("fraud-model", "alias", "champion") is rule
    assert policy.match("churn-model", "stage", "Production") is None
    assert policy.default == "allow"
    assert policy.roles_of("frank") == ("business-owner",)
    assert policy.is_admin("root") and not policy.is_admin("alice")


def test_mlflow_server_answers_health_and_is_stopped_after(tmp_path: Path):
    """mlflow_server yields a server answering /health; after the block its port is closed."""
    with mlflow_server(tmp_path / "server") as server:
        assert requests.get(f"{server.uri}/health", timeout=5).status_code == 200
        assert server.root == (tmp_path / "server").resolve()
        assert server.backend_store_uri == f"sqlite:///{server.root / 'server.db'}"
        assert (server.backend, server.workers) == ("sqlite", 1)
        assert server.ready_after > 0
        port = urlsplit(server.uri).port
        assert port is not None
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    assert (tmp_path / "server" / "server.log").exists()  # a given root is kept


def test_mlflow_server_not_ready_in_time_raises_with_the_log(tmp_path: Path):
    """A server that is not healthy within `timeout` raises RuntimeError quoting its log."""
    with (
        pytest.raises(RuntimeError, match=r"mlflow server not ready after 0\.1 s:\n"),
        mlflow_server(tmp_path, timeout=0.1),
    ):
        pass  # pragma: no cover - never entered


@pytest.mark.rest
def test_register_versions_returns_string_versions_visible_to_mlflow(tracking_uri: str):
    """register_versions returns "1", "2": versions from finished runs with a model artifact."""
    name = unique_name()
    versions = register_versions(tracking_uri, name, 2)
    assert versions == ["1", "2"]
    client = MlflowClient(tracking_uri, tracking_uri)
    run_ids = set()
    for version in versions:
        mv = client.get_model_version(name, version)
        assert mv.source == f"runs:/{mv.run_id}/model"
        run = client.get_run(mv.run_id)
        assert run.info.status == "FINISHED"
        assert [f.path for f in client.list_artifacts(mv.run_id, "model")] == ["model/MLmodel"]
        run_ids.add(mv.run_id)
    assert len(run_ids) == 2
    exp = client.get_experiment_by_name("approvals-test-models")
    assert exp is not None
    if tracking_uri.startswith("sqlite:///"):
        beside = Path(tracking_uri[len("sqlite:///") :]).parent / "models"
        assert exp.artifact_location == str(beside)


@pytest.mark.server
def test_round_trip_counter_counts_get_model_version_as_one_get(mlflow_server: Server):
    """One get_model_version is one GET model-versions/get; HTTPAdapter.send is restored."""
    uri = mlflow_server.uri
    name = unique_name()
    (version,) = register_versions(uri, name)
    client = MlflowClient(uri, uri)
    client.get_model_version(name, version)  # the first call may set up the session
    original = HTTPAdapter.send
    counter = RoundTripCounter()
    with counter.count() as calls:
        assert HTTPAdapter.send is not original
        client.get_model_version(name, version)
    assert HTTPAdapter.send is original
    host = urlsplit(uri).netloc
    assert [c for c in calls if c.host == host] == [
        RoundTrip(host, "GET", "/api/2.0/mlflow/model-versions/get")
    ]
    client.get_model_version(name, version)
    assert len([c for c in calls if c.host == host]) == 1  # nothing recorded outside count()

    with counter:  # installed between counts: only what count() wraps is recorded
        assert counter.installed
        client.get_model_version(name, version)
        with counter.count() as calls:
            client.get_registered_model(name)
        assert counter.installed
    assert HTTPAdapter.send is original and not counter.installed
    assert [(c.method, c.path) for c in calls if c.host == host] == [
        ("GET", "/api/2.0/mlflow/registered-models/get")
    ]
