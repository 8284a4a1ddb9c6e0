"""ApprovalClient against a real MLflow: a sqlite registry and the session's `mlflow server`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_approvals import (
    ApprovalClient,
    ApprovalError,
    ApprovalPending,
    InvalidRequest,
    ModelVersionNotFound,
    NotAuthorized,
    PolicyError,
    RequestNotFound,
)
from mlflow_approvals.lifecycle import Status
from mlflow_approvals.tags import INDEX_KEY, PREFIX

Factory = Callable[[str], ApprovalClient]


@pytest.fixture
def as_(tracking_uri: str, policy_dict: dict[str, Any]) -> Factory:
    """A client acting as the given user, with the test policy."""

    def make(actor: str) -> ApprovalClient:
        return ApprovalClient(tracking_uri, tracking_uri, policy=policy_dict, actor=actor)

    return make


@pytest.fixture
def plain(tracking_uri: str) -> MlflowClient:
    """A plain MlflowClient on the same registry."""
    return MlflowClient(tracking_uri, tracking_uri)


def reserved_tags(plain: MlflowClient, name: str, version: str) -> dict[str, str]:
    tags = plain.get_model_version(name, version).tags
    return {k: v for k, v in tags.items() if k.startswith(PREFIX)}


def sign_level_one(as_: Factory, name: str, version: str) -> None:
    as_("bob").approve(name, version)
    as_("carol").approve(name, version)


# -- gating -----------------------------------------------------------------------------


@pytest.mark.rest
def test_gated_transition_raises_pending_and_changes_nothing(as_, plain, make_model):
    """A gated stage transition files a request, raises ApprovalPending, and leaves the stage."""
    name, (v,) = make_model()
    with pytest.raises(ApprovalPending) as info:
        as_("alice").transition_model_version_stage(name, v, "Production")
    request = info.value.request
    assert request.status is Status.PENDING
    assert (request.name, request.version, request.target) == (name, v, "Production")
    assert request.requester == "alice"
    assert plain.get_model_version(name, v).current_stage == "None"


def test_pending_is_not_a_promotion_for_mlflowclient_callers(as_, make_model):
    """ApprovalPending is an MlflowException, so code expecting MlflowClient cannot miss it."""
    name, (v,) = make_model()
    with pytest.raises(MlflowException) as info:
        as_("alice").transition_model_version_stage(name, v, "Production")
    assert isinstance(info.value, ApprovalPending)
    assert info.value.get_http_status_code() == 409


@pytest.mark.rest
def test_ungated_target_behaves_like_mlflowclient(as_, plain, make_model):
    """A stage no rule gates is changed at once, exactly as MlflowClient would."""
    name, (v,) = make_model()
    mv = as_("alice").transition_model_version_stage(name, v, "Staging")
    assert mv.current_stage == "Staging"
    assert plain.get_model_version(name, v).current_stage == "Staging"
    assert reserved_tags(plain, name, v) == {}


def test_ungated_model_name_is_not_gated(as_, plain, make_model):
    """A model whose name no rule matches passes straight through, even to Production."""
    name, (v,) = make_model(prefix="churn-model")
    as_("alice").transition_model_version_stage(name, v, "Production")
    assert plain.get_model_version(name, v).current_stage == "Production"


def test_request_transition_on_ungated_target_is_applied_at_once(as_, plain, make_model):
    """request_transition on an ungated target returns a request with status applied."""
    name, (v,) = make_model()
    request = as_("alice").request_transition(name, v, "Staging")
    assert request.status is Status.APPLIED
    assert plain.get_model_version(name, v).current_stage == "Staging"


def test_identical_open_request_is_found_not_duplicated(as_, make_model):
    """Asking twice for the same target returns the same open request: never two."""
    name, (v,) = make_model()
    first = as_("alice").request_transition(name, v, "Production")
    with pytest.raises(ApprovalPending) as info:
        as_("bob").transition_model_version_stage(name, v, "production")
    assert info.value.request.id == first.id
    assert len(as_("alice").list_requests(name, status=None)) == 1


def test_default_deny_refuses_unmatched_target(tracking_uri, policy_dict, plain, make_model):
    """With `default: deny`, a target no rule matches is refused with NotAuthorized."""
    policy_dict["default"] = "deny"
    client = ApprovalClient(tracking_uri, tracking_uri, policy=policy_dict, actor="alice")
    name, (v,) = make_model()
    with pytest.raises(NotAuthorized, match="default is deny"):
        client.transition_model_version_stage(name, v, "Staging")
    assert plain.get_model_version(name, v).current_stage == "None"


@pytest.mark.rest
def test_alias_set_is_gated_and_applied_after_signoff(as_, plain, make_model):
    """Setting a gated alias waits for sign-off, then points the alias at the version."""
    name, (v,) = make_model()
    with pytest.raises(ApprovalPending):
        as_("alice").set_registered_model_alias(name, "champion", v)
    assert plain.get_registered_model(name).aliases == {}
    sign_level_one(as_, name, v)
    request = as_("dave").approve(name, v)
    assert request.status is Status.APPLIED
    assert str(plain.get_model_version_by_alias(name, "champion").version) == v


@pytest.mark.rest
def test_alias_delete_is_gated(as_, plain, make_model):
    """Deleting a gated alias waits for sign-off on the version it points at, then deletes it."""
    name, (v,) = make_model()
    plain.set_registered_model_alias(name, "champion", v)
    with pytest.raises(ApprovalPending) as info:
        as_("alice").delete_registered_model_alias(name, "champion")
    assert info.value.request.action == "delete"
    assert "champion" in plain.get_registered_model(name).aliases
    sign_level_one(as_, name, v)
    as_("dave").approve(name, v)
    assert "champion" not in plain.get_registered_model(name).aliases


def test_ungated_alias_is_set_directly(as_, plain, make_model):
    """An alias no rule names is set at once."""
    name, (v,) = make_model()
    as_("alice").set_registered_model_alias(name, "candidate", v)
    assert str(plain.get_model_version_by_alias(name, "candidate").version) == v


# -- the full cycle and its request view ---------------------------------------------------


@pytest.mark.rest
def test_full_cycle_applies_with_archive_existing(as_, plain, make_model):
    """The sign-off completing the last level applies the stage, archiving the old Production."""
    name, (old, new) = make_model(count=2)
    plain.transition_model_version_stage(name, old, "Production")
    as_("alice").request_transition(name, new, "Production", archive_existing_versions=True)
    sign_level_one(as_, name, new)
    assert plain.get_model_version(name, new).current_stage == "None"
    request = as_("dave").approve(name, new, comment="go")
    assert request.status is Status.APPLIED
    assert plain.get_model_version(name, new).current_stage == "Production"
    assert plain.get_model_version(name, old).current_stage == "Archived"


def test_without_archive_existing_old_version_stays(as_, plain, make_model):
    """archive_existing_versions=False leaves the previous Production version where it was."""
    name, (old, new) = make_model(count=2)
    plain.transition_model_version_stage(name, old, "Production")
    as_("alice").request_transition(name, new, "Production")
    sign_level_one(as_, name, new)
    as_("dave").approve(name, new)
    assert plain.get_model_version(name, old).current_stage == "Production"


def test_request_view_has_the_documented_attributes(as_, make_model):
    """ApprovalRequest exposes id, target, status, requester, signoffs, open_level, missing."""
    name, (v,) = make_model()
    as_("alice").request_transition(name, v, "Production", comment="ready")
    request = as_("bob").approve(name, v, comment="looks good")
    assert len(request.id) == 12
    assert request.archive_existing_versions is False
    assert request.created_at.tzinfo is not None
    assert request.open_level == 1
    assert [(m.role, m.count) for m in request.missing] == [("ml-engineer", 1)]
    (signoff,) = request.signoffs
    assert (signoff.actor, signoff.role, signoff.decision, signoff.comment) == (
        "bob",
        "data-scientist",
        "approve",
        "looks good",
    )
    assert signoff.time.tzinfo is not None
    assert request.to_dict()["signoffs"][0]["meaning"] == "approval as data-scientist (level 1)"


def test_get_request_reads_back_the_same_request(as_, make_model):
    """get_request without an id returns the version's open request with its sign-offs."""
    name, (v,) = make_model()
    filed = as_("alice").request_transition(name, v, "Production")
    as_("carol").approve(name, v)
    read = as_("someone").get_request(name, v)
    assert read.id == filed.id
    assert [s.actor for s in read.signoffs] == ["carol"]


