"""Concurrent approvers against the session's real `mlflow server`.

Where PostgreSQL is available the server runs on it with two workers, as production servers do;
`.ci/run` makes that mandatory on machines that have PostgreSQL installed.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from mlflow import MlflowClient

from conftest import Server, postgres_available, register_versions, unique_name
from mlflow_approvals import ApprovalClient
from mlflow_approvals.lifecycle import ApprovalRequest, Status
from mlflow_approvals.tags import PREFIX, VersionFacts

pytestmark = pytest.mark.server


def run_together(actions: list[Any]) -> list[Any]:
    """Run the callables in threads released at the same instant; return results or errors."""
    barrier = threading.Barrier(len(actions))
    results: list[Any] = [None] * len(actions)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = actions[i]()
        except Exception as exc:  # collected and asserted on by the test
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(actions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_session_server_runs_on_postgres_when_available(mlflow_server: Server) -> None:
    """Concurrency claims are proven on PostgreSQL with several workers where it is present."""
    if not postgres_available():
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432: the server runs on sqlite")
    assert (mlflow_server.backend, mlflow_server.workers) == ("postgresql", 2)


def test_ten_concurrent_approvers_all_survive(mlflow_server: Server) -> None:
    """Ten people signing one level at the same instant: every sign-off survives, one apply."""
    uri = mlflow_server.uri
    reviewers = [f"reviewer{i:02d}" for i in range(12)]
    policy = {
        "roles": {"author": ["alice"], "reviewer": reviewers},
        "rules": [
            {
                "name": "panel",
                "models": ["panel-*"],
                "stages": ["Production"],
                "levels": [[{"role": "reviewer", "count": 10}]],
            }
        ],
    }
    name = unique_name("panel-model")
    (v,) = register_versions(uri, name)
    ApprovalClient(uri, uri, policy=policy, actor="alice").request_transition(name, v, "Production")
    clients = [ApprovalClient(uri, uri, policy=policy, actor=r) for r in reviewers[:10]]
    results = run_together(
        [lambda c=c: c.approve(name, v, comment=f"ok from {c.actor}") for c in clients]
    )
    errors = [r for r in results if isinstance(r, Exception)]
    assert errors == []
    request = ApprovalClient(uri, uri, policy=policy, actor="x").get_request(name, v)
    assert sorted(s.actor for s in request.signoffs) == reviewers[:10]
    assert request.status is Status.APPLIED
    assert MlflowClient(uri, uri).get_model_version(name, v).current_stage == "Production"


@pytest.mark.parametrize("round_", range(4))
def test_last_two_signoffs_together_apply_once(mlflow_server: Server, round_: int) -> None:
    """Two final sign-offs landing together: right end state, one applied fact, one apply id."""
    uri = mlflow_server.uri
    policy = {
        "roles": {"ds": ["alice", "bob"], "owner": ["dave", "frank", "gina"]},
        "rules": [
            {
                "name": "prod",
                "models": ["race-*"],
                "stages": ["Production"],
                "levels": [[{"role": "ds", "count": 1}], [{"role": "owner", "count": 2}]],
            }
        ],
    }
    name = unique_name("race-model")
    old, new = register_versions(uri, name, 2)
    plain = MlflowClient(uri, uri)
    plain.transition_model_version_stage(name, old, "Production")
    as_ = lambda a: ApprovalClient(uri, uri, policy=policy, actor=a)  # noqa: E731
    as_("alice").request_transition(name, new, "Production", archive_existing_versions=True)
    as_("bob").approve(name, new)
    results = run_together(
        [lambda: as_("dave").approve(name, new), lambda: as_("frank").approve(name, new)]
    )
    assert not [r for r in results if isinstance(r, Exception)]
    assert any(isinstance(r, ApprovalRequest) and r.status is Status.APPLIED for r in results)

    mv = plain.get_model_version(name, new)
    assert mv.current_stage == "Production"
    assert plain.get_model_version(name, old).current_stage == "Archived"
    facts = VersionFacts(name, new, mv.tags)
    (rid,) = facts.requests
    assert rid in facts.applied  # one key: the request records one apply
    request = facts.request(rid, facts.requests[rid].created_at)
    assert sorted(s.actor for s in request.signoffs) == ["bob", "dave", "frank"]
    applied_keys = [k for k in mv.tags if k.startswith(PREFIX) and k.endswith(".applied")]
    assert len(applied_keys) == 1
