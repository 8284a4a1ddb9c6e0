"""The approvals server app against a real `mlflow server --app-name approvals` with basic-auth.

Users (see conftest): alice, bob (data-scientist), carol, erin (ml-engineer), dave, frank
(business-owner), root (admin role of the policy), mallory (no role), and basic-auth's admin.
Every user has EDIT on every model (basic-auth's default permission here), so each refusal below
comes from the approvals gate, not from basic-auth.
"""

from __future__ import annotations

import json
import tempfile

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from conftest import ADMIN, PASSWORD, ApprovalsServer, signed_in, unique_name
from mlflow_approvals import ApprovalClient
from mlflow_approvals import tags as T
from mlflow_approvals.audit import TYPE_PREFIX
from mlflow_approvals.errors import ApprovalPending, NotAuthorized
from mlflow_approvals.remote import RemoteError, RemoteLifecycle
from mlflow_approvals.testing import register_versions

pytestmark = pytest.mark.server


class Env:
    def __init__(self, server: ApprovalsServer) -> None:
        self.server = server
        self.uri = server.uri

    def steps(self, user: str) -> RemoteLifecycle:
        """The approval endpoints, signed in as ``user``."""
        return RemoteLifecycle(self.uri, auth=(user, PASSWORD))

    def model(self, count: int = 1) -> tuple[str, list[str]]:
        name = unique_name("fraud-srv")
        with signed_in("alice"):
            return name, register_versions(self.uri, name, count)

    def plain(self, user: str) -> MlflowClient:
        """A plain MlflowClient; call it inside `signed_in(user)`."""
        return MlflowClient(self.uri, self.uri)

    def raw(self, user: str, method: str, path: str, **kw: object) -> requests.Response:
        return requests.request(
            method, f"{self.uri}{path}", auth=(user, PASSWORD), timeout=30, **kw
        )

    def version(self, name: str, v: str) -> object:
        with signed_in(ADMIN):
            return MlflowClient(self.uri, self.uri).get_model_version(name, v)

    def events(self, name: str) -> list[dict]:
        with signed_in(ADMIN):
            client = ApprovalClient(self.uri, self.uri)
            with tempfile.TemporaryDirectory() as tmp:
                import json

                return [json.loads(raw) for _, raw in client.audit.read(name, tmp)]

    def approve_all(self, name: str, v: str) -> object:
        self.steps("alice").file(name, v, _stage("Production"), "ship it")
        self.steps("carol").sign(name, v, "approve", "ml ok", None)
        self.steps("bob").sign(name, v, "approve", "ds ok", None)
        return self.steps("dave").sign(name, v, "approve", "business ok", None)


def _stage(stage: str):  # type: ignore[no-untyped-def]
    from mlflow_approvals.lifecycle import Target

    return Target("stage", stage, "set", False)


@pytest.fixture
def env(approvals_server: ApprovalsServer) -> Env:
    return Env(approvals_server)


# ---------------------------------------------------------------------------- the cycle --
def test_full_cycle_applies_on_the_server_under_authenticated_names(env: Env) -> None:
    """Request, three sign-offs through the endpoints: applied by the server, names from auth."""
    name, (v,) = env.model()
    done = env.approve_all(name, v)
    assert done.status.value == "applied"
    assert [s.actor for s in done.signoffs] == ["carol", "bob", "dave"]
    assert done.requester == "alice"
    assert env.version(name, v).current_stage == "Production"


def test_app_client_entry_point_returns_approval_client(env: Env) -> None:
    """mlflow.server.get_app_client('approvals') gives an ApprovalClient for the server."""
    from mlflow.server import get_app_client

    client = get_app_client("approvals", tracking_uri=env.uri)
    assert isinstance(client, ApprovalClient)


def test_approval_client_detects_the_server_and_routes_through_it(env: Env) -> None:
    """ApprovalClient against the approvals server runs each step there, as the signed-in user."""
    name, (v,) = env.model()
    with signed_in("alice"):
        alice = ApprovalClient(env.uri, env.uri)
        assert alice.enforcing_server
        with pytest.raises(ApprovalPending):
            alice.transition_model_version_stage(name, v, "Production")
        assert alice.get_request(name, v).requester == "alice"


def test_a_claimed_actor_is_refused(env: Env) -> None:
    """actor='dave' from mallory's session is refused: nobody signs as someone else."""
    name, (v,) = env.model()
    env.steps("alice").file(name, v, _stage("Production"), None)
    mallory = ApprovalClient(env.uri, env.uri, actor="dave", server_auth=("mallory", PASSWORD))
    with pytest.raises(NotAuthorized, match="authenticated you as 'mallory'"):
        mallory.approve(name, v)
    assert env.steps("alice").get(name, v, None).signoffs == ()


