"""The approvals pages against the session's real `mlflow server --app-name approvals`.

Users (see conftest): alice, bob (data-scientist), carol, erin (ml-engineer), dave, frank
(business-owner), mallory (no role). The browser tests drive Debian's chromium through
Playwright, one browser for the module, one context (with basic-auth credentials) per user; the
server-side refusals (forged posts, escaping, a missing reason) are checked with `requests`,
where a browser adds nothing.

Set MLFLOW_APPROVALS_SCREENSHOTS=1 to write docs/images/inbox.png and request.png.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from conftest import ADMIN, PASSWORD, ApprovalsServer, signed_in, unique_name
from mlflow_approvals import ApprovalClient
from mlflow_approvals import tags as T
from mlflow_approvals.audit import TYPE_PREFIX
from mlflow_approvals.lifecycle import Target
from mlflow_approvals.remote import RemoteLifecycle
from mlflow_approvals.server.web import csrf
from mlflow_approvals.testing import register_versions

CHROMIUM = "/usr/bin/chromium"
IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
PRODUCTION = Target("stage", "Production", "set", False)
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


# ------------------------------------------------------------------------- helpers -----
class Env:
    """The session's approvals server, seen by the tests."""

    def __init__(self, server: ApprovalsServer) -> None:
        self.uri = server.uri

    def steps(self, user: str) -> RemoteLifecycle:
        return RemoteLifecycle(self.uri, auth=(user, PASSWORD))

    def model(self, name: str | None = None) -> tuple[str, str]:
        name = name or unique_name("fraud-web")
        with signed_in("alice"):
            (v,) = register_versions(self.uri, name, 1)
        return name, v

    def filed(
        self, comment: str | None = "ready for Production", name: str | None = None
    ) -> tuple[str, str, str]:
        """A new model version with a pending request by alice: (name, version, request id)."""
        name, v = self.model(name)
        request = self.steps("alice").file(name, v, PRODUCTION, comment)
        return name, v, request.id

    def tags(self, name: str, v: str) -> dict[str, str]:
        from mlflow import MlflowClient

        with signed_in(ADMIN):
            return dict(MlflowClient(self.uri, self.uri).get_model_version(name, v).tags)

    def stage(self, name: str, v: str) -> str:
        from mlflow import MlflowClient

        with signed_in(ADMIN):
            return str(MlflowClient(self.uri, self.uri).get_model_version(name, v).current_stage)

    def events(self, name: str) -> list[dict[str, Any]]:
        import json

        with signed_in(ADMIN):
            client = ApprovalClient(self.uri, self.uri)
            with tempfile.TemporaryDirectory() as tmp:
                return [json.loads(raw) for _, raw in client.audit.read(name, tmp)]

    def page_url(self, name: str, v: str, rid: str) -> str:
        from urllib.parse import urlencode

        return f"{self.uri}/approvals/request?{urlencode({'name': name, 'version': v, 'id': rid})}"

    def get(self, user: str, url: str) -> requests.Response:
        return requests.get(url, auth=(user, PASSWORD), timeout=60)

    def token(self, user: str, name: str, v: str, rid: str) -> str:
        """The form token of ``user``'s request page (they must be offered the form)."""
        found = _TOKEN.search(self.get(user, self.page_url(name, v, rid)).text)
        assert found, f"{user} was offered no sign-off form"
        return found.group(1)

    def post(
        self, user: str, form: dict[str, str], headers: dict[str, str] | None = None
    ) -> requests.Response:
        return requests.post(
            f"{self.uri}/approvals/sign",
            data=form,
            headers=headers or {},
            auth=(user, PASSWORD),
            allow_redirects=False,
            timeout=60,
        )


def _form(name: str, v: str, rid: str, decision: str, comment: str, token: str | None) -> dict:
    form = {"name": name, "version": v, "request_id": rid, "decision": decision}
    form["comment"] = comment
    if token is not None:
        form["csrf_token"] = token
    return form


@pytest.fixture
def env(approvals_server: ApprovalsServer) -> Env:
    return Env(approvals_server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium for the module (skips, saying why, where none can be had)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does)")
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield launched
        launched.close()


