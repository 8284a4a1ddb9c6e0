"""Notifications: subscriptions in the policy, bodies, signatures and delivery to real receivers."""

from __future__ import annotations

import copy
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from mlflow.webhooks.delivery import _generate_hmac_signature

from conftest import CANONICAL_YAML
from mlflow_approvals.errors import PolicyError
from mlflow_approvals.notify import (
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Notice,
    Notifier,
    Outcome,
    Subscription,
    payload,
    sign,
    slack_message,
)
from mlflow_approvals.policy import load_policy

# content_hash of CANONICAL_YAML computed before notifications existed: it must never change.
HASH_BEFORE_NOTIFICATIONS = (
    "sha256:9e2430f7e2e529528bdeb6d2f0121d6613acba91251df4a073f30c57304012fd"
)

SECRET = "s3cr3t-signing-key"


def policy_data() -> dict[str, Any]:
    """A fresh copy of the test policy as a mapping."""
    data: dict[str, Any] = yaml.safe_load(CANONICAL_YAML)
    return copy.deepcopy(data)


def notice(**changes: Any) -> Notice:
    """A pending request at level 2, changed by ``changes``."""
    fields: dict[str, Any] = {
        "type": "signoff.approved",
        "name": "fraud-model",
        "version": "3",
        "actor": "carol",
        "display_name": None,
        "time": datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        "request_id": "req-1",
        "target": {"kind": "stage", "value": "Production", "action": "set"},
        "status": "pending",
        "comment": None,
        "missing": ({"role": "business-owner", "count": 1},),
        "next": {"level": 2, "roles": {"business-owner": ["dave", "frank"]}},
        "event": "abc123",
        "link": "http://mlflow.example/#/approvals/req-1",
    }
    fields.update(changes)
    return Notice(**fields)


# -- a real receiver ------------------------------------------------------------------------------


@dataclass
class Received:
    """One request a receiver got."""

    path: str
    headers: dict[str, str]
    body: str


@dataclass
class Receiver:
    """A loopback HTTP server that records requests and answers ``fail`` 500s, then 200."""

    url: str
    fail: int = 0
    requests: list[Received] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A threaded http.server on a free loopback port, recording every POST."""
    state = Receiver(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length).decode("utf-8")
            with lock:
                state.requests.append(Received(self.path, dict(self.headers.items()), body))
                failing = state.fail > 0
                state.fail -= failing
            self.send_response(500 if failing else 200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no" if failing else b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def dead_url() -> str:
    """The address of a loopback port nobody listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


class Failures:
    """An on_failure callback that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, sub: Subscription, note: Notice, error: str) -> None:
        self.calls.append((sub.name, note.type, error))


def notifier(*subs: Subscription, failures: Failures, **kwargs: Any) -> Notifier:
    """A Notifier with fast back-off, reading secrets from a fixed environment."""
    kwargs.setdefault("environ", {"HOOK_SECRET": SECRET})
    kwargs.setdefault("backoff", 0.01)
    return Notifier(subs, failures, **kwargs)


# -- signing and delivery -------------------------------------------------------------------------


def test_sign_matches_mlflow() -> None:
    """sign() gives exactly what MLflow's own webhook signing gives."""
    body = json.dumps({"a": "é", "b": [1, 2]})
    assert sign(SECRET, "id-1", "1700000000", body) == _generate_hmac_signature(
        SECRET, "id-1", "1700000000", body
    )


def test_signed_delivery_verifies_with_mlflow(receiver: Receiver) -> None:
    """The received signature is MLflow's HMAC of the received id, timestamp and body."""
    failures = Failures()
    sub = Subscription(name="bot", url=receiver.url, secret_env="HOOK_SECRET")
    outcome = notifier(sub, failures=failures).send(sub, notice())
    assert outcome.delivered and outcome.status == 200 and outcome.error is None
    (got,) = receiver.requests
    expected = _generate_hmac_signature(
        SECRET, got.headers[DELIVERY_ID_HEADER], got.headers[TIMESTAMP_HEADER], got.body
    )
    assert got.headers[SIGNATURE_HEADER] == expected
    assert got.headers[DELIVERY_ID_HEADER] == outcome.delivery_id
    assert json.loads(got.body) == payload(notice(), "bot")
    assert failures.calls == []


def test_unsigned_without_secret_env(receiver: Receiver) -> None:
    """A subscription without secret_env is delivered without a signature header."""
    sub = Subscription(name="plain", url=receiver.url)
    assert notifier(sub, failures=Failures()).send(sub, notice()).delivered
    assert SIGNATURE_HEADER not in receiver.requests[0].headers


