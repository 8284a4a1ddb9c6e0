"""How the client tells an approvals server from a plain one, against real loopback HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlflow_approvals.remote import RemoteError, probe


def _serve(status: int, body: bytes, content_type: str) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def fail_closed_basic_auth() -> Iterator[str]:
    """A server answering as MLflow's basic-auth does for a route it has no validator for."""
    yield from _serve(403, b"Permission denied", "text/plain")


@pytest.fixture
def approvals_refusal() -> Iterator[str]:
    """A server answering as the approvals app does when it refuses the caller."""
    body = json.dumps(
        {
            "error_code": "PERMISSION_DENIED",
            "message": "no",
            "mlflow_approvals_error": "NotAuthorized",
        }
    ).encode()
    yield from _serve(403, body, "application/json")


def test_plain_403_means_not_an_approvals_server(fail_closed_basic_auth: str) -> None:
    """basic-auth's plain 403 for our unknown route is read as 'no approvals app here'."""
    assert probe(fail_closed_basic_auth, ("alice", "x"), refresh=True) is None


def test_our_own_refusal_is_raised(approvals_refusal: str) -> None:
    """A 403 that names our error class is the approvals app refusing: it is raised."""
    with pytest.raises(RemoteError) as caught:
        probe(approvals_refusal, ("alice", "x"), refresh=True)
    assert caught.value.kind == "NotAuthorized"
