"""Automated checks (issue #9): the spec models in the policy, evaluation, custom checks, results.

Pure units: real MLflow ``ModelVersion`` and ``Run`` entities, a dict of model files, a fixed
time. Custom checks are installed through real entry points written into ``tmp_path``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.entities import Metric, Run, RunData, RunInfo
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag
from mlflow.models import Model
from mlflow.models.signature import ModelSignature
from mlflow.types import ColSpec, Schema

from mlflow_approvals.checks import (
    ENTRY_POINT_GROUP,
    MAX_CHECKS,
    CheckContext,
    CheckReport,
    CheckResult,
    CustomCheck,
    MetricCheck,
    evaluate,
    load_entry_point,
)
from mlflow_approvals.errors import PolicyError
from mlflow_approvals.policy import Rule, load_policy

NOW = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)
TARGET = ("stage", "Production")

MLMODEL_WITH_SIGNATURE = Model(
    artifact_path="model",
    signature=ModelSignature(Schema([ColSpec("double", "x")]), Schema([ColSpec("long")])),
).to_yaml()
MLMODEL_WITHOUT_SIGNATURE = Model(artifact_path="model").to_yaml()

POLICY_WITHOUT_CHECKS = """\
roles:
  data-scientist: [alice, bob]
  ml-engineer: [carol, erin]
  business-owner: [dave]
admins: [ml-engineer]
rules:
  - name: production
    models: ["fraud-*"]
    stages: [Production]
    aliases: [champion]
    levels:
      - [{role: data-scientist, count: 1}, {role: ml-engineer, count: 1}]
      - [{role: business-owner, count: 1}]
    expires_after: 7d
  - name: staging
    stages: [Staging]
    levels:
      - {role: ml-engineer}
    break_glass: {roles: [ml-engineer], review_within: 24h}
default: allow
"""
# content_hash of POLICY_WITHOUT_CHECKS before the `checks` field existed: it must not change.
HASH_WITHOUT_CHECKS = "sha256:170f9c2308f80a76806c356920ddc2e8964690b0916567cfa171c82c3595c6c3"


# -- helpers ---------------------------------------------------------------------------------


def version(
    tags: dict[str, str] | None = None,
    description: str | None = "retrained on May data",
    run_id: str | None = "run1",
) -> ModelVersion:
    """A real MLflow ModelVersion of model `fraud`, version 3."""
    return ModelVersion(
        "fraud",
        "3",
        0,
        description=description,
        run_id=run_id,
        tags=[ModelVersionTag(key, value) for key, value in (tags or {}).items()],
    )


def run(metrics: dict[str, float], run_id: str = "run1") -> Run:
    """A real MLflow Run that logged ``metrics``."""
    info = RunInfo(run_id, "0", "alice", "FINISHED", 0, 1, "active")
    return Run(info, RunData(metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()]))


class Files:
    """Model files held in a dict: path -> text."""

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts
        self.listed = 0

    def paths(self) -> list[str]:
        self.listed += 1
        return list(self.texts)

    def read_text(self, path: str, limit: int = 1_000_000) -> str | None:
        text = self.texts.get(path)
        return None if text is None else text[:limit]


class BrokenFiles:
    """Model files on storage that does not answer."""

    def paths(self) -> list[str]:
        raise OSError("storage unreachable")

    def read_text(self, path: str, limit: int = 1_000_000) -> str | None:
        raise OSError("storage unreachable")


def specs(*checks: Any) -> tuple[Any, ...]:
    """The checks as a rule of the policy reads them."""
    rule = Rule(name="r", stages=["Production"], levels=[{"role": "x"}], checks=list(checks))
    return rule.checks


def one(check: dict[str, Any], **kwargs: Any) -> CheckResult:
    """Evaluate a single check on a version that has everything, unless ``kwargs`` say not."""
    args: dict[str, Any] = {
        "model_version": version({"validation_status": "passed"}),
        "run": run({"val_auc": 0.95, "latency_p95_ms": 40.0}),
        "target": TARGET,
        "files": Files({"MLmodel": MLMODEL_WITH_SIGNATURE, "README.md": "# fraud"}),
        "now": NOW,
    }
    args.update(kwargs)
    report = evaluate(specs(check), **args)
    assert len(report.results) == 1
    return report.results[0]


def write(tmp_path: Path, text: str) -> Path:
    """Write a policy file and return its path."""
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def policy_with(checks: str) -> str:
    """A small valid policy whose only rule has ``checks`` (YAML flow text)."""
    return f"""\
