"""SageMaker Model Registry: the gate drives a linked model package's approval status.

A real MLflow (a fresh ``sqlite:///`` registry) and moto's in-process SageMaker; the AWS
credentials are dummies, so nothing reaches AWS.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from mlflow import MlflowClient

from conftest import register_versions, unique_name
from mlflow_approvals import ApprovalClient
from mlflow_approvals.errors import InvalidRequest
from mlflow_approvals.lifecycle import Status
from mlflow_approvals.policy import PolicyInvalid, parse_policy
from mlflow_approvals.sagemaker import (
    APPROVED,
    LINK_TAG,
    MAX_DESCRIPTION_CHARS,
    PENDING,
    REJECTED,
    PackageGate,
    SageMakerUnavailable,
    approval_description,
    rejection_description,
)
from mlflow_approvals.testing import EXAMPLE_POLICY, free_port

REGION = "us-east-1"
SIGNERS = ("bob", "carol", "dave")  # data-scientist, ml-engineer (level 1); business-owner


@pytest.fixture
def sm(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[Any]:
    """moto's SageMaker, with dummy credentials and no AWS configuration read from disk."""
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SAGEMAKER"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    import boto3
    from moto import mock_aws

    with mock_aws():
        yield boto3.client("sagemaker", region_name=REGION)


@pytest.fixture
def policy() -> dict[str, Any]:
    """The example policy whose production rule drives SageMaker in us-east-1."""
    p = copy.deepcopy(EXAMPLE_POLICY)
    p["rules"][0]["sagemaker"] = {"region": REGION}
    return p


