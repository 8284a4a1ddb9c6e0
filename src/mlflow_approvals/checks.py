"""Automated checks a rule demands before anyone is asked to sign (see ``docs/checks.md``).

A rule lists its checks under ``checks:``; each is a mapping whose one *kind* key says what is
checked::

    checks:
      - {metric: val_auc, min: 0.92}              # the version's source run; min and/or max
      - {metric: latency_p95_ms, max: 50}
      - {tag: validation_status, equals: passed}  # a model-version tag
      - {artifact: README.md}                     # a file among the version's model files
      - {signature: true}                         # MLmodel has a signature
      - {description: true}                       # a non-empty model-version description
      - {custom: fairness, threshold: 0.8}        # an entry point; the other keys its options

The spec models (:class:`MetricCheck` ... :class:`CustomCheck`, together :data:`CheckSpec`) are
frozen pydantic models that the policy loader validates. :func:`evaluate` is pure: it takes the
model version, its run, its files and the time, evaluates every check (none stops the others) and
returns a :class:`CheckReport`. Anything missing (the run, the metric, the tag, the file) is a
failure that says what to do, never a pass. Custom checks are found through the entry-point group
:data:`ENTRY_POINT_GROUP`; one that is not installed, raises, or returns something else fails.

Nothing is imported from MLflow, and nothing is done or cached at import time.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal, Protocol

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

__all__ = [
    "ALLOWED_KEYS",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "MAX_CHECKS",
    "ArtifactCheck",
    "CheckContext",
    "CheckNotInstalled",
    "CheckReport",
    "CheckResult",
    "CheckSpec",
    "CustomCheck",
    "DescriptionCheck",
    "MetricCheck",
    "ModelFiles",
    "SignatureCheck",
    "TagCheck",
    "evaluate",
    "kind_problem",
    "load_entry_point",
]

ENTRY_POINT_GROUP = "mlflow_approvals.checks"
"""The entry-point group that custom checks are installed under."""

KINDS: tuple[str, ...] = ("metric", "tag", "artifact", "signature", "description", "custom")
"""The kind keys: a check holds exactly one of them (a custom check may hold any other key)."""

MAX_CHECKS = 20
"""The most checks one rule may list: their results are stored in the request, whose tag value
MLflow limits to 100,000 characters."""

# How long, in JSON-encoded characters, the text kept in a result may be: a detail is cut there,
# so no check's output can make the request too large to store.
_NAME_BUDGET = 300
_DETAIL_BUDGET = 600
_VALUE_BUDGET = 80
_MAX_LIST = 2  # a value or threshold is a scalar or a list of at most this many scalars
_SAFE_INT = 2**53 - 1  # larger integers are written as text (canonical JSON refuses them)

_ENTRY_POINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")
_Text = Annotated[str, StringConstraints(min_length=1)]
_Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]


def _num(number: float) -> str:
    """``50.0`` -> ``50``, ``0.92`` -> ``0.92``."""
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)


def _must_be_true(value: Any, key: str) -> Literal[True]:
    if value is not True:
        raise ValueError(
            f"write `{key}: true` (got {value!r}); to not require it, remove the check"
        )
    return True


# -- the spec models -----------------------------------------------------------------------------


class MetricCheck(BaseModel):
    """The version's source run logged ``metric``, and its value is within ``min``..``max``.

    Both bounds are inclusive; at least one is required. A NaN value fails.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str] = "metric"

    metric: _Text
    min: _Number | None = None
    max: _Number | None = None

    @model_validator(mode="after")
    def _has_bounds(self) -> MetricCheck:
        if self.min is None and self.max is None:
            raise ValueError(
                f"the check on metric {self.metric!r} has no bound: add `min: <number>`, "
                "`max: <number>`, or both"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(
                f"min {_num(self.min)} is above max {_num(self.max)}, so no value of "
                f"{self.metric!r} can pass: swap them or fix one"
            )
        return self

    @property
    def name(self) -> str:
        """E.g. ``metric val_auc >= 0.92``."""
        bounds = []
        if self.min is not None:
            bounds.append(f">= {_num(self.min)}")
        if self.max is not None:
            bounds.append(f"<= {_num(self.max)}")
        return f"metric {self.metric} " + " and ".join(bounds)

    @property
    def threshold(self) -> float | list[float]:
        """``min``, ``max``, or ``[min, max]`` when both are set."""
        if self.min is not None and self.max is not None:
            return [self.min, self.max]
        bound = self.min if self.min is not None else self.max
        assert bound is not None  # _has_bounds refuses a check without either
        return bound


class TagCheck(BaseModel):
    """The model version has tag ``tag``, equal to ``equals`` (or set at all, without it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str] = "tag"

    tag: _Text
    equals: str | None = None

    @property
    def name(self) -> str:
        """E.g. ``tag validation_status == 'passed'``."""
        if self.equals is None:
            return f"tag {self.tag} is set"
        return f"tag {self.tag} == {self.equals!r}"


class ArtifactCheck(BaseModel):
    """``artifact`` is one of the model's files, or a folder holding at least one of them."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str] = "artifact"

    artifact: _Text

    @field_validator("artifact")
    @classmethod
    def _relative(cls, value: str) -> str:
        hint = "write a path relative to the model's folder, such as README.md or code/train.py"
        if "\\" in value or "\x00" in value:
            raise ValueError(f"{value!r} holds a backslash or NUL: separate folders with '/'")
        if value.startswith("/"):
            raise ValueError(f"{value!r} is absolute: {hint}")
        parts = value.split("/")
        if ".." in parts:
            raise ValueError(f"{value!r} goes up a folder ('..'): {hint}")
        if any(part in ("", ".") for part in parts):
            raise ValueError(f"{value!r} has an empty or '.' part: {hint}")
        return value

    @property
    def name(self) -> str:
        """E.g. ``artifact README.md``."""
        return f"artifact {self.artifact}"


class SignatureCheck(BaseModel):
    """The model was logged with a signature: its ``MLmodel`` file has a ``signature``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str] = "signature"

    signature: Literal[True]

    @field_validator("signature", mode="before")
    @classmethod
    def _true(cls, value: Any) -> Literal[True]:
        return _must_be_true(value, "signature")

    @property
    def name(self) -> str:
        """``signature``."""
        return "signature"


class DescriptionCheck(BaseModel):
    """The model version has a description that is not blank."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str] = "description"

    description: Literal[True]

    @field_validator("description", mode="before")
    @classmethod
    def _true(cls, value: Any) -> Literal[True]:
        return _must_be_true(value, "description")

    @property
    def name(self) -> str:
        """``description``."""
        return "description"


class CustomCheck(BaseModel):
    """The entry point ``custom`` of group :data:`ENTRY_POINT_GROUP`; every other key of the
    check is one of its :attr:`options`."""

    model_config = ConfigDict(frozen=True, extra="allow")
    kind: ClassVar[str] = "custom"

    custom: str

    @field_validator("custom", mode="before")
    @classmethod
    def _entry_point_name(cls, value: Any) -> str:
        if not isinstance(value, str) or not _ENTRY_POINT_NAME.fullmatch(value):
            raise ValueError(
                f"custom names an entry point of the group {ENTRY_POINT_GROUP} (letters, "
                f"digits, '_', '.', '-'; at most 100 characters), e.g. `custom: fairness`; "
                f"got {value!r}"
            )
        return value

    @property
    def options(self) -> dict[str, Any]:
        """The check's other keys, e.g. ``{"threshold": 0.8}``."""
        return dict(self.model_extra or {})

    @property
    def name(self) -> str:
        """E.g. ``custom fairness``."""
        return f"custom {self.custom}"


def _kind_of(value: Any) -> str | None:
    """The kind of a check: its model's, or the one kind key of a mapping (``custom`` wins)."""
    if isinstance(value, BaseModel):
        kind = getattr(type(value), "kind", None)
        return kind if isinstance(kind, str) else None
    if not isinstance(value, Mapping):
        return None
    if "custom" in value:
        return "custom"
    found = [kind for kind in KINDS if kind in value]
    return found[0] if len(found) == 1 else None


CheckSpec = Annotated[
    Annotated[MetricCheck, Tag("metric")]
    | Annotated[TagCheck, Tag("tag")]
    | Annotated[ArtifactCheck, Tag("artifact")]
    | Annotated[SignatureCheck, Tag("signature")]
    | Annotated[DescriptionCheck, Tag("description")]
    | Annotated[CustomCheck, Tag("custom")],
    Discriminator(
        _kind_of,
        custom_error_type="check_kind",
        custom_error_message=(
            "a check is a mapping with one of the keys metric, tag, artifact, signature, "
            "description, custom"
        ),
    ),
]
"""One check of a rule: the model its kind key picks."""

ALLOWED_KEYS: dict[str, tuple[str, ...]] = {
    "metric": ("metric", "min", "max"),
    "tag": ("tag", "equals"),
    "artifact": ("artifact",),
    "signature": ("signature",),
    "description": ("description",),
    "custom": ("custom", "<any option>"),
}
"""The keys each kind of check takes."""


def kind_problem(value: Any) -> str:
    """What is wrong with a check whose kind cannot be told, and what to write instead."""
    keys = ", ".join(KINDS)
    example = "e.g. `{metric: val_auc, min: 0.9}` or `{signature: true}`"
    if not isinstance(value, Mapping):
        return (
            f"a check is a mapping with one of the keys {keys}, {example}; "
            f"found {type(value).__name__} {_clip(repr(value), 60)}"
        )
    found = [kind for kind in KINDS if kind in value]
    if not found:
        listed = _clip(", ".join(str(key) for key in value), 100) or "none"
        return f"a check needs one of the keys {keys}, {example}; found keys: {listed}"
    return (
        f"a check has one kind, but this one has {' and '.join(found)}: "
        "write each as a check of its own"
    )


# -- results ---------------------------------------------------------------------------------


def _clip(text: str, budget: int) -> str:
    """``text``, cut so that its JSON encoding is at most ``budget`` characters."""
    if len(json.dumps(text)) <= budget:
        return text
    text = text[:budget]
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits with its "..."
        middle = (low + high + 1) // 2
        if len(json.dumps(text[:middle] + "...")) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "..."


def _scalar(value: Any) -> Any:
    """A JSON scalar for ``value``: numbers kept (non-finite and huge ones as text), text cut."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _clip(value, _VALUE_BUDGET)
    try:
        if isinstance(value, numbers.Integral):
            number = int(value)
            return number if abs(number) <= _SAFE_INT else _clip(str(number), _VALUE_BUDGET)
        if isinstance(value, numbers.Real):
            real = float(value)
            return real if math.isfinite(real) else repr(real)
        text = repr(value)
    except Exception:  # a foreign object whose conversion fails is shown by its type
        text = f"<{type(value).__name__}>"
    return _clip(text, _VALUE_BUDGET)


def _json_value(value: Any) -> Any:
    """A value or threshold as a result keeps it: a JSON scalar or a short list of them."""
    if isinstance(value, (list, tuple)) and len(value) <= _MAX_LIST:
        return [_scalar(item) for item in value]
    return _scalar(value)


def _time_text(moment: datetime) -> str:
    """ISO 8601 in UTC with ``Z``; a naive time is taken as UTC."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _read_time(text: Any) -> datetime | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"evaluated_at should be an ISO 8601 time or null, not {type(text)}")
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("no UTC offset")
        return moment.astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise ValueError(
            f"evaluated_at should be an ISO 8601 time with its UTC offset, not "
            f"{_clip(repr(text), 60)} ({exc})"
        ) from None


def _read_value(data: Mapping[str, Any], key: str) -> Any:
    value = data.get(key)
    scalars = (type(None), bool, int, float, str)
    if isinstance(value, scalars):
        return value
    if isinstance(value, list) and all(isinstance(item, scalars) for item in value):
        return list(value)
    raise ValueError(
        f"{key} should be null, a number, text, true/false or a list of them, "
        f"not {type(value).__name__}"
    )


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: its name, whether it passed, and why, in words.

    ``value`` is what was found (a metric's value, a tag's value) and ``threshold`` what was
    demanded, where the check has them. ``evaluated_at`` is when it was evaluated.
    """

    name: str
    passed: bool
    detail: str
    value: Any = None
    threshold: Any = None
    evaluated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 with ``Z``; a NaN or infinite number as text."""
        return {
            "name": self.name,
            "passed": self.passed,
            "detail": self.detail,
            "value": _json_value(self.value),
            "threshold": _json_value(self.threshold),
            "evaluated_at": None if self.evaluated_at is None else _time_text(self.evaluated_at),
        }

    @classmethod
    def from_dict(cls, data: Any) -> CheckResult:
        """Read :meth:`to_dict`'s form; anything else raises ``ValueError`` (only)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a check result is a JSON object, not {type(data).__name__}")
        name, passed, detail = data.get("name"), data.get("passed"), data.get("detail")
        if not isinstance(name, str) or not name:
            raise ValueError("a check result's name should be non-empty text")
        if not isinstance(passed, bool):
            raise ValueError(f"check result {_clip(name, 80)!r}: passed should be true or false")
        if not isinstance(detail, str):
            raise ValueError(f"check result {_clip(name, 80)!r}: detail should be text")
        try:
            return cls(
                name,
                passed,
                detail,
                _read_value(data, "value"),
                _read_value(data, "threshold"),
                _read_time(data.get("evaluated_at")),
            )
        except ValueError as exc:
            raise ValueError(f"check result {_clip(name, 80)!r}: {exc}") from None


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return _num(value) if math.isfinite(value) else repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_shown(item) for item in value) + "]"
    if isinstance(value, str):
        return repr(value)
    return str(value)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line(text: str) -> str:
    """``text`` with control characters (newlines, terminal escapes) shown as ``\\xNN``."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


@dataclass(frozen=True)
class CheckReport:
    """Every check of a rule, evaluated; :attr:`passed` when all passed (or there are none)."""

    results: tuple[CheckResult, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "results", tuple(self.results))

    @property
    def passed(self) -> bool:
        """Whether every check passed; true when there are no checks."""
        return all(result.passed for result in self.results)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        """The checks that failed, in the rule's order."""
        return tuple(result for result in self.results if not result.passed)

    def to_dict(self) -> dict[str, Any]:
        """``{"passed": ..., "results": [...]}``, JSON-ready."""
        return {"passed": self.passed, "results": [result.to_dict() for result in self.results]}

    @classmethod
    def from_dict(cls, data: Any) -> CheckReport:
        """Read :meth:`to_dict`'s form; anything else raises ``ValueError`` (only).

        A ``passed`` that disagrees with the results is refused.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a check report is a JSON object, not {type(data).__name__}")
        raw = data.get("results")
        if not isinstance(raw, list):
            raise ValueError("a check report's results should be a list")
        results = []
        for index, item in enumerate(raw):
            try:
                results.append(CheckResult.from_dict(item))
            except ValueError as exc:
                raise ValueError(f"results[{index}]: {exc}") from None
        report = cls(tuple(results))
        stated = data.get("passed", report.passed)
        if stated is not report.passed:
            raise ValueError(
                f"the report says passed={stated!r:.20}, but its results say {report.passed}"
            )
        return report

    def lines(self) -> list[str]:
        """One line per check: PASS or FAIL, its name, value vs threshold, and the detail."""
        out = []
        for result in self.results:
            line = f"{'PASS' if result.passed else 'FAIL'} {result.name}"
            measured = []
            if result.value is not None:
                measured.append(f"value {_shown(result.value)}")
            if result.threshold is not None:
                measured.append(f"threshold {_shown(result.threshold)}")
            if measured:
                line += f" ({' vs '.join(measured)})"
            if result.detail:
                line += f": {result.detail}"
            out.append(_one_line(line))
        return out


# -- evaluation ------------------------------------------------------------------------------


class ModelFiles(Protocol):
    """A model version's files. Either method may raise (say, the storage is unreachable): the
    check that needed it then fails with the error in its detail."""

    def paths(self) -> list[str]:
        """Every file of the model, relative to its folder, '/'-separated."""
        ...

    def read_text(self, path: str, limit: int = 1_000_000) -> str | None:
        """The text of ``path`` (at most ``limit`` characters), or None when there is none."""
        ...


@dataclass(frozen=True)
class CheckContext:
    """What a custom check is given.

    ``model_version`` is an MLflow ``ModelVersion`` (``.name``, ``.version``, ``.tags``,
    ``.description``, ``.run_id``); ``run`` its source ``Run`` (``run.data.metrics``) or None;
    ``target`` the stage or alias being requested; ``options`` the check's other keys (a
    read-only copy); ``files`` the model's files, or None when they cannot be read here.
    """

    model_version: Any
    run: Any | None
    target: Any
    options: Mapping[str, Any]
    files: ModelFiles | None


Loader = Callable[[str], Callable[[CheckContext], Any]]


class CheckNotInstalled(LookupError):
    """No installed package provides a custom check of that name, or several do."""


def load_entry_point(name: str) -> Callable[[CheckContext], Any]:
    """The custom check installed as entry point ``name`` of :data:`ENTRY_POINT_GROUP`.

    Looked up afresh on every call (nothing is cached). Raises :class:`CheckNotInstalled` when no
    installed package provides it, or when several provide different ones.
    """
    from importlib.metadata import entry_points

    found = entry_points(group=ENTRY_POINT_GROUP).select(name=name)
    targets = sorted({entry.value for entry in found})
    if not targets:
        raise CheckNotInstalled(
            f"no custom check {name!r} is installed: install the package that provides the "
            f"entry point {name!r} of the group {ENTRY_POINT_GROUP} where requests are filed "
            "and applied (the approvals server, or the client)"
        )
    if len(targets) > 1:
        raise CheckNotInstalled(
            f"several installed packages provide the custom check {name!r} "
            f"({', '.join(targets)}): uninstall all but one"
        )
    loaded: Callable[[CheckContext], Any] = next(iter(found)).load()
    return loaded


class _FilesOnce:
    """The model's files, listed and read at most once per evaluation."""

    def __init__(self, files: ModelFiles | None) -> None:
        self.files = files
        self._paths: list[str] | BaseException | None = None
        self._texts: dict[str, str | BaseException | None] = {}

    def _need(self) -> ModelFiles:
        if self.files is None:
            raise _Failed(
                "the model's files cannot be read here (no file source is configured for the "
                "approvals): run the approvals where the model's artifacts can be read"
            )
        return self.files

    def paths(self) -> list[str]:
        if self._paths is None:
            try:
                self._paths = [path for path in self._need().paths() if isinstance(path, str)]
            except _Failed:
                raise
            except Exception as exc:
                self._paths = exc
        if isinstance(self._paths, BaseException):
            raise _Failed(f"the model's files could not be listed: {_error(self._paths)}")
        return self._paths

    def read_text(self, path: str) -> str | None:
        if path not in self._texts:
            try:
                self._texts[path] = self._need().read_text(path)
            except _Failed:
                raise
            except Exception as exc:
                self._texts[path] = exc
        text = self._texts[path]
        if isinstance(text, BaseException):
            raise _Failed(f"the model's file {path} could not be read: {_error(text)}")
        if text is not None and not isinstance(text, str):
            raise _Failed(f"reading the model's file {path} gave {type(text).__name__}, not text")
        return text