def test_a_user_without_a_role_cannot_sign(env: Env) -> None:
    """mallory, authenticated but in no role of the policy, is refused (403) and audited."""
    name, (v,) = env.model()
    env.steps("alice").file(name, v, _stage("Production"), None)
    with pytest.raises(NotAuthorized):
        ApprovalClient(env.uri, env.uri, server_auth=("mallory", PASSWORD)).approve(name, v)
    types = [e["type"] for e in env.events(name)]
    assert TYPE_PREFIX + "attempt.denied" in types


def test_requester_cannot_approve_own_request_on_the_server(env: Env) -> None:
    """Separation of duties holds for the authenticated requester."""
    name, (v,) = env.model()
    env.steps("alice").file(name, v, _stage("Production"), None)
    client = ApprovalClient(env.uri, env.uri, server_auth=("alice", PASSWORD))
    with pytest.raises(NotAuthorized):
        client.approve(name, v)


def test_wrong_password_is_refused(env: Env) -> None:
    """The endpoints are behind basic-auth: a wrong password gets 401."""
    response = requests.get(
        f"{env.uri}/api/2.0/mlflow-approvals/info", auth=("alice", "wrong"), timeout=30
    )
    assert response.status_code == 401


# ---------------------------------------------------------------------------- the gate ---
@pytest.mark.parametrize("api", ["/api/2.0", "/ajax-api/2.0"])
def test_raw_transition_to_gated_stage_is_refused(env: Env, api: str) -> None:
    """A raw transition-stage POST on either prefix gets 403 naming the command; nothing moves."""
    name, (v,) = env.model()
    response = env.raw(
        "alice",
        "POST",
        f"{api}/mlflow/model-versions/transition-stage",
        json={
            "name": name,
            "version": v,
            "stage": "Production",
            "archive_existing_versions": False,
        },
    )
    assert response.status_code == 403
    assert response.json()["error_code"] == "PERMISSION_DENIED"
    assert "mlflow-approvals request" in response.json()["message"]
    assert env.version(name, v).current_stage == "None"
    denied = [e for e in env.events(name) if e["type"] == TYPE_PREFIX + "attempt.denied"]
    assert denied and denied[0]["data"]["actor"]["id"] == "alice"


def test_plain_client_transition_is_refused_at_once(env: Env) -> None:
    """MlflowClient's transition to a gated stage fails with PERMISSION_DENIED (no 5xx retry)."""
    name, (v,) = env.model()
    with signed_in("alice"), pytest.raises(MlflowException) as caught:
        env.plain("alice").transition_model_version_stage(name, v, "Production")
    assert caught.value.error_code == "PERMISSION_DENIED"


def test_admin_goes_through_the_gate_too(env: Env) -> None:
    """basic-auth's admin cannot transition a gated stage directly either."""
    name, (v,) = env.model()
    with signed_in(ADMIN), pytest.raises(MlflowException, match="gated"):
        env.plain(ADMIN).transition_model_version_stage(name, v, "Production")


def test_gated_alias_set_and_delete_are_refused(env: Env) -> None:
    """Setting @champion directly is refused; so is deleting it once applied."""
    name, (v,) = env.model()
    with signed_in("alice"), pytest.raises(MlflowException, match="gated"):
        env.plain("alice").set_registered_model_alias(name, "champion", v)
    from mlflow_approvals.lifecycle import Target

    env.steps("alice").file(name, v, Target("alias", "champion"), None)
    env.steps("carol").sign(name, v, "approve", None, None)
    env.steps("bob").sign(name, v, "approve", None, None)
    env.steps("dave").sign(name, v, "approve", None, None)
    with signed_in("alice"), pytest.raises(MlflowException, match="gated"):
        env.plain("alice").delete_registered_model_alias(name, "champion")
    assert env.version(name, v).aliases == ["champion"]


@pytest.mark.parametrize("api", ["/api/2.0", "/ajax-api/2.0"])
def test_reserved_version_tag_cannot_be_written(env: Env, api: str) -> None:
    """A forged sign-off tag written over raw HTTP is refused and nothing is written."""
    name, (v,) = env.model()
    env.steps("alice").file(name, v, _stage("Production"), None)
    rid = env.steps("alice").get(name, v, None).id
    key = T.signoff_key(rid, "dave")
    response = env.raw(
        "mallory",
        "POST",
        f"{api}/mlflow/model-versions/set-tag",
        json={"name": name, "version": v, "key": key, "value": "{}"},
    )
    assert response.status_code == 403
    assert key not in env.version(name, v).tags


