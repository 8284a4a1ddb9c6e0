"""What a version changes against the version holding the target: pure units, no MLflow server."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag

from mlflow_approvals.changes import (
    COMMIT_TAG,
    MIN_CHARS,
    SOURCE_TAG,
    bounded,
    check_diff,
    compare,
    differs,
    encode,
    lines,
    snapshot,
)

EXAMPLES = 200  # per property: enough to cover the shapes; each example builds whole runs


def mlflow_run(
    run_id: str = "r1",
    params: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
) -> Run:
    """A real MLflow Run entity, as ``MlflowClient.get_run`` returns it."""
    info = RunInfo(
        run_id=run_id,
        experiment_id="0",
        user_id="alice",
        status="FINISHED",
        start_time=0,
        end_time=1,
        lifecycle_stage="active",
    )
    data = RunData(
        metrics=[Metric(k, v, 0, 0) for k, v in (metrics or {}).items()],
        params=[Param(k, v) for k, v in (params or {}).items()],
        tags=[RunTag(k, v) for k, v in (tags or {}).items()],
    )
    return Run(info, data)


OLD = mlflow_run(
    "old",
    params={"lr": "0.1", "momentum": "0.9", "epochs": "10"},
    metrics={"val_auc": 0.91, "loss": 0.3},
    tags={COMMIT_TAG: "abc123", SOURCE_TAG: "train.py"},
)
NEW = mlflow_run(
    "new",
    params={"lr": "0.05", "dropout": "0.2", "epochs": "10"},
    metrics={"val_auc": 0.93, "loss": 0.3},
    tags={COMMIT_TAG: "def456", SOURCE_TAG: "train.py"},
)


# -- snapshot ---------------------------------------------------------------------------------


def test_snapshot_of_a_run_holds_its_params_metrics_and_code():
    """A real Run gives its id, params (strings), metrics (floats), commit and source."""
    assert snapshot(OLD) == {
        "run_id": "old",
        "params": {"epochs": "10", "lr": "0.1", "momentum": "0.9"},
        "metrics": {"loss": 0.3, "val_auc": 0.91},
        "code": {"commit": "abc123", "source": "train.py"},
    }


def test_snapshot_of_no_run_is_empty():
    """A version without a run gives the empty snapshot with run_id None."""
    assert snapshot(None) == {
        "run_id": None,
        "params": {},
        "metrics": {},
        "code": {"commit": None, "source": None},
    }


def test_snapshot_of_none_is_a_fresh_value():
    """Changing one empty snapshot does not change the next one."""
    first = snapshot(None)
    first["code"]["commit"] = "x"
    first["params"]["p"] = "1"
    assert snapshot(None)["code"]["commit"] is None
    assert snapshot(None)["params"] == {}


def test_snapshot_reads_any_run_shaped_object():
    """A simple object with info and data mappings works; missing code tags are None."""
    run = SimpleNamespace(
        info=SimpleNamespace(run_id="r9"),
        data=SimpleNamespace(params={"n": 3}, metrics={"acc": 1}, tags={}),
    )
    assert snapshot(run) == {
        "run_id": "r9",
        "params": {"n": "3"},
        "metrics": {"acc": 1.0},
        "code": {"commit": None, "source": None},
    }


# -- compare ----------------------------------------------------------------------------------


def test_compare_lists_added_removed_and_changed_params():
    """Params only in the new run are added, only in the old removed, unequal in both changed."""
    diff = compare(snapshot(NEW), snapshot(OLD), "3")
    assert diff["against"] == "3"
    assert diff["params"] == {
        "added": {"dropout": "0.2"},
        "removed": {"momentum": "0.9"},
        "changed": {"lr": ["0.1", "0.05"]},
    }


def test_compare_gives_metric_deltas_and_leaves_equal_metrics_out():
    """A changed metric has before, after and delta; an unchanged one is not listed."""
    diff = compare(snapshot(NEW), snapshot(OLD), "3")
    assert diff["metrics"] == {"val_auc": {"before": 0.91, "after": 0.93, "delta": 0.02}}


def test_metric_on_one_side_has_no_delta():
    """A metric only one run has shows that side, the other None, and no delta."""
    old = snapshot(mlflow_run(metrics={"loss": 0.3}))
    new = snapshot(mlflow_run(metrics={"f1": 0.8}))
    assert compare(new, old, "2")["metrics"] == {
        "f1": {"before": None, "after": 0.8, "delta": None},
        "loss": {"before": 0.3, "after": None, "delta": None},
    }


def test_delta_is_the_decimal_difference_of_the_values_as_written():
    """0.3 - 0.1 is 0.2 (not 0.19999999999999998), and a tiny change is kept exactly."""
    old = snapshot(mlflow_run(metrics={"a": 0.1, "b": 1.0}))
    new = snapshot(mlflow_run(metrics={"a": 0.3, "b": 1.0000001}))
    metrics = compare(new, old, "1")["metrics"]
    assert (metrics["a"]["delta"], metrics["b"]["delta"]) == (0.2, 1e-07)


def test_non_finite_metrics_are_shown_as_strings_with_no_delta():
    """NaN and infinities are written as "NaN"/"Infinity"/"-Infinity", delta None, strict JSON."""
    old = snapshot(mlflow_run(metrics={"a": 0.5, "b": math.inf, "c": math.nan, "d": math.nan}))
    new = snapshot(mlflow_run(metrics={"a": math.nan, "b": -math.inf, "c": 0.25, "d": math.nan}))
    diff = compare(new, old, "1")
    assert diff["metrics"] == {
        "a": {"before": 0.5, "after": "NaN", "delta": None},
        "b": {"before": "Infinity", "after": "-Infinity", "delta": None},
        "c": {"before": "NaN", "after": 0.25, "delta": None},
    }  # d: NaN on both sides is no difference
    assert json.loads(encode(diff)) == diff
    assert "metric a: 0.5 -> NaN" in lines(diff)


def test_delta_that_overflows_is_none():
    """A delta past float's range (1e308 - -1e308) is None, not infinity."""
    old = snapshot(mlflow_run(metrics={"m": -1e308}))
    new = snapshot(mlflow_run(metrics={"m": 1e308}))
    assert compare(new, old, "1")["metrics"]["m"]["delta"] is None