class _Failed(Exception):
    """A check that failed for the reason in its message."""

    def __init__(self, detail: str, value: Any = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.value = value


def _error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _run_id(model_version: Any, run: Any | None) -> str:
    info = getattr(run, "info", None)
    found = getattr(info, "run_id", None) or getattr(model_version, "run_id", None)
    return str(found) if found else "?"


def _metric(spec: MetricCheck, model_version: Any, run: Any | None) -> tuple[str, Any]:
    name = spec.metric
    if run is None:
        run_id = getattr(model_version, "run_id", None)
        if not run_id:
            raise _Failed(f"the version has no source run: register it from a run that logs {name}")
        raise _Failed(
            f"the version's source run {run_id} cannot be read (deleted, or the tracking store "
            f"did not answer): register the version from a run that logs {name}"
        )
    metrics = run.data.metrics
    run_id = _run_id(model_version, run)
    if not isinstance(metrics, Mapping) or name not in metrics:
        raise _Failed(
            f"run {run_id} logged no metric {name}: log it in the run the version is "
            f"registered from (mlflow.log_metric({name!r}, ...)), or fix the metric's name"
        )
    value = metrics[name]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _Failed(f"metric {name} of run {run_id} is {type(value).__name__}, not a number")
    number = float(value)
    if math.isnan(number):
        raise _Failed(
            f"{name} is NaN in run {run_id}, which meets no bound: log a real value", number
        )
    if spec.min is not None and number < spec.min:
        raise _Failed(f"{name} is {_num(number)}, below the minimum {_num(spec.min)}", number)
    if spec.max is not None and number > spec.max:
        raise _Failed(f"{name} is {_num(number)}, above the maximum {_num(spec.max)}", number)
    return f"{name} is {_num(number)} in run {run_id}", number


def _tag(spec: TagCheck, model_version: Any) -> tuple[str, Any]:
    tags = getattr(model_version, "tags", None) or {}
    how = (
        f"set it with MlflowClient().set_model_version_tag(name, version, {spec.tag!r}, "
        f"{spec.equals if spec.equals is not None else '...'!r})"
    )
    if not isinstance(tags, Mapping) or spec.tag not in tags:
        raise _Failed(f"the version has no tag {spec.tag}: {how}")
    value = tags[spec.tag]
    if spec.equals is None:
        return f"tag {spec.tag} is {_clip(repr(value), 100)}", value
    if value != spec.equals:
        raise _Failed(
            f"tag {spec.tag} is {_clip(repr(value), 100)}, not {spec.equals!r}: {how}", value
        )
    return f"tag {spec.tag} is {spec.equals!r}", value


def _artifact(spec: ArtifactCheck, files: _FilesOnce) -> tuple[str, Any]:
    paths = files.paths()
    if spec.artifact in paths:
        return f"the model has the file {spec.artifact}", None
    inside = [path for path in paths if path.startswith(spec.artifact + "/")]
    if inside:
        return f"the model has the folder {spec.artifact} ({len(inside)} files)", None
    listed = ", ".join(sorted(paths)[:10]) + (", ..." if len(paths) > 10 else "")
    raise _Failed(
        f"the model has no file {spec.artifact}: log it with the model, or fix the path "
        f"(the model's files: {listed or 'none'})"
    )


def _signature(files: _FilesOnce) -> tuple[str, Any]:
    text = files.read_text("MLmodel")
    if text is None:
        raise _Failed(
            "the model has no MLmodel file, so no signature: log it with an MLflow flavor's "
            "log_model(..., signature=...)"
        )
    try:
        meta = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise _Failed(
            f"the model's MLmodel file is not valid YAML ({type(exc).__name__})"
        ) from None
    signature = meta.get("signature") if isinstance(meta, Mapping) else None
    if not signature:
        raise _Failed(
            "the model was logged without a signature: log it with "
            "signature=mlflow.models.infer_signature(inputs, outputs)"
        )
    if not isinstance(signature, Mapping) or not (
        signature.get("inputs") or signature.get("outputs")
    ):
        raise _Failed("the signature in MLmodel lists no inputs and no outputs")
    return "MLmodel has a signature", None


def _description(model_version: Any) -> tuple[str, Any]:
    text = getattr(model_version, "description", None)
    if not isinstance(text, str) or not text.strip():
        raise _Failed(
            "the version has no description: add one saying what changed "
            "(MlflowClient().update_model_version(name, version, description=...))"
        )
    return f"the version has a description ({len(text.strip())} characters)", None


def _custom(
    spec: CustomCheck,
    context: CheckContext,
    load: Loader,
    loaded: dict[str, Callable[[CheckContext], Any] | BaseException],
) -> tuple[bool, str, Any, Any]:
    if spec.custom not in loaded:
        try:
            found = load(spec.custom)
            if not callable(found):
                raise TypeError(f"the entry point is {type(found).__name__}, not a function")
            loaded[spec.custom] = found
        except Exception as exc:
            loaded[spec.custom] = exc
    check = loaded[spec.custom]
    if isinstance(check, BaseException):
        if isinstance(check, CheckNotInstalled):
            raise _Failed(str(check))
        raise _Failed(f"the custom check {spec.custom!r} cannot be loaded: {_error(check)}")
    try:
        out = check(context)
    except (Exception, SystemExit) as exc:
        raise _Failed(f"the custom check raised {_error(exc)}") from None
    return _interpret(out)


def _interpret(out: Any) -> tuple[bool, str, Any, Any]:
    """A custom check's answer: a bool, ``(passed, detail)``, or an object with them."""
    wanted = (
        "a check returns a bool, (passed, detail), or an object with .passed (a bool) and "
        ".detail (text)"
    )
    if isinstance(out, bool):
        return out, "", None, None
    if isinstance(out, tuple):
        if len(out) == 2 and isinstance(out[0], bool) and isinstance(out[1], (str, type(None))):
            return out[0], out[1] or "", None, None
        raise _Failed(f"the custom check returned a tuple of {len(out)} that is not that: {wanted}")
    try:
        passed = getattr(out, "passed", None)
        detail = getattr(out, "detail", None)
        if isinstance(passed, bool) and isinstance(detail, (str, type(None))):
            return (
                passed,
                detail or "",
                getattr(out, "value", None),
                getattr(out, "threshold", None),
            )
    except Exception as exc:
        raise _Failed(f"reading the custom check's answer raised {_error(exc)}") from None
    raise _Failed(f"the custom check returned {type(out).__name__}: {wanted}")


def evaluate(
    specs: Iterable[CheckSpec],
    model_version: Any,
    run: Any | None,
    target: Any,
    files: ModelFiles | None,
    now: datetime,
    load: Loader = load_entry_point,
) -> CheckReport:
    """Evaluate every check in ``specs`` on ``model_version``, in order; none stops the others.

    ``run`` is the version's source run (None when it has none or it cannot be read);
    ``files`` its model files (None when they cannot be read here); ``now`` is stamped on each
    result. A missing run, metric, tag or file fails; so does a custom check that is not
    installed, raises, or returns anything but a bool, ``(passed, detail)`` or an object with
    ``.passed`` and ``.detail``. ``load`` finds a custom check by name (tests pass their own).
    """
    shared = _FilesOnce(files)
    loaded: dict[str, Callable[[CheckContext], Any] | BaseException] = {}
    results = []
    for spec in specs:
        value: Any = None
        threshold: Any = None
        try:
            if isinstance(spec, MetricCheck):
                threshold = spec.threshold
                detail, value = _metric(spec, model_version, run)
            elif isinstance(spec, TagCheck):
                threshold = spec.equals
                detail, value = _tag(spec, model_version)
            elif isinstance(spec, ArtifactCheck):
                detail, value = _artifact(spec, shared)
            elif isinstance(spec, SignatureCheck):
                detail, value = _signature(shared)
            elif isinstance(spec, DescriptionCheck):
                detail, value = _description(model_version)
            elif isinstance(spec, CustomCheck):
                context = CheckContext(
                    model_version,
                    run,
                    target,
                    MappingProxyType(copy.deepcopy(spec.options)),
                    files,
                )
                passed, detail, value, threshold = _custom(spec, context, load, loaded)
                detail = detail or ("the check passed" if passed else "the check failed")
                results.append(_result(spec.name, passed, detail, value, threshold, now))
                continue
            else:
                raise _Failed(f"unknown kind of check: {type(spec).__name__}")
            results.append(_result(spec.name, True, detail, value, threshold, now))
        except _Failed as failure:
            results.append(_result(spec.name, False, failure.detail, failure.value, threshold, now))
        except Exception as exc:  # a fault in a built-in check fails that check, not the rest
            results.append(
                _result(
                    spec.name,
                    False,
                    f"the check could not be evaluated: {_error(exc)}",
                    None,
                    threshold,
                    now,
                )
            )
    return CheckReport(tuple(results))


def _result(
    name: str, passed: bool, detail: str, value: Any, threshold: Any, now: datetime
) -> CheckResult:
    """A result as it is stored: JSON-ready, its texts cut to a bounded size."""
    return CheckResult(
        _clip(name, _NAME_BUDGET),
        passed,
        _clip(detail, _DETAIL_BUDGET),
        _json_value(value),
        _json_value(threshold),
        now,
    )
