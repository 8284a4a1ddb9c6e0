"""Notifications from the lifecycle, to real HTTP receivers on loopback (a sqlite registry)."""

from __future__ import annotations

import json
import tempfile
from typing import Any

import pytest
from mlflow import MlflowClient

from conftest import Receiver, dead_url, register_versions, unique_name
from mlflow_approvals import ApprovalClient

SECRET = "s3cret-for-tests"


def subscription(url: str, **kw: Any) -> dict[str, Any]:
    return {"name": kw.pop("name", "team"), "url": url, "secret_env": "HOOK_SECRET", **kw}


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)


def cycle(uri: str, policy: dict[str, Any]) -> tuple[str, str]:
    """Register a model and take it through request and three sign-offs; (name, version)."""
    name = unique_name()
    (v,) = register_versions(uri, name, 1)

    def as_(actor: str) -> ApprovalClient:
        return ApprovalClient(uri, uri, policy=policy, actor=actor)

    as_("alice").request_transition(name, v, "Production", comment="ship it")
    for actor in ("bob", "carol", "dave"):
        as_(actor).approve(name, v)
    return name, v


def test_each_step_reaches_the_receiver_signed_with_who_is_next(
    sqlite_uri, policy_dict, receiver, monkeypatch
):
    """Filing, each sign-off and the apply arrive signed as MLflow signs, naming who is next."""
    from mlflow.webhooks.delivery import _generate_hmac_signature

    monkeypatch.setenv("MLFLOW_APPROVALS_UI_URL", "https://mlflow.example.com")
    policy_dict["notifications"] = [subscription(receiver.url)]
    name, v = cycle(sqlite_uri, policy_dict)
    bodies = receiver.bodies()
    assert [b["type"] for b in bodies] == [
        "request.created",
        "signoff.approved",
        "signoff.approved",
        "signoff.approved",
        "stage.transitioned",
    ]
    created = bodies[0]
    assert created["next"] == {
        "level": 1,
        "roles": {"data-scientist": ["bob"], "ml-engineer": ["carol", "erin"]},
    }
    assert bodies[2]["next"]["roles"] == {"business-owner": ["dave", "frank"]}
    assert bodies[-1]["status"] == "applied" and bodies[-1]["actor"]["id"] == "dave"
    assert created["link"] == f"https://mlflow.example.com/#/models/{name}/versions/{v}"
    for headers, body in receiver.received:
        expected = _generate_hmac_signature(
            SECRET, headers["X-MLflow-Delivery-Id"], headers["X-MLflow-Timestamp"], body.decode()
        )
        assert headers["X-MLflow-Signature"] == expected


def test_a_rejection_is_delivered_with_its_reason(sqlite_uri, policy_dict, receiver):
    """A rejection reaches the receiver with the reason and the rejected status."""
    policy_dict["notifications"] = [subscription(receiver.url, events=["signoff.rejected"])]
    name = unique_name()
    (v,) = register_versions(sqlite_uri, name, 1)
    ApprovalClient(sqlite_uri, sqlite_uri, policy=policy_dict, actor="alice").request_transition(
        name, v, "Production"
    )
    ApprovalClient(sqlite_uri, sqlite_uri, policy=policy_dict, actor="erin").reject(
        name, v, "latency regression"
    )
    (body,) = receiver.bodies()
    assert body["type"] == "signoff.rejected"
    assert body["status"] == "rejected" and body["comment"] == "latency regression"


def test_event_and_model_filters_select_what_is_sent(sqlite_uri, policy_dict, receiver):
    """A subscription to stage.* on other models receives nothing; one to stage.* gets the apply."""
    other = Receiver()
    try:
        policy_dict["notifications"] = [
            subscription(receiver.url, events=["stage.*"]),
            subscription(other.url, name="others", models=["churn-*"]),
        ]
        cycle(sqlite_uri, policy_dict)
        assert [b["type"] for b in receiver.bodies()] == ["stage.transitioned"]
        assert other.received == []
    finally:
        other.close()


def test_slack_format_posts_a_readable_message(sqlite_uri, policy_dict, receiver):
    """format: slack posts text and blocks (a Slack incoming-webhook body)."""
    policy_dict["notifications"] = [subscription(receiver.url, format="slack")]
    name, _ = cycle(sqlite_uri, policy_dict)
    bodies = receiver.bodies()
    assert all("text" in b and "blocks" in b for b in bodies)
    assert name in bodies[-1]["text"]


def test_a_dead_receiver_neither_fails_the_approval_nor_goes_unrecorded(sqlite_uri, policy_dict):
    """Deliveries to nowhere: the promotion is applied and each failure is an audit event."""
    policy_dict["notifications"] = [subscription(dead_url())]
    name, v = cycle(sqlite_uri, policy_dict)
    assert MlflowClient(sqlite_uri, sqlite_uri).get_model_version(name, v).current_stage == (
        "Production"
    )
    auditor = ApprovalClient(sqlite_uri, sqlite_uri, policy=policy_dict, actor="auditor")
    auditor.engine.notifier.flush()  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as tmp:
        events = [json.loads(raw) for _, raw in auditor.audit.read(name, tmp)]
    failed = [e for e in events if e["type"].endswith("notification.failed")]
    assert len(failed) == 5
    assert {e["data"]["notice"] for e in failed} >= {"request.created", "stage.transitioned"}
    assert auditor.verify_audit(name).ok


def test_cli_notify_test_delivers_and_reports_a_dead_receiver(policy_dict, receiver, tmp_path):
    """`notify test` exits 0 when every subscription answers, 1 naming the one that did not."""
    import yaml
    from click.testing import CliRunner

    from mlflow_approvals.cli import main

    policy_dict["notifications"] = [
        subscription(receiver.url),
        subscription(dead_url(), name="nowhere"),
    ]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy_dict))
    ok = CliRunner().invoke(
        main, ["--policy", str(path), "notify", "test", "--subscription", "team"]
    )
    assert ok.exit_code == 0, ok.output
    assert receiver.bodies()[0]["type"] == "notification.test"
    both = CliRunner().invoke(main, ["--policy", str(path), "notify", "test"])
    assert both.exit_code == 1
    assert "nowhere: FAILED" in both.output