@pytest.mark.rest
def test_list_requests_filters_by_status_and_model(as_, make_model):
    """list_requests returns pending requests by default, and others when asked."""
    name, (v1, v2) = make_model(count=2)
    as_("alice").request_transition(name, v1, "Production")
    as_("alice").request_transition(name, v2, "Production")
    as_("alice").cancel(name, v2)
    pending = as_("x").list_requests(name)
    assert [(r.version, r.status) for r in pending] == [(v1, Status.PENDING)]
    cancelled = as_("x").list_requests(name, status="cancelled")
    assert [r.version for r in cancelled] == [v2]
    assert len(as_("x").list_requests(name, status=None)) == 2


@pytest.mark.rest
def test_list_requests_is_one_tag_query(as_, make_model, mocker):
    """Listing pending requests is a server-side tag query, never a read of every version."""
    name, (v,) = make_model()
    as_("alice").request_transition(name, v, "Production")
    client = as_("x")
    store = client.registry.store
    search = mocker.spy(store, "search_model_versions")
    get = mocker.spy(store, "get_model_version")
    assert len(client.list_requests()) >= 1
    assert get.call_count == 0
    assert search.call_count == 1
    assert f"tags.`{INDEX_KEY}` = 'pending'" in search.call_args.kwargs["filter_string"]


