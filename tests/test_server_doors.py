"""Every door of the gate, over raw HTTP on both API prefixes: refused, nothing changed, audited.

Against the session's `mlflow server --app-name approvals` (basic-auth; every user has EDIT, so
each refusal comes from the gate). The model: v1 in Production with @champion (both gated,
applied through approvals), v2 with an open request.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

import pytest
import requests
from mlflow import MlflowClient

from conftest import ADMIN, PASSWORD, ApprovalsServer, signed_in, unique_name
from mlflow_approvals import ApprovalClient
from mlflow_approvals import tags as T
from mlflow_approvals.audit import TYPE_PREFIX
from mlflow_approvals.lifecycle import Target
from mlflow_approvals.remote import RemoteLifecycle
from mlflow_approvals.testing import register_versions

pytestmark = pytest.mark.server


class Gated:
    """A model whose v1 holds Production and @champion and whose v2 has an open request."""

    def __init__(self, server: ApprovalsServer) -> None:
        self.uri = server.uri
        self.name = unique_name("fraud-doors")
        with signed_in("alice"):
            self.v1, self.v2 = register_versions(self.uri, self.name, 2)
        for target in (Target("stage", "Production"), Target("alias", "champion")):
            self.steps("alice").file(self.name, self.v1, target, None)
            rid = self.open_request(self.v1)
            for user in ("carol", "bob", "dave"):
                self.steps(user).sign(self.name, self.v1, "approve", None, rid)
        self.steps("alice").file(self.name, self.v2, Target("stage", "Production"), None)
        self.rid = self.open_request(self.v2)

    def steps(self, user: str) -> RemoteLifecycle:
        return RemoteLifecycle(self.uri, auth=(user, PASSWORD))

    def open_request(self, v: str) -> str:
        return self.steps("alice").get(self.name, v, None).id

    def state(self) -> Any:
        """Everything a door could change: stages, aliases, tags, versions, the model's name."""
        admin = MlflowClient(self.uri, self.uri)
        with signed_in(ADMIN):
            model = admin.get_registered_model(self.name)
            versions = admin.search_model_versions(f"name = '{self.name}'")
            return (
                model.name,
                sorted(model.aliases.items()),
                sorted(model.tags.items()),
                sorted((str(v.version), v.current_stage, sorted(v.tags.items())) for v in versions),
            )

    def event_count(self) -> int:
        """How many event files the model's audit log holds (a listing, not a download)."""
        client = ApprovalClient(self.uri, self.uri, server_auth=(ADMIN, PASSWORD))
        with signed_in(ADMIN):
            run_id = client.audit.run_ids(self.name, create=False)[0]
            tracking = client.audit.tracking
            folders = [f.path for f in tracking.list_artifacts(run_id, "events") if f.is_dir]
            return sum(len(tracking.list_artifacts(run_id, folder)) for folder in folders)

    def newest_denial(self) -> dict[str, Any]:
        """The newest attempt.denied event of the model."""
        with signed_in(ADMIN), tempfile.TemporaryDirectory() as tmp:
            client = ApprovalClient(self.uri, self.uri, server_auth=(ADMIN, PASSWORD))
            events = [json.loads(raw) for _, raw in client.audit.read(self.name, tmp)]
        denied = [e for e in events if e["type"] == TYPE_PREFIX + "attempt.denied"]
        return max(denied, key=lambda e: e["time"])


@pytest.fixture(scope="module")
def gated(approvals_server: ApprovalsServer) -> Gated:
    return Gated(approvals_server)


def _doors(g: Gated) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """door -> (method, path under the API prefix, JSON body)."""
    forged = T.signoff_key(g.rid, "dave")
    return {
        "transition to Production": (
            "POST",
            "/mlflow/model-versions/transition-stage",
            {"name": g.name, "version": g.v2, "stage": "Production"},
        ),
        "set @champion": (
            "POST",
            "/mlflow/registered-models/alias",
            {"name": g.name, "alias": "champion", "version": g.v2},
        ),
        "delete @champion": (
            "DELETE",
            "/mlflow/registered-models/alias",
            {"name": g.name, "alias": "champion"},
        ),
        "forge a sign-off tag": (
            "POST",
            "/mlflow/model-versions/set-tag",
            {"name": g.name, "version": g.v2, "key": forged, "value": "{}"},
        ),
        "delete a request fact": (
            "DELETE",
            "/mlflow/model-versions/delete-tag",
            {"name": g.name, "version": g.v2, "key": T.request_key(g.rid)},
        ),
        "reserved model tag": (
            "POST",
            "/mlflow/registered-models/set-tag",
            {"name": g.name, "key": T.PREFIX + "x", "value": "1"},
        ),
        "delete reserved model tag": (
            "DELETE",
            "/mlflow/registered-models/delete-tag",
            {"name": g.name, "key": T.INDEX_KEY},
        ),
        "version carrying a forged request": (
            "POST",
            "/mlflow/model-versions/create",
            {
                "name": g.name,
                "source": "models:/x/1",
                "tags": [{"key": T.request_key("0" * 12), "value": "{}"}],
            },
        ),
        "delete the Production version": (
            "DELETE",
            "/mlflow/model-versions/delete",
            {"name": g.name, "version": g.v1},
        ),
        "delete a version with an open request": (
            "DELETE",
            "/mlflow/model-versions/delete",
            {"name": g.name, "version": g.v2},
        ),
        "rename the model": (
            "POST",
            "/mlflow/registered-models/rename",
            {"name": g.name, "new_name": unique_name("elsewhere")},
        ),
        "delete the model": ("DELETE", "/mlflow/registered-models/delete", {"name": g.name}),
    }