def test_compare_shows_commit_and_source_changes_only_when_different():
    """A changed commit is listed with before and after; an equal source is not."""
    diff = compare(snapshot(NEW), snapshot(OLD), "3")
    assert diff["code"] == {"commit": ["abc123", "def456"]}
    moved = snapshot(mlflow_run(tags={COMMIT_TAG: "abc123", SOURCE_TAG: "new.py"}))
    assert compare(moved, snapshot(OLD), "3")["code"] == {"source": ["train.py", "new.py"]}


def test_with_no_old_version_everything_is_added():
    """No version holds the target: every param is added, every metric after-only, code new."""
    diff = compare(snapshot(NEW), None, None)
    assert diff == {
        "against": None,
        "params": {
            "added": {"dropout": "0.2", "epochs": "10", "lr": "0.05"},
            "removed": {},
            "changed": {},
        },
        "metrics": {
            "loss": {"before": None, "after": 0.3, "delta": None},
            "val_auc": {"before": None, "after": 0.93, "delta": None},
        },
        "code": {"commit": [None, "def456"], "source": [None, "train.py"]},
    }
    assert lines(diff)[0] == "against no version (none holds the target)"


def test_identical_runs_show_no_difference():
    """Two runs with the same params, metrics and code differ in nothing (run ids aside)."""
    twin = mlflow_run(
        "twin",
        params={"lr": "0.1", "momentum": "0.9", "epochs": "10"},
        metrics={"val_auc": 0.91, "loss": 0.3},
        tags={COMMIT_TAG: "abc123", SOURCE_TAG: "train.py"},
    )
    diff = compare(snapshot(twin), snapshot(OLD), "3")
    assert not differs(diff)
    assert lines(diff) == ["against v3", "(identical to v3)"]


def test_no_run_against_nothing_is_no_difference():
    """An empty snapshot against no version shows nothing and says so."""
    assert lines(compare(snapshot(None), None, None))[-1] == "(no difference)"