def test_unsupported_status_in_list_is_a_clear_error(as_):
    """An unknown status filter names the valid ones."""
    with pytest.raises(InvalidRequest, match="use one of pending, approved"):
        as_("x").list_requests(status="done")


# -- the rules --------------------------------------------------------------------------------


def test_requester_cannot_sign_own_request(as_, plain, make_model):
    """Separation of duties: the requester's own approval is refused and nothing is written."""
    name, (v,) = make_model()
    as_("alice").request_transition(name, v, "Production")
    before = reserved_tags(plain, name, v)
    with pytest.raises(NotAuthorized, match="separation of duties"):
        as_("alice").approve(name, v)
    assert reserved_tags(plain, name, v) == before


def test_separation_of_duties_can_be_turned_off(tracking_uri, policy_dict, make_model):
    """A rule with separation_of_duties: false lets the requester sign."""
    policy_dict["rules"][0]["separation_of_duties"] = False
    client = ApprovalClient(tracking_uri, tracking_uri, policy=policy_dict, actor="alice")
    name, (v,) = make_model()
    client.request_transition(name, v, "Production")
    assert client.approve(name, v).signoffs[0].actor == "alice"


def test_actor_without_role_at_open_level_is_refused_and_nothing_written(as_, plain, make_model):
    """Someone who holds no role of the open level is refused with NotAuthorized; no tag changes."""
    name, (v,) = make_model()
    as_("alice").request_transition(name, v, "Production")
    before = reserved_tags(plain, name, v)
    with pytest.raises(NotAuthorized, match="holds no role"):
        as_("mallory").approve(name, v)
    assert reserved_tags(plain, name, v) == before


def test_a_person_signs_once(as_, plain, make_model):
    """A retried approval changes nothing; the other decision after one's own is refused."""
    name, (v,) = make_model()
    as_("alice").request_transition(name, v, "Production")
    as_("bob").approve(name, v)
    before = reserved_tags(plain, name, v)
    again, new = as_("bob").sign_request(name, v, "approve")
    assert not new and [s.actor for s in again.signoffs] == ["bob"]
    assert reserved_tags(plain, name, v) == before
    with pytest.raises(NotAuthorized, match="already signed"):
        as_("bob").reject(name, v, "changed my mind")
    assert reserved_tags(plain, name, v) == before


