"""Issue #8 findings, each reproduced: no forged promotion through our API, total reading, stale
approvals, rename and delete, and a true drop-in on ungated targets (a real sqlite registry)."""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import timedelta
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from conftest import register_versions, unique_name
from mlflow_approvals import ApprovalClient, AuditUnavailable, InvalidRequest, NotAuthorized
from mlflow_approvals.errors import ApprovalError
from mlflow_approvals.lifecycle import Status, utcnow
from mlflow_approvals.tags import INDEX_KEY, PREFIX, request_key

RID = "0123456789ab"


class Reg:
    """A sqlite registry with one fresh model of two versions, and clients on it."""

    def __init__(self, uri: str, policy: dict[str, Any]) -> None:
        self.uri = uri
        self.policy = policy
        self.plain = MlflowClient(uri, uri)
        self.name = unique_name()
        self.v1, self.v2 = register_versions(uri, self.name, 2)

    def as_(self, actor: str) -> ApprovalClient:
        return ApprovalClient(self.uri, self.uri, policy=self.policy, actor=actor)

    def reserved(self, version: str, name: str | None = None) -> dict[str, str]:
        tags = self.plain.get_model_version(name or self.name, version).tags
        return {k: v for k, v in tags.items() if k.startswith(PREFIX)}

    def alias(self, alias: str = "champion") -> str | None:
        return self.plain.get_registered_model(self.name).aliases.get(alias)

    def forged_request(self, version: str, **changes: Any) -> str:
        """A request fact as a plain client could write it, for @champion on ``version``."""
        now = utcnow()
        fact = {
            "id": RID,
            "name": self.name,
            "version": version,
            "target": {
                "kind": "alias",
                "value": "champion",
                "action": "set",
                "archive_existing_versions": False,
            },
            "requester": "mallory",
            "created_at": now.isoformat(),
            "comment": None,
            "rule": "production",
            "levels": [[["data-scientist", 1]]],
            "separation_of_duties": True,
            "expires_at": (now + timedelta(days=1)).isoformat(),
            "policy_hash": "sha256:x",
        }
        fact.update(changes)
        return json.dumps(fact)

    def approve_all(self, version: str) -> Any:
        self.as_("bob").approve(self.name, version)
        self.as_("carol").approve(self.name, version)
        return self.as_("dave").approve(self.name, version)


@pytest.fixture
def reg(sqlite_uri: str, policy_dict: dict[str, Any]) -> Reg:
    """A fresh two-version model on a sqlite registry, under the example policy."""
    return Reg(sqlite_uri, policy_dict)


# -- 1. a fact that did not come through the gate never promotes ----------------------------


def test_create_model_version_refuses_reserved_tags_and_creates_nothing(reg):
    """create_model_version carrying a reserved tag is refused, and no version is created."""
    forged = {request_key(RID): reg.forged_request("3")}
    with pytest.raises(NotAuthorized, match="reserved prefix"):
        reg.as_("mallory").create_model_version(reg.name, "file:///tmp/m", tags=forged)
    assert len(reg.plain.search_model_versions(f"name = '{reg.name}'")) == 2


def test_create_registered_model_refuses_reserved_tags(reg):
    """create_registered_model carrying a reserved tag is refused, and no model is created."""
    name = unique_name()
    with pytest.raises(NotAuthorized, match="reserved prefix"):
        reg.as_("mallory").create_registered_model(name, tags={INDEX_KEY: "pending"})
    with pytest.raises(MlflowException):
        reg.plain.get_registered_model(name)


def test_copy_model_version_leaves_approval_state_behind(reg):
    """A copy never carries reserved tags, even facts forged to name the destination version."""
    dst = unique_name()
    reg.plain.create_registered_model(dst)
    forged = reg.forged_request("1").replace(reg.name, dst)
    reg.plain.set_model_version_tag(reg.name, reg.v1, request_key(RID), forged)
    reg.plain.set_model_version_tag(reg.name, reg.v1, "team", "fraud")
    copied = reg.as_("mallory").copy_model_version(f"models:/{reg.name}/{reg.v1}", dst)
    tags = reg.plain.get_model_version(dst, copied.version).tags
    assert tags.get("team") == "fraud"
    assert not [k for k in tags if k.startswith(PREFIX)]


def test_request_fact_asking_less_than_its_rule_cannot_promote(reg):
    """A planted request fact with fewer levels than its rule is refused at sign-off."""
    reg.plain.set_model_version_tag(reg.name, reg.v1, request_key(RID), reg.forged_request("1"))
    with pytest.raises(NotAuthorized, match="asks for less than rule 'production'"):
        reg.as_("bob").approve(reg.name, reg.v1)
    assert reg.alias() is None