def new_package(sm: Any, status: str = PENDING) -> str:
    """A model package (in its own group) with ``status``; its ARN."""
    group = f"fraud-{uuid.uuid4().hex[:8]}"
    sm.create_model_package_group(ModelPackageGroupName=group)
    made = sm.create_model_package(
        ModelPackageGroupName=group,
        ModelApprovalStatus=status,
        InferenceSpecification={
            "Containers": [{"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/fraud:1"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
    )
    return str(made["ModelPackageArn"])


def package(sm: Any, arn: str) -> dict[str, Any]:
    return dict(sm.describe_model_package(ModelPackageName=arn))


def linked_version(uri: str, sm: Any, status: str = PENDING) -> tuple[str, str, str]:
    """A fresh model version linked (by its tag) to a fresh package; (name, version, arn)."""
    name = unique_name()
    (v,) = register_versions(uri, name, 1)
    arn = new_package(sm, status)
    MlflowClient(uri, uri).set_model_version_tag(name, v, LINK_TAG, arn)
    return name, v, arn


def as_(uri: str, policy: dict[str, Any], actor: str) -> ApprovalClient:
    return ApprovalClient(uri, uri, policy=policy, actor=actor)


def events(client: ApprovalClient, name: str) -> list[dict[str, Any]]:
    """The model's audit events of the SageMaker types, in order."""
    from mlflow_approvals.export import export_model

    path = f"{uuid.uuid4().hex}.jsonl"
    import os
    import tempfile

    out = os.path.join(tempfile.mkdtemp(), path)
    export_model(client.engine, name, out, "cloudevents")
    with open(out) as f:
        found = [json.loads(line) for line in f]
    return [e for e in found if ".sagemaker." in e["type"]]


# ---------------------------------------------------------------------------- the steps --
def test_approval_sets_approved_only_on_the_completing_signoff(sqlite_uri, sm, policy):
    """The package stays pending through the sign-offs and is Approved, naming the request and
    every signer with their role, by the one that applies the promotion."""
    name, v, arn = linked_version(sqlite_uri, sm)
    req = as_(sqlite_uri, policy, "alice").request_transition(name, v, "Production")
    assert req.record.sagemaker_arn == arn
    for actor in SIGNERS[:2]:
        as_(sqlite_uri, policy, actor).approve(name, v)
        assert package(sm, arn)["ModelApprovalStatus"] == PENDING
    done = as_(sqlite_uri, policy, "dave").approve(name, v)
    assert done.status is Status.APPLIED
    found = package(sm, arn)
    assert found["ModelApprovalStatus"] == APPROVED
    note = found["ApprovalDescription"]
    assert req.id in note
    for who in ("bob (data-scientist)", "carol (ml-engineer)", "dave (business-owner)"):
        assert who in note
    client = as_(sqlite_uri, policy, "alice")
    assert client.get_model_version(name, v).current_stage == "Production"
    assert client.verify_audit(name).ok
    assert [e["data"]["after"]["status"] for e in events(client, name)] == [APPROVED]


def test_filing_puts_an_approved_package_back_to_pending(sqlite_uri, sm, policy):
    """Filing makes an already approved package pending again, and audits what it found."""
    name, v, arn = linked_version(sqlite_uri, sm, APPROVED)
    client = as_(sqlite_uri, policy, "alice")
    client.request_transition(name, v, "Production")
    assert package(sm, arn)["ModelApprovalStatus"] == PENDING
    (held,) = events(client, name)
    assert held["type"].endswith("sagemaker.pending")
    assert held["data"]["before"]["status"] == APPROVED
    assert client.verify_audit(name).ok


def test_rejection_sets_rejected_with_the_reason(sqlite_uri, sm, policy):
    """A rejection sets the package Rejected, its description naming the rejecter and why."""
    name, v, arn = linked_version(sqlite_uri, sm)
    as_(sqlite_uri, policy, "alice").request_transition(name, v, "Production")
    done = as_(sqlite_uri, policy, "carol").reject(name, v, comment="drift on\nEU traffic")
    assert done.status is Status.REJECTED
    found = package(sm, arn)
    assert found["ModelApprovalStatus"] == REJECTED
    assert "carol (ml-engineer)" in found["ApprovalDescription"]
    assert "drift on EU traffic" in found["ApprovalDescription"]
    assert as_(sqlite_uri, policy, "alice").verify_audit(name).ok


def test_cancel_and_expiry_leave_the_package_pending(sqlite_uri, sm, policy):
    """A cancelled request and an expired one leave their packages pending."""
    name, v, arn = linked_version(sqlite_uri, sm)
    alice = as_(sqlite_uri, policy, "alice")
    alice.request_transition(name, v, "Production")
    as_(sqlite_uri, policy, "bob").approve(name, v)
    assert alice.cancel(name, v, comment="not yet").status is Status.CANCELLED
    assert package(sm, arn)["ModelApprovalStatus"] == PENDING

    other, w, arn2 = linked_version(sqlite_uri, sm)
    alice.request_transition(other, w, "Production")
    later = as_(sqlite_uri, policy, "bob")
    now = later.engine.clock
    later.engine.clock = lambda: now() + timedelta(days=8)
    assert later.get_request(other, w).status is Status.EXPIRED
    assert package(sm, arn2)["ModelApprovalStatus"] == PENDING


def test_a_relinked_version_does_not_redirect_the_request_in_flight(sqlite_uri, sm, policy):
    """The package recorded at filing is the one approved, whatever the tag says later."""
    name, v, arn = linked_version(sqlite_uri, sm)
    as_(sqlite_uri, policy, "alice").request_transition(name, v, "Production")
    other = new_package(sm)
    MlflowClient(sqlite_uri, sqlite_uri).set_model_version_tag(name, v, LINK_TAG, other)
    for actor in SIGNERS:
        as_(sqlite_uri, policy, actor).approve(name, v)
    assert package(sm, arn)["ModelApprovalStatus"] == APPROVED
    assert package(sm, other)["ModelApprovalStatus"] == PENDING


# ------------------------------------------------------------------- an unreachable SageMaker --
def _closed_port_gate() -> PackageGate:
    """A gate whose SageMaker is a loopback port nothing listens on."""
    import boto3
    from botocore.config import Config

    url = f"http://127.0.0.1:{free_port()}"
    config = Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1})
    return PackageGate(
        lambda s: boto3.client("sagemaker", region_name=s.region, endpoint_url=url, config=config)
    )


def test_an_unreachable_sagemaker_promotes_nothing_and_the_apply_can_be_retried(
    sqlite_uri, sm, policy
):
    """The completing sign-off fails cleanly while SageMaker cannot be reached (no stage, no
    approval), and applying again once it answers promotes and approves."""
    name, v, arn = linked_version(sqlite_uri, sm)
    as_(sqlite_uri, policy, "alice").request_transition(name, v, "Production")
    for actor in SIGNERS[:2]:
        as_(sqlite_uri, policy, actor).approve(name, v)
    dave = as_(sqlite_uri, policy, "dave")
    dave.engine.packages = _closed_port_gate()
    with pytest.raises(SageMakerUnavailable, match="nothing was promoted"):
        dave.approve(name, v)
    assert dave.get_model_version(name, v).current_stage == "None"
    assert dave.get_request(name, v).status is Status.APPROVED
    assert package(sm, arn)["ModelApprovalStatus"] == PENDING

    done = as_(sqlite_uri, policy, "dave").apply(name, v)
    assert done.status is Status.APPLIED
    assert package(sm, arn)["ModelApprovalStatus"] == APPROVED
    assert dave.get_model_version(name, v).current_stage == "Production"
    assert dave.verify_audit(name).ok


class _UpdateFails:
    """A SageMaker client that reads, and fails to write as a dropped connection would."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def describe_model_package(self, **kw: Any) -> Any:
        return self.real.describe_model_package(**kw)

    def update_model_package(self, **kw: Any) -> Any:
        from botocore.exceptions import EndpointConnectionError

        raise EndpointConnectionError(endpoint_url="https://api.sagemaker.us-east-1.amazonaws.com")


def test_the_approval_event_is_written_before_sagemaker_is_changed(sqlite_uri, sm, policy):
    """Intent before effect: when the change fails after its event, nothing is promoted, and
    the retry's event is the same event delivered again (the log verifies)."""
    name, v, arn = linked_version(sqlite_uri, sm)
    as_(sqlite_uri, policy, "alice").request_transition(name, v, "Production")
    for actor in SIGNERS[:2]:
        as_(sqlite_uri, policy, actor).approve(name, v)
    dave = as_(sqlite_uri, policy, "dave")
    dave.engine.packages = PackageGate(lambda s: _UpdateFails(sm))
    with pytest.raises(SageMakerUnavailable):
        dave.approve(name, v)
    (intent,) = events(dave, name)
    assert intent["data"]["after"] == {"model_package_arn": arn, "status": APPROVED}
    assert dave.get_model_version(name, v).current_stage == "None"

    as_(sqlite_uri, policy, "dave").apply(name, v)
    assert package(sm, arn)["ModelApprovalStatus"] == APPROVED
    assert [e["id"] for e in events(dave, name)] == [intent["id"]]  # exported once
    report = dave.verify_audit(name)
    assert report.ok, str(report)
    assert [line for line in report.lines if "duplicate delivery" in line]


# ------------------------------------------------------------------------- the link -------
def test_a_version_without_a_link_cannot_be_filed_under_a_sagemaker_rule(sqlite_uri, sm, policy):
    """No link: the filing is refused with the way to link, and nothing is written."""
    name = unique_name()
    (v,) = register_versions(sqlite_uri, name, 1)
    alice = as_(sqlite_uri, policy, "alice")
    with pytest.raises(InvalidRequest, match="sagemaker link"):
        alice.request_transition(name, v, "Production")
    tags = alice.get_model_version(name, v).tags
    assert not [k for k in tags if k.startswith("mlflow_approvals.")]


@pytest.mark.parametrize(
    "value",
    [
        "arn:aws:sagemaker:us-east-1:123456789012:model-package/x/1'; drop table",
        "arn:aws:sagemaker:us-east-1:123456789012:endpoint/x",
        "x" * 3000,
    ],
)
def test_a_malformed_link_is_refused_when_filing(sqlite_uri, sm, policy, value):
    """A link tag that is not a model package ARN refuses the filing, naming the tag."""
    name = unique_name()
    (v,) = register_versions(sqlite_uri, name, 1)
    MlflowClient(sqlite_uri, sqlite_uri).set_model_version_tag(name, v, LINK_TAG, value)
    with pytest.raises(InvalidRequest, match=f"tag {LINK_TAG}"):
        as_(sqlite_uri, policy, "alice").request_transition(name, v, "Production")


def test_a_link_to_another_region_is_refused_when_filing(sqlite_uri, sm, policy):
    """A package in another region than the rule's is refused before anything is written."""
    name = unique_name()
    (v,) = register_versions(sqlite_uri, name, 1)
    arn = "arn:aws:sagemaker:eu-west-1:123456789012:model-package/fraud/1"
    MlflowClient(sqlite_uri, sqlite_uri).set_model_version_tag(name, v, LINK_TAG, arn)
    with pytest.raises(InvalidRequest, match="eu-west-1"):
        as_(sqlite_uri, policy, "alice").request_transition(name, v, "Production")


def test_link_sets_the_tag_and_refuses_a_package_that_does_not_exist(sqlite_uri, sm, policy):
    """link_model_package checks the package exists before setting the tag."""
    name = unique_name()
    (v,) = register_versions(sqlite_uri, name, 1)
    client = as_(sqlite_uri, policy, "alice")
    arn = new_package(sm)
    missing = arn.rsplit("/", 1)[0] + "/99"
    with pytest.raises(InvalidRequest, match="does not exist"):
        client.link_model_package(name, v, missing)
    with pytest.raises(InvalidRequest, match="not a SageMaker model package ARN"):
        client.link_model_package(name, v, "arn:aws:s3:::bucket")
    assert LINK_TAG not in client.get_model_version(name, v).tags
    assert client.link_model_package(name, v, arn) == PENDING
    assert client.get_model_version(name, v).tags[LINK_TAG] == arn


def test_the_command_line_links_a_version(sqlite_uri, sm, tmp_path):
    """`mlflow-approvals sagemaker link` sets the link and says the package's status."""
    from click.testing import CliRunner

    from mlflow_approvals.cli import main

    name = unique_name()
    (v,) = register_versions(sqlite_uri, name, 1)
    arn = new_package(sm)
    result = CliRunner().invoke(
        main, ["--tracking-uri", sqlite_uri, "--json", "sagemaker", "link", name, v, arn]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == PENDING
    assert MlflowClient(sqlite_uri, sqlite_uri).get_model_version(name, v).tags[LINK_TAG] == arn
    bad = CliRunner().invoke(
        main, ["--tracking-uri", sqlite_uri, "sagemaker", "link", name, v, arn + "0"]
    )
    assert bad.exit_code != 0 and "does not exist" in bad.output


# --------------------------------------------------------------------------- reconcile ------
def test_reconcile_reports_an_out_of_band_approval_once(sqlite_uri, sm, policy):
    """A package approved outside the gate (in flight, or merely linked) is reported and
    recorded once; the next reconcile is clean."""
    name = unique_name()
    v1, v2 = register_versions(sqlite_uri, name, 2)
    plain = MlflowClient(sqlite_uri, sqlite_uri)
    in_flight, linked = new_package(sm), new_package(sm)
    plain.set_model_version_tag(name, v1, LINK_TAG, in_flight)
    plain.set_model_version_tag(name, v2, LINK_TAG, linked)
    alice = as_(sqlite_uri, policy, "alice")
    alice.request_transition(name, v1, "Production")
    for arn in (in_flight, linked):
        sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus=APPROVED)

    report = alice.reconcile(name)
    assert not report.ok
    found = {(c.key, c.version, c.expected, c.actual) for c in report.bypassed}
    assert found == {(in_flight, v1, PENDING, APPROVED), (linked, v2, PENDING, APPROVED)}
    again = alice.reconcile(name)
    assert again.ok and not again.changes
    assert alice.verify_audit(name).ok


def test_reconcile_is_quiet_after_the_gate_approves(sqlite_uri, sm, policy):
    """A package the gate approved (and one it rejected) is what the log expects."""
    name, v, _ = linked_version(sqlite_uri, sm)
    as_(sqlite_uri, policy, "alice").request_transition(name, v, "Production")
    for actor in SIGNERS:
        as_(sqlite_uri, policy, actor).approve(name, v)
    other, w, _ = linked_version(sqlite_uri, sm)
    as_(sqlite_uri, policy, "alice").request_transition(other, w, "Production")
    as_(sqlite_uri, policy, "bob").reject(other, w, comment="no")
    for model in (name, other):
        report = as_(sqlite_uri, policy, "alice").reconcile(model)
        assert report.ok and not report.changes, str(report)


# ----------------------------------------------------------------- policy, extra, pure parts --
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("us-east-1", "rules[0].sagemaker: sagemaker must be a mapping"),
        ({"region": "mars"}, "rules[0].sagemaker.region: region must be an AWS region"),
        ({"region": REGION, "endpoint": "x"}, "rules[0].sagemaker.endpoint: unknown key"),
        ({"region": REGION, "role_arn": "admin"}, "rules[0].sagemaker.role_arn: role_arn must"),
        ({}, "rules[0].sagemaker.region: required key 'region' is missing"),
    ],
)
def test_a_bad_sagemaker_field_is_refused_naming_it(value, problem):
    """A rule's `sagemaker:` is checked like every field: the error names the field."""
    p = copy.deepcopy(EXAMPLE_POLICY)
    p["rules"][0]["sagemaker"] = value
    with pytest.raises(PolicyInvalid) as caught:
        parse_policy(p)
    assert problem in str(caught.value)