def _page(browser: Any, env: Env, user: str, **options: Any) -> Any:
    """A page signed in as ``user`` (basic-auth credentials on a new context), with
    JavaScript off: the pages must work without it."""
    options.setdefault("viewport", {"width": 1100, "height": 900})
    options.setdefault("java_script_enabled", False)
    context = browser.new_context(
        base_url=env.uri, http_credentials={"username": user, "password": PASSWORD}, **options
    )
    page = context.new_page()
    page.set_default_timeout(30_000)
    return page


def _shots() -> bool:
    return os.environ.get("MLFLOW_APPROVALS_SCREENSHOTS") == "1"


def _screenshot(page: Any, name: str, tmp_path: Path) -> Path:
    """Save a full-page screenshot (under docs/images with MLFLOW_APPROVALS_SCREENSHOTS=1)."""
    folder = IMAGES if _shots() else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    return path


# ------------------------------------------------------------------------- browser -----
@pytest.mark.server
def test_approvers_sign_in_the_browser_and_the_last_sign_off_applies(
    env: Env, browser: Any, tmp_path: Path
) -> None:
    """carol and then dave find the request in their inbox and approve it (JavaScript off, dave
    by keyboard); dave's sign-off applies it and the page says so."""
    from playwright.sync_api import expect

    # The documentation's screenshots show a readable name (one run, one fresh server).
    name, v, rid = env.filed(
        "Recall up 4 points on the March holdout; see the run.",
        "fraud-detector" if _shots() else None,
    )
    link = f"{name} v{v}"

    carol = _page(browser, env, "carol")
    carol.goto(f"/approvals/?model={name}")
    mine = carol.get_by_role("region", name=re.compile("Waiting for your sign-off"))
    mine.get_by_role("link", name=link).click()
    expect(carol.get_by_role("heading", level=1)).to_contain_text(link)
    carol.get_by_label("Comment").fill("Metrics and drift report reviewed.")
    carol.get_by_role("button", name="Approve").click()
    expect(carol.get_by_role("status")).to_have_text("Your approval was recorded.")
    expect(carol.locator("#status")).to_have_text("pending")
    expect(carol.get_by_role("button", name="Approve")).to_have_count(0)  # a person signs once
    carol.context.close()

    env.steps("bob").sign(name, v, "approve", "Feature pipeline unchanged.", rid)

    dave = _page(browser, env, "dave")
    dave.goto("/approvals/")
    mine = dave.get_by_role("region", name=re.compile("Waiting for your sign-off"))
    expect(mine.get_by_role("link", name=link)).to_be_visible()
    _screenshot(dave, "inbox.png", tmp_path)
    mine.get_by_role("link", name=link).click()
    expect(dave.get_by_role("button", name="Reject")).to_be_visible()
    dave.get_by_label("Comment").fill("Business case approved for Q3.")
    _screenshot(dave, "request.png", tmp_path)
    dave.keyboard.press("Tab")  # from Comment, the next stop is Approve: sign by keyboard
    expect(dave.get_by_role("button", name="Approve")).to_be_focused()
    dave.keyboard.press("Enter")
    expect(dave.locator("#status")).to_have_text("applied")
    expect(dave.locator("#verdict")).to_contain_text("The audit log verifies")
    expect(dave.get_by_role("cell", name="Business case approved for Q3.")).to_be_visible()
    dave.context.close()
    assert env.stage(name, v) == "Production"


@pytest.mark.server
def test_an_outsider_sees_no_sign_off_buttons(env: Env, browser: Any) -> None:
    """mallory (no role) sees the request, why she cannot sign, and neither button."""
    from playwright.sync_api import expect

    name, v, rid = env.filed()
    mallory = _page(browser, env, "mallory")
    mallory.goto(env.page_url(name, v, rid).removeprefix(env.uri))
    expect(mallory.get_by_role("heading", level=1)).to_contain_text(f"{name} v{v}")
    expect(mallory.get_by_text("You cannot sign this request now")).to_be_visible()
    expect(mallory.get_by_role("button", name="Approve")).to_have_count(0)
    expect(mallory.get_by_role("button", name="Reject")).to_have_count(0)
    expect(mallory.get_by_label("Comment")).to_have_count(0)
    mallory.context.close()


@pytest.mark.server
def test_the_request_page_fits_a_phone(env: Env, browser: Any) -> None:
    """At a phone's width (390 px) the request page needs no sideways scrolling."""
    name, v, rid = env.filed("x" * 300)
    phone = _page(browser, env, "carol", viewport={"width": 390, "height": 844})
    phone.goto(env.page_url(name, v, rid).removeprefix(env.uri))
    widths = phone.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    phone.context.close()
    assert widths[0] <= widths[1]