roles:
  ml-engineer: [carol, erin]
rules:
  - name: production
    stages: [Production]
    levels:
      - {{role: ml-engineer}}
    checks: {checks}
"""


# -- names and the policy loader -------------------------------------------------------------


def test_each_kind_has_a_readable_name() -> None:
    """Every kind of check is named for a person: bound, tag value, path, entry point."""
    names = [
        check.name
        for check in specs(
            {"metric": "val_auc", "min": 0.92},
            {"metric": "latency_p95_ms", "max": 50},
            {"metric": "loss", "min": 0.1, "max": 0.5},
            {"tag": "validation_status", "equals": "passed"},
            {"tag": "owner"},
            {"artifact": "README.md"},
            {"signature": True},
            {"description": True},
            {"custom": "fairness", "threshold": 0.8},
        )
    ]
    assert names == [
        "metric val_auc >= 0.92",
        "metric latency_p95_ms <= 50",
        "metric loss >= 0.1 and <= 0.5",
        "tag validation_status == 'passed'",
        "tag owner is set",
        "artifact README.md",
        "signature",
        "description",
        "custom fairness",
    ]


def test_custom_check_keeps_its_other_keys_as_options() -> None:
    """A custom check's keys other than `custom` are its options, and dump back flat."""
    (check,) = specs({"custom": "fairness", "threshold": 0.8, "groups": ["a", "b"]})
    assert isinstance(check, CustomCheck)
    assert check.options == {"threshold": 0.8, "groups": ["a", "b"]}
    assert check.model_dump(mode="json") == {
        "custom": "fairness",
        "threshold": 0.8,
        "groups": ["a", "b"],
    }


def test_policy_file_with_checks_loads(tmp_path: Path) -> None:
    """The documented syntax loads from a YAML file, one model per kind, in file order."""
    text = policy_with(
        "[{metric: val_auc, min: 0.92}, {metric: latency_p95_ms, max: 50}, "
        "{tag: validation_status, equals: passed}, {artifact: README.md}, {signature: true}, "
        "{description: true}, {custom: fairness, threshold: 0.8}]"
    )
    rule = load_policy(write(tmp_path, text)).rules[0]
    assert [type(check).__name__ for check in rule.checks] == [
        "MetricCheck",
        "MetricCheck",
        "TagCheck",
        "ArtifactCheck",
        "SignatureCheck",
        "DescriptionCheck",
        "CustomCheck",
    ]