def test_a_policy_without_sagemaker_keeps_its_hash():
    """Adding the field changed no existing policy's hash; setting it does change it."""
    plain = parse_policy(copy.deepcopy(EXAMPLE_POLICY))
    explicit = copy.deepcopy(EXAMPLE_POLICY)
    explicit["rules"][0]["sagemaker"] = None
    opted = copy.deepcopy(EXAMPLE_POLICY)
    opted["rules"][0]["sagemaker"] = {"region": REGION}
    assert parse_policy(explicit).content_hash == plain.content_hash
    assert parse_policy(opted).content_hash != plain.content_hash


def test_the_package_imports_and_loads_a_sagemaker_policy_without_boto3():
    """Without boto3, importing the package and the module and loading the policy work."""
    code = (
        "import sys; sys.modules['boto3'] = None; sys.modules['botocore'] = None\n"
        "import mlflow_approvals, mlflow_approvals.sagemaker\n"
        "from mlflow_approvals.policy import parse_policy\n"
        "from mlflow_approvals.testing import EXAMPLE_POLICY\n"
        "EXAMPLE_POLICY['rules'][0]['sagemaker'] = {'region': 'us-east-1'}\n"
        "print(parse_policy(EXAMPLE_POLICY).rules[0].sagemaker.region)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == REGION


def test_filing_under_a_sagemaker_rule_without_boto3_names_the_extra(
    sqlite_uri, sm, policy, monkeypatch
):
    """A rule asking for SageMaker where boto3 is missing: the error says what to install."""
    name, v, _ = linked_version(sqlite_uri, sm)
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(InvalidRequest, match=r'pip install "mlflow-approvals\[sagemaker\]"'):
        as_(sqlite_uri, policy, "alice").request_transition(name, v, "Production")


def test_a_server_policy_asking_for_sagemaker_without_boto3_is_named_at_start(monkeypatch):
    """The server's start-up check names the rules that ask for SageMaker and the extra."""
    from mlflow_approvals.sagemaker import missing_boto3

    opted = copy.deepcopy(EXAMPLE_POLICY)
    opted["rules"][0]["sagemaker"] = {"region": REGION}
    rules = parse_policy(opted).rules
    assert missing_boto3(rules) is None  # boto3 is installed for the tests
    assert missing_boto3(parse_policy(copy.deepcopy(EXAMPLE_POLICY)).rules) is None
    monkeypatch.setitem(sys.modules, "boto3", None)
    why = missing_boto3(rules)
    assert why is not None and repr(rules[0].name) in why
    assert 'pip install "mlflow-approvals[sagemaker]"' in why


def test_descriptions_fit_sagemaker_and_stay_on_one_line():
    """Descriptions are cut to SageMaker's limit, keep the request id, and carry no newline."""
    many = [(f"user-{i}@example.com\n", "business-owner") for i in range(200)]
    note = approval_description("0123456789ab", "stage 'Production'", "m" * 300, "3", many)
    assert len(note) == MAX_DESCRIPTION_CHARS and note.startswith("mlflow-approvals request 0123")
    assert "\n" not in note
    short = rejection_description("0123456789ab", "carol", "ml-engineer", "x\r\n\x00y")
    assert short.endswith("x y") and len(short) < MAX_DESCRIPTION_CHARS


def test_a_planted_request_with_a_malformed_arn_is_a_malformed_fact():
    """A request fact whose recorded ARN is not a model package ARN is not decoded."""
    from mlflow_approvals import tags as T

    good = {
        "id": "0123456789ab",
        "name": "m",
        "version": "1",
        "target": {"kind": "stage", "value": "Production", "action": "set"},
        "requester": "alice",
        "created_at": "2025-01-01T00:00:00Z",
        "rule": "production",
        "levels": [[["data-scientist", 1]]],
        "separation_of_duties": True,
        "policy_hash": "sha256:0",
    }
    ok = {**good, "sagemaker_arn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/m/1"}
    assert T.decode_request("m", "1", json.dumps(ok)).sagemaker_arn == ok["sagemaker_arn"]
    bad = {**good, "sagemaker_arn": "arn:aws:sagemaker:us-east-1:1:model-package/m/1 x"}
    with pytest.raises(T.MalformedFact, match="sagemaker_arn"):
        T.decode_request("m", "1", json.dumps(bad))