# ------------------------------------------------------------------------- server side --
@pytest.mark.server
def test_pages_need_authentication(env: Env) -> None:
    """Without credentials the inbox is basic-auth's 401 challenge, which a browser prompts."""
    response = requests.get(f"{env.uri}/approvals/", timeout=30)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.server
def test_forged_posts_are_refused_and_record_nothing(env: Env) -> None:
    """A post with no, a malformed, another user's or a cross-site token is a 403; nothing is
    written to the version's tags or the audit log."""
    name, v, rid = env.filed()
    carol_token = env.token("carol", name, v, rid)
    erin_token = env.token("erin", name, v, rid)
    before_tags, before_events = env.tags(name, v), len(env.events(name))
    forged = [
        (_form(name, v, rid, "approve", "", None), {}),
        (_form(name, v, rid, "approve", "", "12345.deadbeef"), {}),
        (_form(name, v, rid, "approve", "", erin_token), {}),  # erin's token, carol's post
        (_form(name, v, rid, "approve", "", carol_token), {"Origin": "https://evil.example"}),
        (_form(name, v, rid, "approve", "", carol_token), {"Referer": "https://evil.example/x"}),
    ]
    for form, headers in forged:
        response = env.post("carol", form, headers)
        assert response.status_code == 403, (form, headers)
        assert "Nothing was recorded" in response.text
    assert env.tags(name, v) == before_tags
    assert len(env.events(name)) == before_events


@pytest.mark.server
def test_a_post_from_the_servers_own_pages_is_accepted(env: Env) -> None:
    """The page's token with the server's own Origin is accepted: 303 back to the request."""
    name, v, rid = env.filed()
    token = env.token("carol", name, v, rid)
    response = env.post("carol", _form(name, v, rid, "approve", "ok", token), {"Origin": env.uri})
    assert response.status_code == 303
    assert response.headers["Location"].endswith("signed=approve")
    assert any(k.startswith(T.request_key(rid) + ".s.") for k in env.tags(name, v))


@pytest.mark.server
def test_an_outsiders_post_is_refused_by_the_server(env: Env) -> None:
    """mallory's post, with her own valid token, is refused by the engine and audited."""
    name, v, rid = env.filed()
    page = env.get("mallory", env.page_url(name, v, rid))
    assert page.status_code == 200 and "csrf_token" not in page.text  # no form, no token
    # She posts anyway, with a token made as the server makes them (the test server's secret):
    # the engine refuses her, not the page.
    secret = csrf.read_secret({"MLFLOW_FLASK_SERVER_SECRET_KEY": "approvals-test-secret"})
    token = csrf.issue(secret.key, "mallory", time.time())
    response = env.post("mallory", _form(name, v, rid, "approve", "let me", token))
    assert response.status_code == 403
    assert "Not recorded" in response.text
    assert not any(k.startswith(T.request_key(rid) + ".s.") for k in env.tags(name, v))
    denied = [e for e in env.events(name) if e["type"] == TYPE_PREFIX + "attempt.denied"]
    assert [e["data"]["actor"]["id"] for e in denied] == ["mallory"]


@pytest.mark.server
def test_a_signer_denied_the_model_can_neither_see_nor_sign_it(env: Env) -> None:
    """carol holds the level-1 role but is denied the model: page, inbox, post and the check
    endpoint all refuse her, and nothing is recorded."""
    from mlflow.server.auth.client import AuthServiceClient

    from mlflow_approvals.wire import rest_path

    name, v, rid = env.filed()
    inbox_url = f"{env.uri}/approvals/?model={name}"
    assert rid in env.get("carol", inbox_url).text  # listed while she may read the model
    with signed_in(ADMIN):
        AuthServiceClient(env.uri).grant_user_permission("carol", "registered_model", name, "DENY")
    before_tags, before_events = env.tags(name, v), len(env.events(name))
    assert env.get("carol", env.page_url(name, v, rid)).status_code == 403
    inbox = env.get("carol", inbox_url)
    assert inbox.status_code == 200 and rid not in inbox.text
    secret = csrf.read_secret({"MLFLOW_FLASK_SERVER_SECRET_KEY": "approvals-test-secret"})
    token = csrf.issue(secret.key, "carol", time.time())
    response = env.post("carol", _form(name, v, rid, "approve", "let me", token))
    assert response.status_code == 403
    check = requests.get(
        env.uri + rest_path("check"),
        params={"name": name, "version": v, "stage": "Production"},
        auth=("carol", PASSWORD),
        timeout=60,
    )
    assert check.status_code == 403
    assert env.tags(name, v) == before_tags
    assert len(env.events(name)) == before_events