def test_one_signoff_counts_toward_one_requirement(tracking_uri, policy_dict, make_model):
    """A person holding both roles of a level fills only the first; the other stays missing."""
    policy_dict["roles"]["ml-engineer"].append("bob")
    as_ = lambda a: ApprovalClient(tracking_uri, tracking_uri, policy=policy_dict, actor=a)  # noqa: E731
    name, (v,) = make_model()
    as_("alice").request_transition(name, v, "Production")
    request = as_("bob").approve(name, v)
    assert request.signoffs[0].role == "data-scientist"
    assert request.open_level == 1
    assert [m.role for m in request.missing] == ["ml-engineer"]


def test_level_two_opens_only_after_level_one(as_, plain, make_model):
    """An early sign-off is refused with a message naming the open level; nothing written."""
    name, (v,) = make_model()
    as_("alice").request_transition(name, v, "Production")
    as_("bob").approve(name, v)
    before = reserved_tags(plain, name, v)
    with pytest.raises(NotAuthorized, match="level 1 is open"):
        as_("dave").approve(name, v)
    assert reserved_tags(plain, name, v) == before


def test_one_rejection_ends_the_request(as_, plain, make_model):
    """A single rejection makes the request rejected; further sign-offs are refused."""
    name, (v,) = make_model()
    as_("alice").request_transition(name, v, "Production")
    as_("bob").approve(name, v)
    request = as_("carol").reject(name, v, comment="drift on segment B")
    assert request.status is Status.REJECTED
    with pytest.raises(InvalidRequest, match="rejected"):
        as_("erin").approve(name, v, request_id=request.id)
    assert plain.get_model_version(name, v).current_stage == "None"


def test_reject_needs_a_reason(as_, make_model):
    """reject without a comment is refused."""
    name, (v,) = make_model()
    as_("alice").request_transition(name, v, "Production")
    with pytest.raises(InvalidRequest, match="reason"):
        as_("bob").reject(name, v, comment=" ")


def test_later_level_member_may_reject_early(as_, make_model):
    """A rejection may come from any role of the rule, even one whose level is not yet open."""
    name, (v,) = make_model()
    as_("alice").request_transition(name, v, "Production")
    assert as_("dave").reject(name, v, comment="no").status is Status.REJECTED


def test_outsider_cannot_reject(as_, make_model):
    """Someone holding none of the rule's roles cannot reject."""
    name, (v,) = make_model()
    as_("alice").request_transition(name, v, "Production")
    with pytest.raises(NotAuthorized, match="none of the roles"):
        as_("mallory").reject(name, v, comment="no")


def test_applied_request_cannot_be_signed(as_, make_model):
    """A sign-off on an applied request is refused."""
    name, (v,) = make_model()
    request = as_("alice").request_transition(name, v, "Production")
    sign_level_one(as_, name, v)
    as_("dave").approve(name, v)
    with pytest.raises(InvalidRequest, match="applied"):
        as_("frank").approve(name, v, request_id=request.id)


def test_cancelled_request_cannot_be_signed(as_, make_model):
    """A sign-off on a cancelled request is refused."""
    name, (v,) = make_model()
    request = as_("alice").request_transition(name, v, "Production")
    assert as_("alice").cancel(name, v, comment="wrong version").status is Status.CANCELLED
    with pytest.raises(InvalidRequest, match="cancelled"):
        as_("bob").approve(name, v, request_id=request.id)


def test_only_requester_or_admin_may_cancel(as_, make_model):
    """Cancelling someone else's request is refused unless the actor is an admin."""
    name, (v,) = make_model()
    as_("alice").request_transition(name, v, "Production")
    with pytest.raises(NotAuthorized, match="only the requester"):
        as_("bob").cancel(name, v)
    assert as_("root").cancel(name, v).status is Status.CANCELLED


def test_expired_request_cannot_be_signed(tracking_uri, policy_dict, make_model):
    """After the policy's time limit the request is expired and takes no sign-off."""
    policy_dict["rules"][0]["expires_after"] = "1s"
    as_ = lambda a: ApprovalClient(tracking_uri, tracking_uri, policy=policy_dict, actor=a)  # noqa: E731
    name, (v,) = make_model()
    request = as_("alice").request_transition(name, v, "Production")
    time.sleep(1.2)
    assert as_("x").get_request(name, v).status is Status.EXPIRED
    with pytest.raises(InvalidRequest, match="expired"):
        as_("bob").approve(name, v, request_id=request.id)
    assert as_("x").list_requests(name) == []