def test_request_fact_naming_an_unknown_rule_cannot_promote(reg):
    """A planted request fact naming a rule the policy does not have is refused."""
    fact = reg.forged_request(
        "1",
        rule="lenient",
        levels=[[["data-scientist", 1], ["ml-engineer", 1]], [["business-owner", 1]]],
    )
    reg.plain.set_model_version_tag(reg.name, reg.v1, request_key(RID), fact)
    with pytest.raises(NotAuthorized, match="filed under rule 'lenient'"):
        reg.as_("bob").approve(reg.name, reg.v1)
    assert reg.alias() is None


def test_request_fact_without_the_rules_deadline_cannot_promote(reg):
    """A planted request fact that never expires, under a rule with a deadline, is refused."""
    levels = [[["data-scientist", 1], ["ml-engineer", 1]], [["business-owner", 1]]]
    fact = reg.forged_request("1", levels=levels, expires_at=None)
    reg.plain.set_model_version_tag(reg.name, reg.v1, request_key(RID), fact)
    with pytest.raises(NotAuthorized, match="deadline"):
        reg.as_("bob").approve(reg.name, reg.v1)


# -- 3. reading is total --------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix, value",
    [
        ("", "[]"),
        ("", "null"),
        ("", "{not json"),
        (".s.bob-12345678", "null"),
        (".applied", json.dumps({"actor": "x", "time": "2026-01-01T00:00:00"})),
        (".cancel", json.dumps({"actor": "x", "time": 5})),
    ],
)
def test_malformed_fact_breaks_no_reader(reg, suffix, value, caplog):
    """Every reader goes on past a malformed reserved tag, and it is reported once."""
    good = reg.as_("alice").request_alias(reg.name, reg.v2, "champion")
    reg.plain.set_model_version_tag(reg.name, reg.v1, request_key(RID) + suffix, value)
    reg.plain.set_model_version_tag(reg.name, reg.v1, INDEX_KEY, "pending")
    client = reg.as_("bob")
    with caplog.at_level(logging.WARNING, logger="mlflow_approvals.tags"):
        assert [r.id for r in client.list_requests()] == [good.id]  # a fresh registry
        assert [r.id for r in client.list_requests(reg.name)] == [good.id]
        with pytest.raises(ApprovalError):
            client.get_request(reg.name, reg.v1)
        assert client.approve(reg.name, reg.v2).status is Status.PENDING
        client.verify_audit(reg.name)  # must not raise
    warned = [r for r in caplog.records if request_key(RID) + suffix in r.getMessage()]
    assert len(warned) == 1


def test_naive_timestamp_in_a_signoff_is_skipped_not_compared(reg):
    """A sign-off fact with a naive time is ignored; the request's status still derives."""
    req = reg.as_("alice").request_alias(reg.name, reg.v1, "champion")
    fact = {
        "actor": "bob",
        "decision": "approve",
        "role": "data-scientist",
        "level": 1,
        "time": "2026-01-01T00:00:00",
    }
    from mlflow_approvals.tags import signoff_key

    reg.plain.set_model_version_tag(reg.name, reg.v1, signoff_key(req.id, "bob"), json.dumps(fact))
    got = reg.as_("x").get_request(reg.name, reg.v1)
    assert got.status is Status.PENDING and got.signoffs == ()


# -- 6. stale approvals ---------------------------------------------------------------------


def _approved_not_applied(reg: Reg, version: str) -> None:
    """File @champion for ``version`` and sign every level, with the apply's event failing."""
    reg.as_("alice").request_alias(reg.name, version, "champion")
    reg.as_("bob").approve(reg.name, version)
    reg.as_("carol").approve(reg.name, version)
    dave = reg.as_("dave")
    append = dave.audit.append

    def fail_on_apply(event: Any, run_id: str | None = None) -> str:
        if event["type"].endswith(".alias.set"):
            raise AuditUnavailable("audit store down (test)")
        return append(event, run_id=run_id)

    dave.audit.append = fail_on_apply  # type: ignore[method-assign]
    with pytest.raises(AuditUnavailable):
        dave.approve(reg.name, version)
    assert reg.as_("x").get_request(reg.name, version).status is Status.APPROVED