def test_compare_refuses_a_metric_that_is_not_a_number():
    """A snapshot with a non-numeric metric is a ValueError naming the metric."""
    with pytest.raises(ValueError, match="metric 'm' is not a number"):
        compare({"metrics": {"m": "high"}}, None, None)


# -- lines ------------------------------------------------------------------------------------


def test_lines_read_as_a_reviewer_expects():
    """The lines name the version, each param and metric change, and the commit."""
    assert lines(compare(snapshot(NEW), snapshot(OLD), "3")) == [
        "against v3",
        "param lr: 0.1 -> 0.05",
        "param + dropout = 0.2",
        "param - momentum (was 0.9)",
        "metric val_auc: 0.91 -> 0.93 (+0.02)",
        "commit abc123 -> def456",
    ]


def test_lines_show_one_sided_metrics_falls_and_missing_code():
    """Added and removed metrics, a negative delta, and a commit that was not recorded."""
    old = snapshot(mlflow_run(metrics={"loss": 0.3, "acc": 0.9}))
    new = snapshot(mlflow_run(metrics={"f1": 0.8, "acc": 0.85}, tags={COMMIT_TAG: "def456"}))
    assert lines(compare(new, old, "7")) == [
        "against v7",
        "metric acc: 0.9 -> 0.85 (-0.05)",
        "metric + f1 = 0.8",
        "metric - loss (was 0.3)",
        "commit (none) -> def456",
    ]


def test_lines_keep_each_difference_on_one_line():
    """A value with a newline or control character is escaped; an empty value is shown as ""."""
    old = snapshot(mlflow_run(params={"cmd": "a\nb", "tag": ""}))
    new = snapshot(mlflow_run(params={"cmd": "a\tb\u2028c", "tag": "x"}))
    out = lines(compare(new, old, "1"))
    assert out[1:] == ["param cmd: a\\nb -> a\\tb\\u2028c", 'param tag: "" -> x']
    assert all(len(line.splitlines()) == 1 for line in out)


# -- bounded ----------------------------------------------------------------------------------


def test_a_small_difference_is_returned_as_it_is():
    """A difference that fits is not cut, and its maps are in key order."""
    diff = compare(snapshot(NEW), snapshot(OLD), "3")
    out = bounded(diff)
    assert out == diff
    assert list(out) == sorted(out)
    assert list(out["params"]) == ["added", "changed", "removed"]


def test_long_values_are_cut_before_any_entry_is_dropped():
    """Ten 5,000-character values are cut to 1,000 with "…" and all ten entries stay."""
    new = snapshot(mlflow_run(params={f"p{i}": "x" * 5000 for i in range(10)}))
    out = bounded(compare(new, None, None), max_chars=20_000)
    added = out["params"]["added"]
    assert len(added) == 10 and "params_omitted" not in out
    assert all(v == "x" * 994 + "…" for v in added.values())  # "…" is 6 characters as \u2026
    assert len(encode(out)) <= 20_000


def test_size_cap_on_five_thousand_long_params():
    """5,000 params of 1,000 characters: under the cap, valid JSON, omitted count exact."""
    params = {f"param_{i:04d}": f"{i:04d}" + "v" * 996 for i in range(5000)}
    metrics = {"val_auc": 0.93, "loss": 0.25}
    new = snapshot(mlflow_run(params=params, metrics=metrics, tags={COMMIT_TAG: "f" * 40}))
    out = bounded(compare(new, None, None), max_chars=20_000)
    text = encode(out)
    assert len(text) < 20_000
    assert json.loads(text) == out and check_diff(json.loads(text)) == out
    kept = out["params"]["added"]
    assert 0 < len(kept) < 5000
    assert out["params_omitted"] == 5000 - len(kept)
    assert list(kept) == sorted(params)[: len(kept)]  # the first in key order stay
    assert all(len(v) <= 64 and v.endswith("…") for v in kept.values())
    assert len(out["metrics"]) == 2 and "metrics_omitted" not in out  # not crowded out
    assert out["code"] == {"commit": [None, "f" * 40]}  # a full commit hash is never cut
    assert lines(out)[-1] == f"… and {5000 - len(kept)} more params that differ (cut to fit)"