@pytest.mark.parametrize(
    ("checks", "field", "problem"),
    [
        ("[{metric: val_auc, mni: 0.9}]", "rules[0].checks[0].mni", "unknown key 'mni'"),
        ("[{tag: a, equal: b}]", "rules[0].checks[0].equal", "a tag check takes tag, equals"),
        ("[{signature: true}, {fooo: 1}]", "rules[0].checks[1]", "found keys: fooo"),
        ("[signature]", "rules[0].checks[0]", "a check is a mapping"),
        ("[{metric: a, tag: b, min: 1}]", "rules[0].checks[0]", "has metric and tag"),
        ("[{metric: a, min: 2, max: 1}]", "rules[0].checks[0]", "min 2 is above max 1"),
        ("[{metric: a}]", "rules[0].checks[0]", "has no bound"),
        ("[{metric: a, min: '0.9'}]", "rules[0].checks[0].min", "must be a finite number"),
        ("[{metric: a, min: .nan}]", "rules[0].checks[0].min", "must be a finite number"),
        ("[{metric: a, max: true}]", "rules[0].checks[0].max", "must be a finite number"),
        ("[{signature: false}]", "rules[0].checks[0].signature", "write `signature: true`"),
        ("[{description: 1}]", "rules[0].checks[0].description", "write `description: true`"),
        ("[{artifact: ../secrets}]", "rules[0].checks[0].artifact", "goes up a folder"),
        ("[{artifact: /etc/passwd}]", "rules[0].checks[0].artifact", "is absolute"),
        ("[{artifact: 'a//b'}]", "rules[0].checks[0].artifact", "empty or '.' part"),
        ("[{custom: ''}]", "rules[0].checks[0].custom", "names an entry point"),
        ("[{custom: 'no spaces'}]", "rules[0].checks[0].custom", "names an entry point"),
        ("[{tag: 1}]", "rules[0].checks[0].tag", "quote the value"),
        ("oops", "rules[0].checks", "checks is a list of checks"),
    ],
)
def test_bad_checks_are_refused_with_file_field_and_problem(
    tmp_path: Path, checks: str, field: str, problem: str
) -> None:
    """A wrong or unknown key is a PolicyError naming the file, the field path and the problem."""
    path = write(tmp_path, policy_with(checks))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    message = caught.value.message
    assert str(path) in message
    assert f"  {field}: " in message
    assert problem in message


def test_every_bad_check_is_reported_at_once(tmp_path: Path) -> None:
    """Several bad checks in one rule give one error listing each with its own path."""
    path = write(tmp_path, policy_with("[{metric: a, min: 2, max: 1}, {signature: true}, {x: 1}]"))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert "(2 problems)" in caught.value.message
    assert "rules[0].checks[0]: min 2" in caught.value.message
    assert "rules[0].checks[2]: a check needs one of the keys" in caught.value.message


def test_too_many_checks_are_refused() -> None:
    """A rule lists at most MAX_CHECKS checks, so their results fit in the request."""
    text = "[" + ", ".join(["{signature: true}"] * (MAX_CHECKS + 1)) + "]"
    with pytest.raises(PolicyError, match=rf"rules\[0\].checks: a rule lists at most {MAX_CHECKS}"):
        load_policy(yaml.safe_load(policy_with(text)))


def test_content_hash_without_checks_is_unchanged(tmp_path: Path) -> None:
    """A policy whose rules have no checks keeps exactly the hash it had before checks existed."""
    assert load_policy(write(tmp_path, POLICY_WITHOUT_CHECKS)).content_hash == HASH_WITHOUT_CHECKS
    for empty in ("checks: []", "checks:"):
        text = POLICY_WITHOUT_CHECKS.replace("expires_after: 7d", f"expires_after: 7d\n    {empty}")
        assert empty in text
        assert load_policy(write(tmp_path, text)).content_hash == HASH_WITHOUT_CHECKS


def test_content_hash_changes_with_checks(tmp_path: Path) -> None:
    """Adding a check, or changing its bound or option, changes the hash; 50 and 50.0 do not."""
    data = yaml.safe_load(POLICY_WITHOUT_CHECKS)

    def hashed(checks: list[dict[str, Any]]) -> str:
        data["rules"][0]["checks"] = checks
        return load_policy(data).content_hash

    hashes = {
        hashed([{"metric": "latency", "max": 50}]),
        hashed([{"metric": "latency", "max": 51}]),
        hashed([{"custom": "fairness", "threshold": 0.8}]),
        hashed([{"custom": "fairness", "threshold": 0.9}]),
    }
    assert len(hashes | {HASH_WITHOUT_CHECKS}) == 5
    assert hashed([{"metric": "latency", "max": 50}]) == hashed(
        [{"max": 50.0, "metric": "latency"}]
    )


def test_policy_with_checks_survives_its_own_dump() -> None:
    """A policy's JSON dump, checks and custom options included, loads as the same policy."""
    data = yaml.safe_load(POLICY_WITHOUT_CHECKS)
    data["rules"][0]["checks"] = [
        {"metric": "val_auc", "min": 0.9},
        {"tag": "status", "equals": "ok"},
        {"custom": "fairness", "threshold": 0.8},
    ]
    policy = load_policy(data)
    again = load_policy(policy.model_dump(mode="json"))
    assert again.content_hash == policy.content_hash
    assert again.rules[0].checks == policy.rules[0].checks