def test_approved_request_cannot_be_applied_after_its_deadline(reg):
    """An approval whose apply failed cannot be applied once the request's deadline passed."""
    _approved_not_applied(reg, reg.v1)
    late = reg.as_("dave")
    late.engine.clock = lambda: utcnow() + timedelta(days=8)
    rid = late.get_request(reg.name, reg.v1).id
    with pytest.raises(InvalidRequest, match="expired"):
        late.apply(reg.name, reg.v1, request_id=rid)
    assert reg.alias() is None
    assert late.get_request(reg.name, reg.v1).status is Status.EXPIRED


def test_approved_request_is_superseded_when_another_version_took_the_target(reg):
    """An old approval cannot roll the target back after another version took it."""
    _approved_not_applied(reg, reg.v1)
    reg.as_("alice").request_alias(reg.name, reg.v2, "champion")
    reg.approve_all(reg.v2)
    assert str(reg.alias()) == reg.v2
    with pytest.raises(InvalidRequest, match="request it again"):
        reg.as_("dave").apply(reg.name, reg.v1)
    assert str(reg.alias()) == reg.v2
    after = reg.as_("x").get_request(reg.name, reg.v1)
    assert after.status is Status.SUPERSEDED
    report = reg.as_("x").verify_audit(reg.name)
    assert report.ok, [(e.status, e.type, e.version, e.reason) for e in report.events] + list(
        report.notes
    )


# -- 9. rename and delete -------------------------------------------------------------------


def test_version_holding_a_gated_alias_cannot_be_deleted(reg):
    """Deleting the version a gated alias points at is refused, and the alias stays."""
    reg.as_("alice").request_alias(reg.name, reg.v1, "champion")
    reg.approve_all(reg.v1)
    with pytest.raises(NotAuthorized, match="cannot be deleted"):
        reg.as_("mallory").delete_model_version(reg.name, reg.v1)
    assert str(reg.alias()) == reg.v1
    with tempfile.TemporaryDirectory() as tmp:
        events = [json.loads(raw) for _, raw in reg.as_("x").audit.read(reg.name, tmp)]
    denied = [e for e in events if e["type"].endswith(".attempt.denied")]
    assert [e["data"]["actor"]["id"] for e in denied] == ["mallory"]


def test_rename_refused_while_a_request_is_open(reg):
    """A model with an open request cannot be renamed (its facts are bound to the name)."""
    reg.as_("alice").request_alias(reg.name, reg.v1, "champion")
    with pytest.raises(NotAuthorized, match="cannot be renamed"):
        reg.as_("alice").rename_registered_model(reg.name, unique_name())
    assert reg.plain.get_registered_model(reg.name).name == reg.name


def test_deleting_a_version_with_history_is_recorded_and_verifies(reg):
    """A recorded deletion keeps the deleted version's events anchored: verify passes."""
    req = reg.as_("alice").request_alias(reg.name, reg.v1, "champion")
    reg.as_("alice").cancel(reg.name, reg.v1, request_id=req.id)
    reg.as_("alice").delete_model_version(reg.name, reg.v1)
    report = reg.as_("x").verify_audit(reg.name)
    assert report.ok, report


def test_version_deleted_by_a_plain_client_fails_verify(reg):
    """A version with history deleted behind the package's back makes verify fail."""
    req = reg.as_("alice").request_alias(reg.name, reg.v1, "champion")
    reg.as_("alice").cancel(reg.name, reg.v1, request_id=req.id)
    reg.plain.delete_model_version(reg.name, reg.v1)
    assert not reg.as_("x").verify_audit(reg.name).ok


def test_renamed_model_keeps_a_verifiable_trail_under_its_old_name(reg):
    """After a rename with nothing open, the old name's log still verifies."""
    req = reg.as_("alice").request_alias(reg.name, reg.v1, "champion")
    reg.as_("alice").cancel(reg.name, reg.v1, request_id=req.id)
    new = unique_name()
    reg.as_("alice").rename_registered_model(reg.name, new)
    report = reg.as_("x").verify_audit(reg.name)
    assert report.ok, report


# -- 10. a true drop-in on ungated targets ---------------------------------------------------


def _error(call: Any) -> tuple[str, str]:
    with pytest.raises(MlflowException) as info:
        call()
    assert not isinstance(info.value, ApprovalError)
    return info.value.error_code, info.value.message


def test_unknown_stage_gets_mlflows_own_error(reg):
    """An unknown stage is refused by MLflow, with MLflow's message, as MlflowClient would."""
    ours = _error(lambda: reg.as_("a").transition_model_version_stage(reg.name, reg.v1, "prod"))
    theirs = _error(lambda: reg.plain.transition_model_version_stage(reg.name, reg.v1, "prod"))
    assert ours == theirs