def test_missing_secret_fails_without_sending(receiver: Receiver) -> None:
    """secret_env naming an unset variable fails the delivery, reports it and sends nothing."""
    failures = Failures()
    sub = Subscription(name="bot", url=receiver.url, secret_env="NOT_SET_ANYWHERE")
    outcome = notifier(sub, failures=failures, environ={}).send(sub, notice())
    assert not outcome.delivered and outcome.status is None
    assert outcome.error is not None and "NOT_SET_ANYWHERE" in outcome.error
    assert receiver.requests == []
    assert failures.calls == [("bot", "signoff.approved", outcome.error)]


def test_retries_keep_the_delivery_id(receiver: Receiver) -> None:
    """Two 500s then a 200: delivered, three requests, one delivery id and one timestamp."""
    receiver.fail = 2
    failures = Failures()
    sub = Subscription(name="bot", url=receiver.url, secret_env="HOOK_SECRET")
    tell = notifier(sub, failures=failures)
    assert tell.publish(notice()) == 1
    (outcome,) = tell.flush(timeout=30)
    assert outcome.delivered and outcome.status == 200
    assert len(receiver.requests) == 3
    assert {r.headers[DELIVERY_ID_HEADER] for r in receiver.requests} == {outcome.delivery_id}
    assert len({r.headers[SIGNATURE_HEADER] for r in receiver.requests}) == 1
    assert failures.calls == []


def test_failing_receiver_reports_once(receiver: Receiver) -> None:
    """A receiver answering 500 past the retries: one failure with the status, never raised."""
    receiver.fail = 100
    failures = Failures()
    sub = Subscription(name="bot", url=receiver.url)
    tell = notifier(sub, failures=failures, retries=1)
    tell.publish(notice())
    (outcome,) = tell.flush(timeout=30)
    assert not outcome.delivered and outcome.status == 500
    assert len(receiver.requests) == 2
    assert len(failures.calls) == 1 and "HTTP 500" in failures.calls[0][2]


def test_dead_receiver_reports_once(dead_url: str) -> None:
    """A closed port: publish returns, flush returns, on_failure is called exactly once."""
    failures = Failures()
    sub = Subscription(name="dead", url=dead_url)
    tell = notifier(sub, failures=failures, budget=30)
    tell.publish(notice())
    (outcome,) = tell.flush()
    assert not outcome.delivered and outcome.status is None
    assert failures.calls == [("dead", "signoff.approved", outcome.error)]
    assert outcome.error is not None and "/hook" not in outcome.error  # no URL path leaked


def test_on_failure_raising_is_contained(dead_url: str) -> None:
    """An on_failure that raises is logged; the delivery still ends with its outcome."""

    def boom(sub: Subscription, note: Notice, error: str) -> None:
        raise RuntimeError("audit store down")

    sub = Subscription(name="dead", url=dead_url)
    tell = Notifier([sub], boom, retries=0)
    tell.publish(notice())
    assert [o.delivered for o in tell.flush(timeout=30)] == [False]


def test_publish_filters_by_event_and_model_globs(receiver: Receiver) -> None:
    """Only subscriptions whose event and model globs both match get the notice."""
    subs = [
        Subscription(name="signoffs", url=receiver.url, events=("signoff.*",)),
        Subscription(name="fraud", url=receiver.url, models=("fraud-*",)),
        Subscription(name="created", url=receiver.url, events=("request.created",)),
        Subscription(name="churn", url=receiver.url, models=("churn-*",)),
    ]
    tell = notifier(*subs, failures=Failures())
    assert tell.publish(notice()) == 2
    outcomes = tell.flush(timeout=30)
    assert sorted(o.subscription for o in outcomes) == ["fraud", "signoffs"]
    assert sorted(json.loads(r.body)["subscription"] for r in receiver.requests) == [
        "fraud",
        "signoffs",
    ]


def test_wants_matches_globs() -> None:
    """wants() matches event types and model names with case-sensitive fnmatch globs."""
    sub = Subscription(name="s", url="https://h/x", events=("request.*",), models=("fraud-?",))
    assert sub.wants("request.created", "fraud-1")
    assert not sub.wants("signoff.approved", "fraud-1")
    assert not sub.wants("request.created", "Fraud-1")
    assert Subscription(name="all", url="https://h/x").wants("alias.set", "anything")


def test_outcome_is_frozen() -> None:
    """An Outcome cannot be changed after the fact."""
    outcome = Outcome("s", True, 200, None, "id")
    with pytest.raises(AttributeError):
        outcome.delivered = False  # type: ignore[misc]


# -- bodies ---------------------------------------------------------------------------------------


def test_json_payload_shape() -> None:
    """The json body has exactly the documented keys, with the time in UTC ISO form."""
    body = payload(notice(comment="looks good"), "bot")
    assert set(body) == {
        "type",
        "model",
        "version",
        "request_id",
        "target",
        "actor",
        "comment",
        "status",
        "missing",
        "next",
        "event",
        "link",
        "time",
        "subscription",
    }
    assert body["time"] == "2025-01-02T03:04:05Z"
    assert body["missing"] == [{"role": "business-owner", "count": 1}]
    assert body["next"] == {"level": 2, "roles": {"business-owner": ["dave", "frank"]}}
    assert body["actor"] == {"id": "carol", "display_name": None}