def test_checks_module_imports_no_mlflow() -> None:
    """Importing the checks (and the policy that uses them) imports nothing from MLflow."""
    code = (
        "import sys, mlflow_approvals.checks, mlflow_approvals.policy; "
        "print('mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- built-in checks -------------------------------------------------------------------------


def test_metric_within_bounds_passes() -> None:
    """A metric at or past its bound passes, with the value and threshold recorded."""
    result = one({"metric": "val_auc", "min": 0.92})
    assert result.passed
    assert (result.value, result.threshold) == (0.95, 0.92)
    assert "run run1" in result.detail
    assert one({"metric": "val_auc", "min": 0.95}).passed  # the bound is inclusive
    assert one({"metric": "latency_p95_ms", "max": 50}).passed
    both = one({"metric": "latency_p95_ms", "min": 10, "max": 50})
    assert both.passed
    assert both.threshold == [10.0, 50.0]


def test_metric_outside_bounds_fails() -> None:
    """A metric below its min or above its max fails, saying which and by how much."""
    low = one({"metric": "val_auc", "min": 0.96})
    assert not low.passed
    assert low.detail == "val_auc is 0.95, below the minimum 0.96"
    high = one({"metric": "latency_p95_ms", "max": 30})
    assert not high.passed
    assert high.detail == "latency_p95_ms is 40, above the maximum 30"
    assert high.value == 40.0


def test_nan_metric_fails() -> None:
    """A NaN metric meets no bound, so it fails whatever the bound."""
    for check in ({"metric": "m", "min": 0}, {"metric": "m", "max": 0}):
        result = one(check, run=run({"m": float("nan")}))
        assert not result.passed
        assert "NaN" in result.detail


def test_missing_metric_fails_saying_what_to_log() -> None:
    """A metric the run did not log fails, naming the metric and how to log it."""
    result = one({"metric": "recall", "min": 0.5})
    assert not result.passed
    assert "run run1 logged no metric recall" in result.detail
    assert "mlflow.log_metric('recall'" in result.detail


def test_missing_run_fails() -> None:
    """A version without a source run, or whose run cannot be read, fails every metric check."""
    result = one({"metric": "val_auc", "min": 0.9}, model_version=version(run_id=None), run=None)
    assert not result.passed
    assert result.detail == (
        "the version has no source run: register it from a run that logs val_auc"
    )
    gone = one({"metric": "val_auc", "min": 0.9}, run=None)
    assert not gone.passed
    assert "source run run1 cannot be read" in gone.detail


def test_tag_check() -> None:
    """A tag equal to `equals` passes; another value or no tag fails saying how to set it."""
    assert one({"tag": "validation_status", "equals": "passed"}).passed
    assert one({"tag": "validation_status"}).passed
    wrong = one(
        {"tag": "validation_status", "equals": "passed"},
        model_version=version({"validation_status": "failed"}),
    )
    assert not wrong.passed
    assert (wrong.value, wrong.threshold) == ("failed", "passed")
    assert "is 'failed', not 'passed'" in wrong.detail
    missing = one({"tag": "validation_status", "equals": "passed"}, model_version=version())
    assert not missing.passed
    assert "the version has no tag validation_status" in missing.detail
    assert "set_model_version_tag" in missing.detail
    assert not one({"tag": "validation_status"}, model_version=version()).passed


def test_artifact_check() -> None:
    """A file among the model's files, or a folder holding some, passes; another path fails."""
    files = Files({"MLmodel": "", "README.md": "x", "code/train.py": "x"})
    assert one({"artifact": "README.md"}, files=files).passed
    folder = one({"artifact": "code"}, files=files)
    assert folder.passed
    assert "folder code (1 files)" in folder.detail
    missing = one({"artifact": "CARD.md"}, files=files)
    assert not missing.passed
    assert "the model has no file CARD.md" in missing.detail
    assert "MLmodel, README.md, code/train.py" in missing.detail
    assert not one({"artifact": "cod"}, files=files).passed  # a prefix is not a folder


def test_signature_check() -> None:
    """An MLmodel with a signature passes; without one, or without MLmodel, it fails."""
    assert one({"signature": True}).passed
    unsigned = one({"signature": True}, files=Files({"MLmodel": MLMODEL_WITHOUT_SIGNATURE}))
    assert not unsigned.passed
    assert "logged without a signature" in unsigned.detail
    absent = one({"signature": True}, files=Files({"README.md": "x"}))
    assert not absent.passed
    assert "no MLmodel file" in absent.detail
    garbled = one({"signature": True}, files=Files({"MLmodel": "a: [unclosed"}))
    assert not garbled.passed
    assert "not valid YAML" in garbled.detail


def test_description_check() -> None:
    """A description that is not blank passes; none or a blank one fails."""
    assert one({"description": True}).passed
    for blank in (None, "", "  \n"):
        result = one({"description": True}, model_version=version(description=blank))
        assert not result.passed
        assert "the version has no description" in result.detail


def test_file_checks_fail_when_files_cannot_be_read() -> None:
    """Storage that raises, or no file source at all, fails file checks with the reason."""
    for check in ({"artifact": "README.md"}, {"signature": True}):
        broken = one(check, files=BrokenFiles())
        assert not broken.passed
        assert "OSError: storage unreachable" in broken.detail
        none = one(check, files=None)
        assert not none.passed
        assert "cannot be read here" in none.detail


def test_files_are_listed_once_per_evaluation() -> None:
    """Several artifact checks list the model's files once."""
    files = Files({"a": "", "b": ""})
    report = evaluate(
        specs({"artifact": "a"}, {"artifact": "b"}, {"artifact": "c"}),
        version(),
        run({}),
        TARGET,
        files,
        NOW,
    )
    assert [r.passed for r in report.results] == [True, True, False]
    assert files.listed == 1


def test_every_check_is_evaluated_and_every_failure_reported() -> None:
    """Several failing checks are all reported, in order, beside the ones that pass."""
    report = evaluate(
        specs(
            {"metric": "val_auc", "min": 0.99},
            {"tag": "validation_status", "equals": "passed"},
            {"artifact": "README.md"},
            {"signature": True},
            {"description": True},
            {"metric": "latency_p95_ms", "max": 50},
        ),
        version(description=None),
        run({"val_auc": 0.95, "latency_p95_ms": 40.0}),
        TARGET,
        Files({"MLmodel": MLMODEL_WITHOUT_SIGNATURE}),
        NOW,
    )
    assert not report.passed
    assert [r.passed for r in report.results] == [False, False, False, False, False, True]
    assert [r.name for r in report.failed] == [
        "metric val_auc >= 0.99",
        "tag validation_status == 'passed'",
        "artifact README.md",
        "signature",
        "description",
    ]
    assert all(r.evaluated_at == NOW for r in report.results)


def test_no_checks_pass() -> None:
    """A rule without checks gives an empty report that passed."""
    report = evaluate((), version(), None, TARGET, None, NOW)
    assert report.passed
    assert report.results == ()
    assert report.failed == ()


def test_a_fault_in_a_built_in_check_fails_only_that_check() -> None:
    """A run object that is not a Run fails the metric check; the other checks still run."""
    report = evaluate(
        specs({"metric": "val_auc", "min": 0.9}, {"description": True}),
        version(),
        object(),
        TARGET,
        None,
        NOW,
    )
    assert [r.passed for r in report.results] == [False, True]
    assert "could not be evaluated: AttributeError" in report.results[0].detail


# -- custom checks ---------------------------------------------------------------------------


CHECKS_MODULE = '''\
def fairness(context):
    """Passes when the option `threshold` is at most the run's `fairness` metric."""
    value = context.run.data.metrics.get("fairness")
    threshold = context.options["threshold"]
    seen.append(context)
    return value >= threshold, f"fairness {value} against {threshold}"

def boom(context):
    raise RuntimeError("the fairness service is down")

def garbage(context):
    return "yes"

def mutate(context):
    context.options["threshold"] = 0
    return True

seen = []
'''


@pytest.fixture
def install(install_checks: Callable[..., str]) -> Callable[..., str]:
    """Install custom checks (by default the module above) for one test."""
    return lambda entries, source=CHECKS_MODULE: install_checks(entries, source)


def custom(check: dict[str, Any], **kwargs: Any) -> CheckResult:
    """Evaluate one custom check on a version whose run logged fairness 0.85."""
    return one(check, run=run({"fairness": 0.85}), **kwargs)


def test_custom_check_through_a_real_entry_point(install: Callable[..., str]) -> None:
    """An installed entry point is called with the version, run, target, files and options."""
    module = install({"fairness": "fairness"})
    passing = custom({"custom": "fairness", "threshold": 0.8})
    assert passing.passed
    assert passing.name == "custom fairness"
    assert passing.detail == "fairness 0.85 against 0.8"
    failing = custom({"custom": "fairness", "threshold": 0.9})
    assert not failing.passed
    assert failing.detail == "fairness 0.85 against 0.9"
    (context, _) = sys.modules[module].seen
    assert isinstance(context, CheckContext)
    assert context.model_version.name == "fraud"
    assert context.run.info.run_id == "run1"
    assert context.target == TARGET
    assert context.options == {"threshold": 0.8}
    assert context.files is not None
    assert "README.md" in context.files.paths()


def test_custom_check_that_raises_fails(install: Callable[..., str]) -> None:
    """A custom check that raises fails, with the error in its detail; the others still run."""
    install({"boom": "boom", "fairness": "fairness"})
    report = evaluate(
        specs({"custom": "boom"}, {"custom": "fairness", "threshold": 0.5}),
        version(),
        run({"fairness": 0.85}),
        TARGET,
        None,
        NOW,
    )
    assert [r.passed for r in report.results] == [False, True]
    assert report.results[0].detail == (
        "the custom check raised RuntimeError: the fairness service is down"
    )


def test_custom_check_that_returns_garbage_fails(install: Callable[..., str]) -> None:
    """A custom check returning anything but a bool, a pair or a result object fails."""
    install({"garbage": "garbage"})
    result = custom({"custom": "garbage"})
    assert not result.passed
    assert "returned str" in result.detail


def test_custom_check_cannot_change_its_options(install: Callable[..., str]) -> None:
    """The options a custom check gets are read-only: writing them fails the check."""
    install({"mutate": "mutate"})
    (spec,) = specs({"custom": "mutate", "threshold": 0.8})
    report = evaluate([spec], version(), None, TARGET, None, NOW)
    assert not report.passed
    assert "TypeError" in report.results[0].detail
    assert spec.options == {"threshold": 0.8}


def test_custom_check_not_installed_fails(install: Callable[..., str]) -> None:
    """A custom check whose name has no entry point fails, saying what to install."""
    result = custom({"custom": "no-such-check"})
    assert not result.passed
    assert "no custom check 'no-such-check' is installed" in result.detail
    assert ENTRY_POINT_GROUP in result.detail


def test_custom_checks_are_looked_up_afresh(install: Callable[..., str]) -> None:
    """Nothing is cached between evaluations: a check installed later is found."""
    assert not custom({"custom": "fairness", "threshold": 0.8}).passed
    install({"fairness": "fairness"})
    assert custom({"custom": "fairness", "threshold": 0.8}).passed


def test_custom_check_provided_twice_fails(install: Callable[..., str]) -> None:
    """Two installed packages providing the same check name are refused, not one picked."""
    install({"fairness": "fairness"})
    install({"fairness": "garbage"})
    with pytest.raises(LookupError, match="several installed packages"):
        load_entry_point("fairness")
    assert "several installed packages" in custom({"custom": "fairness"}).detail


def test_broken_entry_point_fails(install: Callable[..., str]) -> None:
    """An entry point whose module does not import, or that is not callable, fails."""
    install({"broken": "missing_function", "constant": "seen"})
    broken = custom({"custom": "broken"})
    assert not broken.passed
    assert "cannot be loaded: AttributeError" in broken.detail
    constant = custom({"custom": "constant"})
    assert not constant.passed
    assert "list, not a function" in constant.detail


@pytest.mark.parametrize(
    ("answer", "passed", "detail"),
    [
        (True, True, "the check passed"),
        (False, False, "the check failed"),
        ((True, "fine"), True, "fine"),
        ((False, None), False, "the check failed"),
        (CheckResult("x", False, "too biased", 0.7, 0.8), False, "too biased"),
    ],
)
def test_custom_answers_that_are_understood(answer: Any, passed: bool, detail: str) -> None:
    """A bool, a (passed, detail) pair, or an object with .passed and .detail is understood."""
    result = custom({"custom": "any"}, load=lambda name: lambda context: answer)
    assert (result.passed, result.detail) == (passed, detail)
    assert result.name == "custom any"


def test_custom_result_object_keeps_value_and_threshold() -> None:
    """A result object's .value and .threshold are recorded."""
    answer = CheckResult("x", False, "too biased", 0.7, 0.8)
    result = custom({"custom": "any"}, load=lambda name: lambda context: answer)
    assert (result.value, result.threshold) == (0.7, 0.8)


@pytest.mark.parametrize(
    "answer",
    [None, 1, "yes", (1, "x"), (True,), (True, "x", 3), (True, 3), {"passed": True}, object()],
)
def test_custom_answers_that_are_not_understood_fail(answer: Any) -> None:
    """Anything else a custom check returns, even a truthy value, fails the check."""
    result = custom({"custom": "any"}, load=lambda name: lambda context: answer)
    assert not result.passed
    assert "a check returns a bool, (passed, detail)" in result.detail


def test_custom_check_output_is_bounded() -> None:
    """A huge detail or an odd value is cut, so the results always fit in a request."""
    answer = CheckResult("x", False, "é" * 1_000_000, object(), 10**40)
    result = custom({"custom": "any"}, load=lambda name: lambda context: answer)
    assert len(json.dumps(result.to_dict())) < 1500
    assert result.detail.endswith("...")
    assert isinstance(result.value, str)
    assert result.threshold == str(10**40)


def test_custom_check_that_calls_sys_exit_fails() -> None:
    """A custom check calling sys.exit fails; it does not end the process."""

    def leaves(context: CheckContext) -> bool:
        raise SystemExit(3)

    result = custom({"custom": "any"}, load=lambda name: leaves)
    assert not result.passed
    assert "SystemExit" in result.detail


# -- results and reports ---------------------------------------------------------------------


def test_result_round_trip() -> None:
    """A result survives to_dict and from_dict, its time written in UTC with Z."""
    result = CheckResult("metric val_auc >= 0.92", True, "ok", 0.95, [0.9, 1.0], NOW)
    data = result.to_dict()
    assert data["evaluated_at"] == "2024-05-01T12:00:00.123000Z"
    assert json.loads(json.dumps(data)) == data
    assert CheckResult.from_dict(data) == result
    bare = CheckResult("signature", False, "no signature")
    assert CheckResult.from_dict(bare.to_dict()) == bare


def test_report_round_trip() -> None:
    """An evaluated report survives to_dict and from_dict, as JSON text too."""
    report = evaluate(
        specs({"metric": "val_auc", "min": 0.92}, {"tag": "x", "equals": "y"}, {"signature": True}),
        version(),
        run({"val_auc": 0.95}),
        TARGET,
        Files({"MLmodel": MLMODEL_WITH_SIGNATURE}),
        NOW,
    )
    data = report.to_dict()
    assert data["passed"] is False
    assert CheckReport.from_dict(json.loads(json.dumps(data, allow_nan=False))) == report


def test_nan_and_infinity_are_written_as_text() -> None:
    """A NaN or infinite value is JSON-ready text, so canonical JSON can hash it."""
    result = CheckResult("m", False, "NaN", float("nan"), [float("inf"), -math.inf], NOW)
    data = result.to_dict()
    assert (data["value"], data["threshold"]) == ("nan", ["inf", "-inf"])
    json.dumps(data, allow_nan=False)


def test_report_from_dict_refuses_a_false_verdict() -> None:
    """A report claiming to pass while a result failed is refused."""
    data = CheckReport((CheckResult("a", False, "no"),)).to_dict()
    data["passed"] = True
    with pytest.raises(ValueError, match="results say False"):
        CheckReport.from_dict(data)


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {},
        {"name": "", "passed": True, "detail": ""},
        {"name": "a", "passed": 1, "detail": ""},
        {"name": "a", "passed": True, "detail": None},
        {"name": "a", "passed": True, "detail": "", "value": {"x": 1}},
        {"name": "a", "passed": True, "detail": "", "evaluated_at": "2024-05-01T12:00:00"},
        {"name": "a", "passed": True, "detail": "", "evaluated_at": "0001-01-01T00:00:00+01:00"},
    ],
)
def test_malformed_result_is_a_value_error(data: Any) -> None:
    """A result that is not as to_dict writes it raises ValueError."""
    with pytest.raises(ValueError):
        CheckResult.from_dict(data)