@pytest.mark.parametrize("alias", ["v3", "latest", "bad alias!"])
def test_invalid_ungated_alias_gets_mlflows_own_error(reg, alias):
    """An alias MLflow refuses gets MLflow's error through ApprovalClient too."""
    ours = _error(lambda: reg.as_("a").set_registered_model_alias(reg.name, alias, reg.v1))
    theirs = _error(lambda: reg.plain.set_registered_model_alias(reg.name, alias, reg.v1))
    assert ours == theirs


# -- 12. sign-off keys cannot be made to collide ---------------------------------------------


def test_signers_whose_short_hashes_collide_both_keep_their_signoff(sqlite_uri, policy_dict):
    """Two names sharing the first 32 bits of their hash (found by search) keep two sign-offs."""
    a, b = "bob\u0100\u0126\u0161x", "bob\u0101\u0158\u019cx"  # same 8 hex digits of SHA-256
    policy_dict["roles"]["data-scientist"] = ["alice", a, b]
    policy_dict["rules"][0]["levels"] = [[{"role": "data-scientist", "count": 2}]]
    reg = Reg(sqlite_uri, policy_dict)
    reg.as_("alice").request_alias(reg.name, reg.v1, "champion")
    reg.as_(a).approve(reg.name, reg.v1)
    reg.as_(b).approve(reg.name, reg.v1)
    after = reg.as_("x").get_request(reg.name, reg.v1)
    assert sorted(s.actor for s in after.signoffs) == sorted([a, b])
    assert after.status is Status.APPLIED


def test_reconcile_lists_a_malformed_fact_with_its_problem(reg):
    """audit reconcile reports a malformed reserved tag by key and reason, and fails."""
    reg.plain.set_model_version_tag(reg.name, reg.v1, request_key(RID), "[]")
    report = reg.as_("x").reconcile(reg.name)
    tags = [c for c in report.changes if c.what == "tag" and c.key == request_key(RID)]
    assert len(tags) == 1 and "malformed" in str(tags[0].actual)
    assert not report.ok


def test_deleting_a_model_never_gated_writes_no_audit_log(reg):
    """A model with no approval history is deleted as by MlflowClient: no audit run appears."""
    reg.as_("alice").delete_registered_model(reg.name)
    assert reg.as_("x").audit.run_ids(reg.name, create=False) == []


@pytest.mark.parametrize("value", ["[]", "null", '{"id": 5}'])
def test_command_line_readers_survive_a_malformed_fact(reg, policy_file, value):
    """list, status, audit verify and reconcile run to their normal exit past a malformed fact."""
    from click.testing import CliRunner

    from mlflow_approvals.cli import main

    reg.as_("alice").request_alias(reg.name, reg.v2, "champion")
    reg.plain.set_model_version_tag(reg.name, reg.v1, request_key(RID), value)
    reg.plain.set_model_version_tag(reg.name, reg.v1, INDEX_KEY, "pending")

    def run(*args: str) -> Any:
        head = ["--tracking-uri", reg.uri, "--policy", str(policy_file), "--as", "bob"]
        return CliRunner().invoke(main, [*head, *args])

    listed = run("list", "--model", reg.name)
    assert listed.exit_code == 0 and reg.name in listed.output
    assert run("status", reg.name, reg.v2).exit_code == 3  # pending
    assert run("audit", "verify", reg.name).exit_code == 0
    reconciled = run("audit", "reconcile", reg.name)
    assert reconciled.exit_code == 1  # a malformed fact fails reconcile, as a report
    assert "malformed" in reconciled.output and "Traceback" not in reconciled.output


def test_a_planted_request_without_an_evidence_digest_is_never_applied(reg):
    """A policy-shaped request fact planted by a plain client, signed by everyone, is refused."""
    levels = [[["data-scientist", 1], ["ml-engineer", 1]], [["business-owner", 1]]]
    reg.plain.set_model_version_tag(
        reg.name, reg.v1, request_key(RID), reg.forged_request("1", levels=levels)
    )
    reg.as_("bob").approve(reg.name, reg.v1)
    reg.as_("carol").approve(reg.name, reg.v1)
    with pytest.raises(NotAuthorized, match="no evidence digest"):
        reg.as_("dave").approve(reg.name, reg.v1)
    assert reg.alias() is None