def test_slack_pending_says_who_is_next() -> None:
    """A pending request's Slack message leads with what the open level needs and from whom."""
    message = slack_message(notice())
    first = message["text"].splitlines()[0]
    assert first == ":hourglass: fraud-model v3 → Production: level 2 needs 1 business-owner " + (
        "(dave, frank)"
    )
    (block,) = message["blocks"]
    assert block["type"] == "section" and block["text"]["type"] == "mrkdwn"
    assert "<http://mlflow.example/#/approvals/req-1|Open the request>" in block["text"]["text"]


def test_slack_applied_and_rejected() -> None:
    """Applied and rejected requests read as one line each, the reason after a rejection."""
    applied = slack_message(notice(type="stage.transitioned", actor="dave", status="applied"))
    assert applied["text"] == ":white_check_mark: fraud-model v3 → Production: applied by dave"
    rejected = slack_message(
        notice(type="signoff.rejected", actor="erin", status="rejected", comment="AUC too low")
    )
    assert rejected["text"] == ":x: fraud-model v3 → Production: rejected by erin: AUC too low"


def test_slack_escapes_user_text() -> None:
    """&, < and > in names and comments are escaped, so no mention or link can be injected."""
    message = slack_message(
        notice(
            type="signoff.rejected",
            name="a<b>&c",
            actor="<!channel>",
            comment="see <https://evil|here> & more",
        )
    )
    for text in (message["text"], message["blocks"][0]["text"]["text"]):
        assert "a&lt;b&gt;&amp;c" in text
        assert "&lt;!channel&gt;" in text
        assert "&lt;https://evil|here&gt; &amp; more" in text
        assert "<!channel>" not in text and "<https://evil" not in text


def test_slack_subscription_posts_slack_body(receiver: Receiver) -> None:
    """A format: slack subscription posts the Slack body, not the json payload."""
    sub = Subscription(name="chat", url=receiver.url, format="slack")
    assert notifier(sub, failures=Failures()).send(sub, notice()).delivered
    assert json.loads(receiver.requests[0].body) == slack_message(notice())


# -- the policy -----------------------------------------------------------------------------------


def test_policy_without_notifications_keeps_its_hash() -> None:
    """A policy without notifications hashes exactly as before notifications existed."""
    assert load_policy(policy_data()).content_hash == HASH_BEFORE_NOTIFICATIONS
    empty = policy_data() | {"notifications": []}
    assert load_policy(empty).content_hash == HASH_BEFORE_NOTIFICATIONS


def test_policy_with_notifications_loads() -> None:
    """Subscriptions load with their defaults, and they change the policy's hash."""
    data = policy_data()
    data["notifications"] = [
        {"name": "chat", "url": "https://hooks.slack.com/services/T/B/X", "format": "slack"},
        {"name": "bot", "url": "http://bot:8080/h", "secret_env": "BOT_SECRET",
         "events": ["request.*"], "models": ["fraud-*"]},
    ]  # fmt: skip
    policy = load_policy(data)
    chat, bot = policy.notifications
    assert (chat.events, chat.models, chat.secret_env) == (("*",), ("*",), None)
    assert bot.wants("request.created", "fraud-model")
    assert policy.content_hash != HASH_BEFORE_NOTIFICATIONS


@pytest.mark.parametrize(
    ("subscriptions", "expected"),
    [
        (
            [{"name": "a", "url": "https://h/x", "token": "t"}],
            "notifications[0].token: unknown key 'token': use one of name, url, secret_env",
        ),
        (
            [{"name": "a", "url": "https://h/x"}, {"name": "a", "url": "https://h/y"}],
            "notifications[1].name: notification name 'a' is already used by notifications[0]",
        ),
        (
            [{"name": "a", "url": "ftp://h/x"}],
            "notifications[0].url: url 'ftp://h/x' is not an http:// or https:// address",
        ),
        (
            [{"name": "a", "url": "https://h/x", "secret_env": "xoxb-123"}],
            "notifications[0].secret_env: secret_env 'xoxb-123' is not an environment variable",
        ),
        (
            [{"name": "a", "url": "https://h/x", "format": "teams"}],
            "notifications[0].format:",
        ),
    ],
)
def test_policy_refuses_bad_notifications(subscriptions: list[Any], expected: str) -> None:
    """Unknown keys, duplicate names, bad schemes, secrets as names, bad formats are refused."""
    data = policy_data()
    data["notifications"] = subscriptions
    with pytest.raises(PolicyError) as info:
        load_policy(data)
    assert expected in info.value.message