def test_bounded_takes_entries_a_round_at_a_time_across_the_lists():
    """Many changed params do not crowd out added ones, removed ones or metrics."""
    old = {f"c{i:03d}": "a" * 100 for i in range(300)} | {"gone": "1"}
    new = {f"c{i:03d}": "b" * 100 for i in range(300)} | {"new": "1"}
    many = {f"m{i:03d}": float(i) for i in range(300)}
    diff = compare(
        snapshot(mlflow_run(params=new, metrics={k: v + 1 for k, v in many.items()})),
        snapshot(mlflow_run(params=old, metrics=many)),
        "4",
    )
    out = bounded(diff, max_chars=5000)
    assert out["params"]["added"] == {"new": "1"}
    assert out["params"]["removed"] == {"gone": "1"}
    changed, kept_metrics = len(out["params"]["changed"]), len(out["metrics"])
    assert abs(changed - kept_metrics) <= 1
    assert out["params_omitted"] == 300 - changed
    assert out["metrics_omitted"] == 300 - kept_metrics


def test_bounded_twice_is_bounded_once():
    """Cutting a cut difference changes nothing, and omitted counts are not lost."""
    new = snapshot(mlflow_run(params={f"p{i:04d}": "v" * 500 for i in range(200)}))
    once = bounded(compare(new, None, None), max_chars=5000)
    assert bounded(once, max_chars=5000) == once
    smaller = bounded(once, max_chars=2000)
    assert len(smaller["params"]["added"]) + smaller["params_omitted"] == 200


def test_bounded_refuses_a_tiny_cap_and_a_malformed_difference():
    """A cap below MIN_CHARS and a value that is not a difference are ValueErrors."""
    diff = compare(snapshot(NEW), snapshot(OLD), "3")
    with pytest.raises(ValueError, match="max_chars must be at least"):
        bounded(diff, max_chars=MIN_CHARS - 1)
    with pytest.raises(ValueError, match="difference"):
        bounded({"against": "3"})


# -- check_diff -------------------------------------------------------------------------------


def test_check_diff_returns_a_difference_as_it_is():
    """A difference read back from its JSON is accepted and returned unchanged."""
    diff = json.loads(encode(compare(snapshot(NEW), snapshot(OLD), "3")))
    assert check_diff(diff) is diff


def test_check_diff_ignores_fields_a_later_writer_may_add():
    """Unknown keys in a record (here the top level and code) are accepted."""
    diff = compare(snapshot(NEW), snapshot(OLD), "3")
    diff["run_ids"] = ["old", "new"]
    diff["code"]["branch"] = 5
    assert check_diff(diff) is diff


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("params"), "difference has no params"),
        (lambda d: d.update(against=3), "against should be a version"),
        (lambda d: d["params"].update(added=[]), "params.added should be an object"),
        (lambda d: d["params"]["added"].update(x=1), 'params.added\\["x"\\] should be a string'),
        (lambda d: d["params"]["changed"].update(x=["a"]), "params.changed"),
        (lambda d: d["params"]["changed"].update(x=["a", None]), "two strings"),
        (lambda d: d["metrics"]["val_auc"].pop("delta"), "has no delta"),
        (lambda d: d["metrics"]["val_auc"].update(after=math.nan), "a number, NaN"),
        (lambda d: d["metrics"]["val_auc"].update(after=True), "not true"),
        (lambda d: d["metrics"]["val_auc"].update(before="1.0"), "not a string"),
        (lambda d: d["metrics"]["val_auc"].update(delta="NaN"), "a finite number or null"),
        (lambda d: d["metrics"]["val_auc"].update(delta=10**400), "a finite number or null"),
        (lambda d: d["metrics"]["val_auc"].update(before=None, after=None), "neither"),
        (lambda d: d["code"].update(commit="abc"), "code.commit should be"),
        (lambda d: d.update(params_omitted=-1), "params_omitted should be a count"),
        (lambda d: d.update(metrics_omitted=False), "metrics_omitted should be a count"),
        (lambda d: d.update(metrics={1: {}}), "key that is not a string"),
    ],
)
def test_check_diff_names_what_is_wrong(change: Any, message: str):
    """Each malformed field is a ValueError whose message names the field."""
    diff = compare(snapshot(NEW), snapshot(OLD), "3")
    change(diff)
    with pytest.raises(ValueError, match=message):
        check_diff(diff)