def test_reserved_tags_cannot_be_deleted(env: Env) -> None:
    """Deleting a request fact (model-version tag) is refused."""
    name, (v,) = env.model()
    env.steps("alice").file(name, v, _stage("Production"), None)
    rid = env.steps("alice").get(name, v, None).id
    with signed_in("alice"), pytest.raises(MlflowException, match="reserved prefix"):
        env.plain("alice").delete_model_version_tag(name, v, T.request_key(rid))


def test_reserved_registered_model_tag_is_refused(env: Env) -> None:
    """Registered-model tags under the reserved prefix are refused too."""
    name, _ = env.model()
    with signed_in("alice"), pytest.raises(MlflowException, match="reserved prefix"):
        env.plain("alice").set_registered_model_tag(name, T.PREFIX + "x", "1")


def test_create_version_with_reserved_tags_is_refused(env: Env) -> None:
    """create_model_version carrying a forged request fact is refused; no version is made."""
    name, (v,) = env.model()
    mv = env.version(name, v)
    with signed_in("alice"), pytest.raises(MlflowException, match="reserved prefix"):
        env.plain("alice").create_model_version(
            name, mv.source, run_id=mv.run_id, tags={T.request_key("0" * 12): "{}"}
        )
    with signed_in(ADMIN):
        assert len(env.plain(ADMIN).search_model_versions(f"name = '{name}'")) == 1


def test_copy_of_a_version_with_approval_facts_is_refused(env: Env) -> None:
    """copy_model_version copies the source's facts: refused, with the way out named."""
    name, (v,) = env.model()
    env.approve_all(name, v)
    target = unique_name("fraud-copy")
    with signed_in("alice"), pytest.raises(MlflowException, match="copy_model_version"):
        env.plain("alice").copy_model_version(f"models:/{name}/{v}", target)


def test_deleting_a_version_in_a_gated_stage_is_refused(env: Env) -> None:
    """A Production version (gated) cannot be deleted directly."""
    name, (v,) = env.model()
    env.approve_all(name, v)
    with signed_in("alice"), pytest.raises(MlflowException, match="cannot be deleted"):
        env.plain("alice").delete_model_version(name, v)
    assert env.version(name, v).current_stage == "Production"


def test_a_deleted_version_with_history_still_verifies(env: Env) -> None:
    """A direct delete of a version with a closed request is recorded, anchored and verifies."""
    name, (v1, _) = env.model(2)
    env.steps("alice").file(name, v1, _stage("Production"), None)
    env.steps("alice").cancel(name, v1, "not this one", None)
    with signed_in("alice"):
        env.plain("alice").delete_model_version(name, v1)
    with signed_in(ADMIN):
        report = ApprovalClient(env.uri, env.uri).verify_audit(name)
    assert report.ok, [(e.status, e.type, e.reason) for e in report.events]


def test_renaming_or_deleting_a_model_with_an_open_request_is_refused(env: Env) -> None:
    """A rename would detach the open request; a delete would drop it: both refused."""
    name, (v,) = env.model()
    env.steps("alice").file(name, v, _stage("Production"), None)
    with signed_in("alice"), pytest.raises(MlflowException, match="cannot be renamed"):
        env.plain("alice").rename_registered_model(name, unique_name("other"))
    with signed_in("alice"), pytest.raises(MlflowException, match="cannot be deleted"):
        env.plain("alice").delete_registered_model(name)
    assert env.steps("alice").get(name, v, None).is_open


def test_ungated_writes_go_through_and_are_audited(env: Env) -> None:
    """A Staging move and a plain tag pass the gate and are recorded under the signed-in user."""
    name, (v,) = env.model()
    with signed_in("bob"):
        env.plain("bob").transition_model_version_stage(name, v, "Staging")
        env.plain("bob").set_model_version_tag(name, v, "team", "fraud")
    assert env.version(name, v).current_stage == "Staging"
    changed = [e for e in env.events(name) if e["type"] == TYPE_PREFIX + "registry.changed"]
    by_kind = {e["data"]["change"]: e["data"]["actor"]["id"] for e in changed}
    assert by_kind["transition_stage"] == by_kind["set_version_tag"] == "bob"
    assert by_kind["create_version"] == "alice"  # the registration itself is recorded too


def test_audit_artifacts_cannot_be_overwritten_over_http(env: Env) -> None:
    """A PUT into the audit experiment's artifacts is refused (the log is written by us only)."""
    name, (v,) = env.model()
    env.steps("alice").file(name, v, _stage("Production"), None)
    with signed_in(ADMIN):
        client = ApprovalClient(env.uri, env.uri)
        exp_id = client.audit.experiment_id(create=False)
        run_id = client.audit.run_ids(name, create=False)[0]
    for api in ("/api/2.0", "/ajax-api/2.0"):
        response = env.raw(
            "mallory",
            "PUT",
            f"{api}/mlflow-artifacts/artifacts/{exp_id}/{run_id}/artifacts/events/v{v}/x.json",
            data=b"{}",
        )
        assert response.status_code == 403, api