DOORS = [
    "transition to Production",
    "set @champion",
    "delete @champion",
    "forge a sign-off tag",
    "delete a request fact",
    "reserved model tag",
    "delete reserved model tag",
    "version carrying a forged request",
    "delete the Production version",
    "delete a version with an open request",
    "rename the model",
    "delete the model",
]


@pytest.mark.parametrize("api", ["/api/2.0", "/ajax-api/2.0"])
@pytest.mark.parametrize("door", DOORS)
def test_door_is_refused_changes_nothing_and_is_audited(gated: Gated, door: str, api: str) -> None:
    """Each door: 403 PERMISSION_DENIED, the registry unchanged, one event (the denial)."""
    method, path, body = _doors(gated)[door]
    before = gated.state()
    count = gated.event_count()
    response = requests.request(
        method, f"{gated.uri}{api}{path}", json=body, auth=(ADMIN, PASSWORD), timeout=30
    )
    assert response.status_code == 403, response.text
    assert response.json()["error_code"] == "PERMISSION_DENIED"
    assert gated.state() == before
    assert gated.event_count() == count + 1  # the refused attempt, and nothing else


def test_a_refused_door_is_recorded_as_denied_under_the_caller(gated: Gated) -> None:
    """The event a refused door leaves is attempt.denied, by the authenticated caller."""
    method, path, body = _doors(gated)["transition to Production"]
    response = requests.request(
        method, f"{gated.uri}/api/2.0{path}", json=body, auth=("mallory", PASSWORD), timeout=30
    )
    assert response.status_code == 403
    denial = gated.newest_denial()
    assert denial["data"]["actor"]["id"] == "mallory"
    assert "gated" in denial["data"]["comment"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/mlflow/runs/delete", lambda run, exp: {"run_id": run}),
        ("/mlflow/runs/set-tag", lambda run, exp: {"run_id": run, "key": "k", "value": "v"}),
        ("/mlflow/experiments/delete", lambda run, exp: {"experiment_id": exp}),
        ("/mlflow/experiments/update", lambda run, exp: {"experiment_id": exp, "new_name": "x"}),
    ],
    ids=["delete run", "tag run", "delete experiment", "rename experiment"],
)
def test_the_audit_run_and_experiment_cannot_be_hidden(gated: Gated, path: str, body: Any) -> None:
    """Deleting, retagging or renaming the audit log's run or experiment is refused (403)."""
    client = ApprovalClient(gated.uri, gated.uri, server_auth=(ADMIN, PASSWORD))
    with signed_in(ADMIN):
        run_id = client.audit.run_ids(gated.name, create=False)[0]
        exp_id = client.audit.experiment_id(create=False)
    response = requests.post(
        f"{gated.uri}/api/2.0{path}", json=body(run_id, exp_id), auth=(ADMIN, PASSWORD), timeout=30
    )
    assert response.status_code == 403, response.text
    with signed_in(ADMIN):
        run = client.get_run(run_id)
    assert run.info.lifecycle_stage == "active" and "k" not in run.data.tags


def test_other_runs_can_still_be_tagged_and_deleted(gated: Gated) -> None:
    """The audit_run door only refuses the audit log's own run: a training run is untouched."""
    with signed_in("alice"):
        plain = MlflowClient(gated.uri, gated.uri)
        exp = plain.create_experiment(unique_name("training"))
        run = plain.create_run(exp)
        plain.set_tag(run.info.run_id, "k", "v")
        plain.delete_run(run.info.run_id)
        assert plain.get_run(run.info.run_id).info.lifecycle_stage == "deleted"