@pytest.mark.server
def test_a_rejection_without_a_reason_is_refused(env: Env) -> None:
    """Reject with an empty (or blank) Comment: 400, the reason is asked for, nothing written."""
    name, v, rid = env.filed()
    token = env.token("carol", name, v, rid)
    before_tags, before_events = env.tags(name, v), len(env.events(name))
    response = env.post("carol", _form(name, v, rid, "reject", "  \n ", token))
    assert response.status_code == 400
    assert "A rejection needs a reason" in response.text
    assert env.tags(name, v) == before_tags
    assert len(env.events(name)) == before_events


@pytest.mark.server
def test_a_rejection_with_a_reason_ends_the_request(env: Env) -> None:
    """Reject with a reason: recorded under the signed-in user, the request is rejected."""
    name, v, rid = env.filed()
    token = env.token("erin", name, v, rid)
    response = env.post("erin", _form(name, v, rid, "reject", "Drift on segment B.", token))
    assert response.status_code == 303
    page = env.get("erin", env.uri + response.headers["Location"])
    assert 'id="status">rejected<' in page.text
    assert "Drift on segment B." in page.text
    assert env.steps("alice").get(name, v, rid).signoffs[0].actor == "erin"


@pytest.mark.server
def test_what_users_wrote_is_shown_escaped(env: Env) -> None:
    """Markup in a model's name, a request's comment and a sign-off's comment is shown as text."""
    name, v, rid = env.filed('<script>alert("filed")</script>', unique_name("fraud-<i>&'q"))
    token = env.token("carol", name, v, rid)
    evil = '"><img src=x onerror=alert(1)>'
    assert env.post("carol", _form(name, v, rid, "approve", evil, token)).status_code == 303
    html = env.get("dave", env.page_url(name, v, rid)).text
    assert "<script>" not in html and "<img" not in html and "<i>" not in html
    assert "fraud-&lt;i&gt;&amp;&#39;q" in html
    assert "&lt;script&gt;alert(&#34;filed&#34;)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html


@pytest.mark.server
def test_the_inbox_puts_what_the_user_may_sign_first(env: Env) -> None:
    """At level 1 the request is carol's to sign and only "open" for dave (level 2)."""
    name, v, _ = env.filed()

    def section_of(user: str) -> str:
        html = env.get(user, f"{env.uri}/approvals/?model={name}").text
        mine, _, rest = html.partition('id="open"')
        return "mine" if f"{name} v{v}" in mine else "open" if f"{name} v{v}" in rest else "none"

    assert section_of("carol") == "mine"
    assert section_of("dave") == "open"
    assert section_of("alice") == "open"  # the requester cannot sign her own request


# ------------------------------------------------------------------------- pure -------
def test_a_token_is_bound_to_its_user_and_expires() -> None:
    """A token verifies for its user within its age, and for nobody else or later."""
    key, now = b"k" * 32, 1_700_000_000.0
    token = csrf.issue(key, "carol", now)
    assert csrf.token_problem(key, "carol", token, now + 60) is None
    assert csrf.token_problem(key, "erin", token, now + 60) is not None
    assert csrf.token_problem(b"x" * 32, "carol", token, now) is not None
    assert csrf.token_problem(key, "carol", token, now + csrf.MAX_AGE + 1) is not None
    assert csrf.token_problem(key, "carol", "", now) is not None


def test_the_origin_must_be_this_server() -> None:
    """A post's Origin (else Referer) must name this server or a listed origin."""
    host = "http://mlflow.internal:5000/"
    assert csrf.origin_problem(None, None, host) is None
    assert csrf.origin_problem("http://mlflow.internal:5000", None, host) is None
    assert csrf.origin_problem(None, "http://mlflow.internal:5000/approvals/r", host) is None
    assert csrf.origin_problem("https://evil.example", None, host) is not None
    assert csrf.origin_problem("null", None, host) is not None
    assert csrf.origin_problem(None, "https://proxy.example/x", host) is not None
    assert (
        csrf.origin_problem("https://proxy.example", None, host, ["https://proxy.example"]) is None
    )