def test_log_verifies_after_a_server_cycle(env: Env) -> None:
    """Everything the server recorded verifies: requests, sign-offs, gate records."""
    name, (v,) = env.model()
    with signed_in("bob"):
        env.plain("bob").set_model_version_tag(name, v, "team", "fraud")
    env.approve_all(name, v)
    with signed_in(ADMIN):
        report = ApprovalClient(env.uri, env.uri).verify_audit(name)
    assert report.ok, report.lines()


def test_break_glass_through_the_server(env: Env) -> None:
    """root's break-glass applies at once on the server; the review is signed through it too."""
    name, (v,) = env.model()
    root = ApprovalClient(env.uri, env.uri, server_auth=("root", PASSWORD))
    review = root.break_glass(name, v, stage="Production", reason="rollback at 3 a.m.")
    assert env.version(name, v).current_stage == "Production"
    assert review.break_glass and review.requester == "root"
    env.steps("carol").sign(name, v, "approve", None, None)
    env.steps("bob").sign(name, v, "approve", None, None)
    done = env.steps("dave").sign(name, v, "approve", None, None)
    assert done.status.value == "applied"


def test_break_glass_by_someone_else_is_refused_on_the_server(env: Env) -> None:
    """alice is not in the break-glass roles: 403, nothing moves."""
    name, (v,) = env.model()
    alice = ApprovalClient(env.uri, env.uri, server_auth=("alice", PASSWORD))
    with pytest.raises(NotAuthorized):
        alice.break_glass(name, v, stage="Production", reason="I am in a hurry")
    assert env.version(name, v).current_stage == "None"


def test_reconcile_runs_on_the_server_and_accounts_for_direct_writes(env: Env) -> None:
    """An ungated move the server recorded is not reported as a change around the gate."""
    name, (v,) = env.model()
    with signed_in("bob"):
        env.plain("bob").transition_model_version_stage(name, v, "Staging")
    client = ApprovalClient(env.uri, env.uri, server_auth=(ADMIN, PASSWORD))
    report = client.reconcile(name)
    assert report.ok and report.changes == (), report.lines


def test_user_and_permission_changes_are_audited(env: Env) -> None:
    """basic-auth's user and permission writes land in the access log, password redacted."""
    from mlflow.server.auth.client import AuthServiceClient

    from mlflow_approvals.server.gate import ACCESS_LOG

    name, _ = env.model()
    user = unique_name("newcomer")
    with signed_in(ADMIN):
        admin = AuthServiceClient(env.uri)
        admin.create_user(user, PASSWORD)
        admin.grant_user_permission(user, "registered_model", name, "READ")
    events = [e for e in env.events(ACCESS_LOG) if user in json.dumps(e)]
    assert len(events) == 2
    assert {e["data"]["actor"]["id"] for e in events} == {ADMIN}
    assert PASSWORD not in json.dumps(events)


@pytest.mark.parametrize("round_", range(2))
def test_concurrent_signoffs_through_the_server_lose_nothing(env: Env, round_: int) -> None:
    """Signers hitting the server's workers at once: every accepted sign-off is kept, the
    request is applied once, and the log verifies."""
    from mlflow_approvals.lifecycle import ApprovalRequest
    from test_concurrency import run_together

    if env.server.server.workers < 2:
        pytest.skip("needs the multi-worker server, which runs on PostgreSQL")
    name, (v,) = env.model()
    env.steps("alice").file(name, v, _stage("Production"), None)
    recorded: list[str] = []  # told "your sign-off is recorded"
    for level in (("bob", "carol", "erin"), ("dave", "frank")):
        results = run_together(
            [lambda u=u: env.steps(u).sign(name, v, "approve", None, None) for u in level]
        )
        for user, result in zip(level, results, strict=True):
            assert isinstance(result, ApprovalRequest | RemoteError), result
            if isinstance(result, ApprovalRequest) and user in [s.actor for s in result.signoffs]:
                recorded.append(user)
    final = env.steps("alice").get(name, v, None)
    assert set(recorded) <= {s.actor for s in final.signoffs}
    assert final.status.value == "applied"
    mv = env.version(name, v)
    assert mv.current_stage == "Production"
    assert len([k for k in mv.tags if k.endswith(".applied")]) == 1
    with signed_in(ADMIN):
        assert ApprovalClient(env.uri, env.uri).verify_audit(name).ok