def test_new_request_may_follow_an_ended_one(as_, make_model):
    """Once a request has ended, a new one for the same target is filed (a different id)."""
    name, (v,) = make_model()
    first = as_("alice").request_transition(name, v, "Production")
    as_("bob").reject(name, v, comment="not yet")
    second = as_("alice").request_transition(name, v, "Production")
    assert second.id != first.id
    assert second.status is Status.PENDING
    assert as_("x").get_request(name, v).id == second.id


def test_two_open_requests_need_a_request_id(as_, make_model):
    """With a stage and an alias request open on one version, approve asks for request_id."""
    name, (v,) = make_model()
    stage = as_("alice").request_transition(name, v, "Production")
    as_("alice").request_alias(name, v, "champion")
    with pytest.raises(InvalidRequest, match="pass request_id"):
        as_("bob").approve(name, v)
    assert as_("bob").approve(name, v, request_id=stage.id).signoffs[0].actor == "bob"


def test_request_nobody_else_can_sign_is_refused(tracking_uri, policy_dict, make_model):
    """A request that separation of duties makes unsatisfiable is refused when filed."""
    policy_dict["roles"]["business-owner"] = ["dave"]
    as_ = lambda a: ApprovalClient(tracking_uri, tracking_uri, policy=policy_dict, actor=a)  # noqa: E731
    name, (v,) = make_model()
    with pytest.raises(InvalidRequest, match="cannot be satisfied"):
        as_("dave").request_transition(name, v, "Production")


def test_already_in_target_is_refused(as_, plain, make_model):
    """Asking for the stage a version already has is refused: there is nothing to approve."""
    name, (v,) = make_model()
    plain.transition_model_version_stage(name, v, "Production")
    with pytest.raises(InvalidRequest, match="nothing to approve"):
        as_("alice").request_transition(name, v, "Production")


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.rest
def test_unknown_model_is_a_clear_error(as_):
    """A request for a model that does not exist names it and says what to check."""
    with pytest.raises(ModelVersionNotFound, match="does not exist"):
        as_("alice").request_transition("fraud-nope", 1, "Production")


@pytest.mark.rest
def test_unknown_version_is_a_clear_error_and_writes_nothing(as_, plain, make_model):
    """A request for a missing version is refused; the real version's tags are untouched."""
    name, (v,) = make_model()
    with pytest.raises(ModelVersionNotFound, match="version 99"):
        as_("alice").request_transition(name, 99, "Production")
    assert reserved_tags(plain, name, v) == {}


def test_unknown_stage_is_a_clear_error(as_, make_model):
    """An unknown stage lists the valid ones."""
    name, (v,) = make_model()
    with pytest.raises(InvalidRequest, match="Production"):
        as_("alice").request_transition(name, v, "Prod")


@pytest.mark.rest
def test_invalid_alias_is_a_clear_error(as_, make_model):
    """A malformed alias is refused before anything is written."""
    name, (v,) = make_model()
    with pytest.raises(InvalidRequest, match="invalid alias"):
        as_("alice").request_alias(name, v, "bad alias!")


def test_unknown_alias_deletion_is_a_clear_error(as_, make_model):
    """Deleting an alias that does not exist is a not-found error naming it."""
    name, _ = make_model()
    with pytest.raises(ModelVersionNotFound, match="alias 'champion'"):
        as_("alice").delete_registered_model_alias(name, "champion")


@pytest.mark.rest
def test_oversized_comment_is_refused_and_nothing_written(as_, plain, make_model):
    """A comment over 5,000 characters is refused with the limit in the message."""
    name, (v,) = make_model()
    with pytest.raises(InvalidRequest, match="5000"):
        as_("alice").request_transition(name, v, "Production", comment="x" * 5001)
    assert reserved_tags(plain, name, v) == {}


def test_no_open_request_is_request_not_found(as_, make_model):
    """Approving a version with no open request says how to file one."""
    name, (v,) = make_model()
    with pytest.raises(RequestNotFound, match="no open request"):
        as_("bob").approve(name, v)