@pytest.mark.parametrize("value", [None, [], "x", 1, 1.5, True, {}])
def test_check_diff_refuses_what_is_not_an_object(value: Any):
    """Any JSON value other than a difference object is a ValueError."""
    with pytest.raises(ValueError, match="difference"):
        check_diff(value)


def test_importing_the_module_does_not_load_mlflow():
    """changes.py is pure: importing it loads no MLflow."""
    code = "import sys, mlflow_approvals.changes; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- properties -------------------------------------------------------------------------------

keys = st.text(max_size=10) | st.text(min_size=300, max_size=1500)
values = st.text(max_size=30) | st.text(min_size=100, max_size=600)
numbers = st.floats() | st.integers(-(10**6), 10**6)
snapshots = st.fixed_dictionaries(
    {
        "run_id": st.none() | st.text(max_size=8),
        "params": st.dictionaries(keys, values, max_size=30),
        "metrics": st.dictionaries(keys, numbers, max_size=20),
        "code": st.fixed_dictionaries(
            {"commit": st.none() | st.text(max_size=80), "source": st.none() | values}
        ),
    }
)
versions = st.none() | st.text(max_size=5) | st.text(min_size=100, max_size=200)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["NaN", "Infinity", "-Infinity", "against", "params", "metrics"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


@st.composite
def mutated_diffs(draw: st.DrawFn) -> Any:
    """A stored difference with one part (at any depth) replaced by an arbitrary JSON value."""
    diff: Any = json.loads(encode(compare(draw(snapshots), draw(snapshots), draw(versions))))
    node = diff
    while isinstance(node, (dict, list)) and node:
        where: Any = (
            draw(st.sampled_from(sorted(node)))
            if isinstance(node, dict)
            else draw(st.integers(0, len(node) - 1))
        )
        if draw(st.booleans()):
            node[where] = draw(json_values)
            break
        node = node[where]
    return diff


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=SLOW)
@given(snapshots, versions)
def test_a_snapshot_compared_with_itself_shows_no_difference(snap: dict[str, Any], v: Any):
    """compare(x, x) lists nothing, whatever x holds (NaN metrics included)."""
    diff = compare(snap, snap, v)
    assert not differs(diff)
    assert diff["metrics"] == {} and diff["code"] == {}
    assert diff["params"] == {"added": {}, "removed": {}, "changed": {}}
    assert len(lines(diff)) == 2


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=SLOW)
@given(snapshots, st.none() | snapshots, versions, st.integers(MIN_CHARS, 6000))
def test_bounded_always_fits_and_stays_a_difference(
    new: dict[str, Any], old: dict[str, Any] | None, v: Any, max_chars: int
):
    """bounded() is at most max_chars, strict JSON, a difference, and counts what it left out."""
    diff = compare(new, old, v)
    out = bounded(diff, max_chars)
    text = encode(out)
    assert len(text) <= max_chars
    assert check_diff(json.loads(text)) == out
    params_kept = sum(len(out["params"][kind]) for kind in ("added", "removed", "changed"))
    params_all = sum(len(diff["params"][kind]) for kind in ("added", "removed", "changed"))
    assert params_kept + out.get("params_omitted", 0) == params_all
    assert len(out["metrics"]) + out.get("metrics_omitted", 0) == len(diff["metrics"])
    assert out["metrics"].items() <= diff["metrics"].items()
    assert bounded(out, max_chars) == out


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=SLOW)
@given(json_values | mutated_diffs())
def test_check_diff_on_any_json_returns_or_raises_value_error(value: Any):
    """Any decoded JSON is accepted or refused with ValueError; what is accepted renders."""
    try:
        checked = check_diff(value)
    except ValueError:
        return
    assert checked is value
    assert all(len(line.splitlines()) == 1 for line in lines(checked))