def test_lines_are_one_per_result() -> None:
    """lines() gives PASS/FAIL, the name, value vs threshold and the detail, one line each."""
    report = CheckReport(
        (
            CheckResult("metric val_auc >= 0.92", True, "val_auc is 0.95", 0.95, 0.92, NOW),
            CheckResult("tag t == 'a'", False, "tag t is 'b'", "b", "a", NOW),
            CheckResult("custom x", False, "line one\nline two\x1b[31m"),
        )
    )
    assert report.lines() == [
        "PASS metric val_auc >= 0.92 (value 0.95 vs threshold 0.92): val_auc is 0.95",
        "FAIL tag t == 'a' (value 'b' vs threshold 'a'): tag t is 'b'",
        "FAIL custom x: line one\\x0aline two\\x1b[31m",
    ]


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_TIMES = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
    st.datetimes(),
    st.integers(-1439, 1439),
)
_FIELDS = {"name": st.text(min_size=1), "passed": st.booleans(), "detail": st.text()}
_EXTRAS = {
    "value": _SCALARS | st.lists(_SCALARS, max_size=3) | _JSON,
    "threshold": _SCALARS | st.lists(_SCALARS, max_size=3) | _JSON,
    "evaluated_at": st.none()
    | _TIMES
    | st.datetimes().map(datetime.isoformat)
    | st.text(alphabet="0123456789-:T.Z+ ", max_size=30)
    | _JSON,
    "other": _JSON,
}
_RESULTS = st.fixed_dictionaries(_FIELDS, optional=_EXTRAS) | st.fixed_dictionaries(
    {}, optional={**dict.fromkeys(_FIELDS, _JSON), **_EXTRAS}
)
_REPORTS = st.fixed_dictionaries(
    {"results": st.lists(_RESULTS, max_size=3) | st.lists(_RESULTS | _JSON, max_size=3) | _JSON},
    optional={"passed": st.booleans() | _JSON},
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_JSON, _RESULTS, _REPORTS))
def test_from_dict_raises_only_value_error(data: Any) -> None:
    """from_dict on any JSON gives a result or report, or raises ValueError: nothing else."""
    for cls in (CheckResult, CheckReport):
        try:
            parsed = cls.from_dict(data)
        except ValueError:
            continue
        written = parsed.to_dict()
        json.dumps(written, allow_nan=False)
        assert cls.from_dict(written).to_dict() == written


def test_metric_check_model_refuses_min_above_max() -> None:
    """Building a MetricCheck in Python runs the same checks as the policy loader."""
    with pytest.raises(ValueError, match="min 2 is above max 1"):
        MetricCheck(metric="a", min=2, max=1)