def test_unknown_request_id_is_request_not_found(as_, make_model):
    """An unknown request id is RequestNotFound."""
    name, (v,) = make_model()
    as_("alice").request_transition(name, v, "Production")
    with pytest.raises(RequestNotFound):
        as_("bob").approve(name, v, request_id="0123456789ab")


@pytest.mark.rest
def test_reserved_tag_writes_are_refused(as_, plain, make_model):
    """Writing or deleting a tag under the reserved prefix through ApprovalClient is refused."""
    name, (v,) = make_model()
    client = as_("alice")
    with pytest.raises(NotAuthorized, match="reserved prefix"):
        client.set_model_version_tag(name, v, INDEX_KEY, "idle")
    with pytest.raises(NotAuthorized):
        client.delete_model_version_tag(name, v, INDEX_KEY)
    with pytest.raises(NotAuthorized):
        client.set_registered_model_tag(name, PREFIX + "x", "1")
    client.set_model_version_tag(name, v, "team", "fraud")
    assert plain.get_model_version(name, v).tags["team"] == "fraud"


def test_errors_share_one_root_with_4xx_codes():
    """Every error is an ApprovalError (an MlflowException) that maps to a 4xx status."""
    import mlflow_approvals.errors as errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, ApprovalError) and issubclass(cls, MlflowException)
        error = cls("x", None) if cls in (ApprovalPending, errors.ChecksFailed) else cls("x")
        assert 400 <= error.get_http_status_code() < 500, name


def test_bad_policy_is_refused_when_the_client_is_built(tmp_path, sqlite_uri):
    """A malformed policy file fails ApprovalClient() with PolicyError naming the file."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "roles: {a: [x]}\nrules:\n  - name: r\n    stages: [Production]\n"
        "    levels: [[{role: nobody, count: 1}]]\n"
    )
    with pytest.raises(PolicyError, match=r"bad\.yaml"):
        ApprovalClient(sqlite_uri, sqlite_uri, policy=str(path))


def test_policy_from_environment(monkeypatch, policy_file, sqlite_uri):
    """MLFLOW_APPROVALS_POLICY names the policy when none is passed."""
    monkeypatch.setenv("MLFLOW_APPROVALS_POLICY", str(policy_file))
    client = ApprovalClient(sqlite_uri, sqlite_uri, actor="alice")
    assert client.policy.match("fraud-x", "stage", "Production") is not None


def test_actor_defaults_to_tracking_username(monkeypatch, sqlite_uri):
    """Without actor=, the actor is MLFLOW_TRACKING_USERNAME."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "erin")
    assert ApprovalClient(sqlite_uri, sqlite_uri).actor == "erin"


def test_actor_falls_back_to_os_user(monkeypatch, sqlite_uri):
    """Without actor= or MLFLOW_TRACKING_USERNAME, the actor is the OS user."""
    import getpass

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    assert ApprovalClient(sqlite_uri, sqlite_uri).actor == getpass.getuser()


@pytest.mark.rest
def test_copied_version_does_not_inherit_requests(as_, plain, make_model):
    """copy_model_version copies tags, but a request belongs to the version it was filed on."""
    name, (v,) = make_model()
    as_("alice").request_transition(name, v, "Production")
    copy_name = name + "-copy"
    copied = plain.copy_model_version(f"models:/{name}/{v}", copy_name)
    with pytest.raises(RequestNotFound):
        as_("x").get_request(copy_name, str(copied.version))


def test_two_role_signer_never_blocks_the_request(tracking_uri, policy_dict, make_model):
    """A person holding both roles of a level signs first; the request can still complete."""
    policy_dict["roles"]["data-scientist"] = ["bob", "xavier"]
    policy_dict["roles"]["ml-engineer"] = ["xavier"]
    as_ = lambda a: ApprovalClient(tracking_uri, tracking_uri, policy=policy_dict, actor=a)  # noqa: E731
    name, (v,) = make_model()
    as_("alice").request_transition(name, v, "Production")
    assert as_("xavier").approve(name, v).signoffs[0].role == "ml-engineer"
    as_("bob").approve(name, v)
    assert as_("dave").approve(name, v).status is Status.APPLIED
