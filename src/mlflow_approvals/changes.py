"""What a version changes, compared with the version that holds the target now.

Reviewers ask "what is different from what runs now?". The answer is data, built from data::

    snapshot(run)               a version's source run: its params, metrics and code
    compare(new, old, against)  the difference of two snapshots (``against``: the old version)
    bounded(diff, max_chars)    the difference cut to fit a tag value, still valid JSON
    encode(diff)                the text ``bounded`` measures: compact, sorted keys, ASCII
    check_diff(value)           a decoded difference, checked; ValueError when it is not one
    lines(diff)                 one human-readable line per difference

No MLflow import, no I/O, no clock: the edges fetch the runs and store the result.

Non-finite metric values (NaN, ±infinity: MLflow accepts them) are written as the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"``, so that the difference stays strict JSON; they are
shown as they are, and their delta is null. Two NaNs are the same value here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

COMMIT_TAG = "mlflow.source.git.commit"
SOURCE_TAG = "mlflow.source.name"
NON_FINITE = ("NaN", "Infinity", "-Infinity")
"""How a difference writes the metric values JSON has no number for."""
MIN_CHARS = 1000
"""The smallest ``max_chars`` that ``bounded`` accepts: room for the skeleton and the code."""
MAX_OMITTED = 10**12  # an omitted count past this is not one any run can produce

_CUTS = (1000, 200, 64)  # long strings are cut to these lengths, in turn, before entries go
_ELLIPSIS = "…"
_PARAM_KINDS = ("changed", "added", "removed")  # the order of the lines, and of the cut rounds
_CODE_FIELDS = ("commit", "source")


def snapshot(run: Any | None) -> dict[str, Any]:
    """The facts of a run a reviewer compares: its params, latest metrics, commit and source.

    ``run`` is an MLflow ``Run`` (or anything with ``info.run_id`` and ``data.params``,
    ``data.metrics``, ``data.tags`` mappings); ``None`` (a version without a run) gives the empty
    snapshot, with ``run_id`` None. Params are strings and metrics floats, as MLflow holds them.
    """
    if run is None:
        return {
            "run_id": None,
            "params": {},
            "metrics": {},
            "code": {"commit": None, "source": None},
        }
    data = run.data
    tags = dict(data.tags or {})
    return {
        "run_id": run.info.run_id,
        "params": dict(sorted((str(k), str(v)) for k, v in dict(data.params or {}).items())),
        "metrics": dict(sorted((str(k), float(v)) for k, v in dict(data.metrics or {}).items())),
        "code": {"commit": tags.get(COMMIT_TAG), "source": tags.get(SOURCE_TAG)},
    }


def compare(
    new: Mapping[str, Any], old: Mapping[str, Any] | None, against: str | None
) -> dict[str, Any]:
    """The difference of ``new`` (a snapshot) against ``old``, the snapshot of version ``against``.

    ``old`` and ``against`` are None when no version holds the target: everything of ``new`` is
    then added. The result, every mapping in key order::

        {"against": "3" | None,
         "params": {"added": {key: value}, "removed": {key: value},
                    "changed": {key: [before, after]}},
         "metrics": {key: {"before": x | None, "after": y | None, "delta": y - x | None}},
         "code": {"commit": [before, after], "source": [before, after]}}

    ``metrics`` lists only the metrics that differ or exist on one side; ``code`` only the fields
    that differ. A delta is the decimal difference of the values as written (0.93 - 0.91 is 0.02,
    not 0.020000000000000018), null when a side is missing or not finite, or when it overflows.
    """
    before = snapshot(None) if old is None else old
    bp, ap = _params(before), _params(new)
    params = {
        "added": {k: ap[k] for k in sorted(ap.keys() - bp.keys())},
        "changed": {k: [bp[k], ap[k]] for k in sorted(ap.keys() & bp.keys()) if bp[k] != ap[k]},
        "removed": {k: bp[k] for k in sorted(bp.keys() - ap.keys())},
    }
    bm, am = _metrics(before), _metrics(new)
    metrics: dict[str, Any] = {}
    for k in sorted(bm.keys() | am.keys()):
        x, y = bm.get(k), am.get(k)
        if x != y:  # shown values: "NaN" equals "NaN", and 0.0 equals -0.0
            metrics[k] = {"after": y, "before": x, "delta": _delta(x, y)}
    bc, ac = _code(before), _code(new)
    code = {f: [bc[f], ac[f]] for f in _CODE_FIELDS if bc[f] != ac[f]}
    return {
        "against": None if against is None else str(against),
        "code": code,
        "metrics": metrics,
        "params": params,
    }


def differs(diff: Mapping[str, Any]) -> bool:
    """True when the difference shows anything (omitted entries count as something)."""
    params = diff.get("params") or {}
    return bool(
        any(params.get(kind) for kind in _PARAM_KINDS)
        or diff.get("metrics")
        or diff.get("code")
        or diff.get("params_omitted")
        or diff.get("metrics_omitted")
    )


def encode(diff: Mapping[str, Any]) -> str:
    """The text of a difference as ``bounded`` measures it: compact, sorted keys, ASCII only.

    Strict JSON (no NaN): ``ValueError`` for a value JSON cannot hold.
    """
    return json.dumps(diff, sort_keys=True, separators=(",", ":"), allow_nan=False)


def bounded(diff: Mapping[str, Any], max_chars: int = 20_000) -> dict[str, Any]:
    """``diff`` cut so that ``encode`` of it takes at most ``max_chars`` characters.

    The result goes into a tag value (MLflow allows 100,000 characters, shared with other
    fields). A difference that fits is returned as it is (its mappings in key order). Otherwise
    long strings (param values, code, the version) are cut with "…" to 1,000, then 200, then 64
    characters (keys are never cut: a cut key would name another param); when even that is too
    long, entries go: the four lists (changed, added and removed params, metrics) keep their first
    entries in key order, taken a round at a time across the lists so that a long one cannot
    crowd out the others, and ``params_omitted`` / ``metrics_omitted`` count what was left out.
    Deterministic: the same difference gives the same result.

    ``ValueError`` when ``diff`` is not a difference (see ``check_diff``) or ``max_chars`` is
    below ``MIN_CHARS``.
    """
    if max_chars < MIN_CHARS:
        raise ValueError(f"max_chars must be at least {MIN_CHARS}, not {max_chars}")
    checked = check_diff(diff)
    shaped = _shaped(checked, None)
    for cap in _CUTS:
        if len(encode(shaped)) <= max_chars:
            return shaped
        shaped = _shaped(checked, cap)
    if len(encode(shaped)) <= max_chars:
        return shaped
    return _dropped(shaped, max_chars)


def lines(diff: Mapping[str, Any]) -> list[str]:
    """One line per difference, for people: give it a difference ``check_diff`` accepts.

    For example::

        against v3
        param lr: 0.1 -> 0.05
        param + dropout = 0.2
        param - momentum (was 0.9)
        metric val_auc: 0.91 -> 0.93 (+0.02)
        commit abc123 -> def456

    and ``(identical to v3)`` after the first line when nothing differs. Characters that would
    break a line (newlines, controls) are written as escapes.
    """
    against = diff.get("against")
    out = [
        "against no version (none holds the target)"
        if against is None
        else f"against v{_text(against)}"
    ]
    params = diff.get("params") or {}
    for k, (b, a) in params.get("changed", {}).items():
        out.append(f"param {_text(k)}: {_text(b)} -> {_text(a)}")
    for k, v in params.get("added", {}).items():
        out.append(f"param + {_text(k)} = {_text(v)}")
    for k, v in params.get("removed", {}).items():
        out.append(f"param - {_text(k)} (was {_text(v)})")
    for k, entry in (diff.get("metrics") or {}).items():
        x, y, delta = entry.get("before"), entry.get("after"), entry.get("delta")
        if x is None:
            out.append(f"metric + {_text(k)} = {_number(y)}")
        elif y is None:
            out.append(f"metric - {_text(k)} (was {_number(x)})")
        else:
            change = "" if delta is None else f" ({_signed(delta)})"
            out.append(f"metric {_text(k)}: {_number(x)} -> {_number(y)}{change}")
    code = diff.get("code") or {}
    for field in _CODE_FIELDS:
        if field in code:
            b, a = code[field]
            out.append(f"{field} {_optional(b)} -> {_optional(a)}")
    for field, what in (("params_omitted", "params"), ("metrics_omitted", "metrics")):
        if diff.get(field):
            out.append(f"… and {diff[field]} more {what} that differ (cut to fit)")
    if not differs(diff):
        out.append("(no difference)" if against is None else f"(identical to v{_text(against)})")
    return out


def check_diff(value: Any) -> dict[str, Any]:
    """``value`` when it is a difference as ``compare`` or ``bounded`` writes it; else ValueError.

    For decoding a stored difference: on any value ``json.loads`` can return, it returns or
    raises ``ValueError``, nothing else. Keys it does not know in the records (the top level,
    ``params``, a metric entry, ``code``) are ignored, so that a later writer may add fields;
    every entry of the maps (params, metrics) is checked.
    """
    top = _record(value, "difference", ("against", "code", "metrics", "params"))
    if top["against"] is not None and not isinstance(top["against"], str):
        raise _bad("against", "a version (a string) or null", top["against"])
    params = _record(top["params"], "params", _PARAM_KINDS)
    for kind in ("added", "removed"):
        for k, v in _map(params[kind], f"params.{kind}").items():
            if not isinstance(v, str):
                raise _bad(f"params.{kind}[{_key(k)}]", "a string", v)
    for k, v in _map(params["changed"], "params.changed").items():
        if not _pair(v, optional=False):
            raise _bad(f"params.changed[{_key(k)}]", "[before, after], two strings", v)
    for k, v in _map(top["metrics"], "metrics").items():
        where = f"metrics[{_key(k)}]"
        entry = _record(v, where, ("after", "before", "delta"))
        for side in ("before", "after"):
            if entry[side] is not None and not _is_value(entry[side]):
                raise _bad(
                    f"{where}.{side}", "a number, NaN, Infinity, -Infinity or null", entry[side]
                )
        if entry["before"] is None and entry["after"] is None:
            raise ValueError(f"difference: {where} has neither a before nor an after value")
        if entry["delta"] is not None and not _is_finite(entry["delta"]):
            raise _bad(f"{where}.delta", "a finite number or null", entry["delta"])
    code = _map(top["code"], "code")
    for field in _CODE_FIELDS:
        if field in code and not _pair(code[field], optional=True):
            raise _bad(f"code.{field}", "[before, after], each a string or null", code[field])
    for field in ("params_omitted", "metrics_omitted"):
        n = top.get(field)
        if field in top and not (
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < MAX_OMITTED
        ):
            raise _bad(field, "a count (an integer, 0 or more)", n)
    return top


# -- reading snapshots ------------------------------------------------------------------------


def _params(snap: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in dict(snap.get("params") or {}).items()}


def _metrics(snap: Mapping[str, Any]) -> dict[str, float | str]:
    return {str(k): _shown(k, v) for k, v in dict(snap.get("metrics") or {}).items()}


def _code(snap: Mapping[str, Any]) -> dict[str, str | None]:
    code = snap.get("code") or {}
    return {f: None if code.get(f) is None else str(code[f]) for f in _CODE_FIELDS}


def _shown(key: object, value: Any) -> float | str:
    """A metric value as a difference holds it: a finite float, or one of ``NON_FINITE``."""
    if isinstance(value, str) and value in NON_FINITE:
        return value
    try:
        number = float(value)
    except OverflowError:  # an int past float's range
        number = math.inf if value > 0 else -math.inf
    except (TypeError, ValueError):
        raise ValueError(f"metric {key!r:.60} is not a number: {_kind(value)}") from None
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return number


def _delta(before: float | str | None, after: float | str | None) -> float | None:
    if not isinstance(before, float) or not isinstance(after, float):
        return None
    delta = float(Decimal(repr(after)) - Decimal(repr(before)))
    return delta if math.isfinite(delta) else None


# -- cutting to size --------------------------------------------------------------------------


def _width(text: str) -> int:
    """Characters ``text`` takes inside a JSON string, as ``encode`` writes it."""
    return len(json.dumps(text)) - 2


def _cut(text: str, cap: int) -> str:
    """``text``, or its longest prefix that fits ``cap`` characters with "…" after it."""
    if _width(text) <= cap:
        return text
    room = cap - _width(_ELLIPSIS)
    lo, hi = 0, min(len(text), room)  # the longest prefix that fits has a length in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _width(text[:mid]) <= room:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + _ELLIPSIS


def _shaped(diff: Mapping[str, Any], cap: int | None) -> dict[str, Any]:
    """``diff`` in its known fields only, in key order, with strings cut to ``cap``."""

    def cut(text: str) -> str:
        return text if cap is None else _cut(text, cap)

    def opt(text: str | None) -> str | None:
        return None if text is None else cut(text)

    params = diff["params"]
    out: dict[str, Any] = {
        "against": opt(diff["against"]),
        "code": {
            f: [opt(diff["code"][f][0]), opt(diff["code"][f][1])]
            for f in _CODE_FIELDS
            if f in diff["code"]
        },
        "metrics": {
            k: {"after": e["after"], "before": e["before"], "delta": e["delta"]}
            for k, e in sorted(diff["metrics"].items())
        },
        "params": {
            "added": {k: cut(v) for k, v in sorted(params["added"].items())},
            "changed": {k: [cut(b), cut(a)] for k, (b, a) in sorted(params["changed"].items())},
            "removed": {k: cut(v) for k, v in sorted(params["removed"].items())},
        },
    }
    for field in ("metrics_omitted", "params_omitted"):
        if diff.get(field):
            out[field] = diff[field]
    return dict(sorted(out.items()))


def _dropped(shaped: dict[str, Any], max_chars: int) -> dict[str, Any]:
    """``shaped`` with entries left out, a round at a time across the lists, until it fits."""
    params = shaped["params"]
    lists = [(kind, list(params[kind].items())) for kind in _PARAM_KINDS]
    lists.append(("metrics", list(shaped["metrics"].items())))
    totals = {
        "params_omitted": shaped.get("params_omitted", 0)
        + sum(len(items) for kind, items in lists if kind != "metrics"),
        "metrics_omitted": shaped.get("metrics_omitted", 0) + len(shaped["metrics"]),
    }
    # The skeleton with every entry left out: the counts written can only be smaller.
    base = {**shaped, **totals, "metrics": {}, "params": {kind: {} for kind in _PARAM_KINDS}}
    budget = max_chars - len(encode(base))
    kept: dict[str, dict[str, Any]] = {kind: {} for kind, _ in lists}
    taking = [kind for kind, items in lists if items]
    position = 0
    while taking:
        for kind, items in lists:
            if kind not in taking:
                continue
            key, value = items[position]
            cost = len(json.dumps(key)) + len(encode(value)) + 2  # with its ":" and ","
            if cost > budget:
                taking.remove(kind)
                continue
            kept[kind][key] = value
            budget -= cost
            if position + 1 == len(items):
                taking.remove(kind)
        position += 1
    out = {
        **shaped,
        "metrics": kept["metrics"],
        "params": {kind: kept[kind] for kind in _PARAM_KINDS},
    }
    out.pop("params_omitted", None)
    out.pop("metrics_omitted", None)
    left = {
        "params_omitted": totals["params_omitted"] - sum(len(kept[k]) for k in _PARAM_KINDS),
        "metrics_omitted": totals["metrics_omitted"] - len(kept["metrics"]),
    }
    out.update({field: n for field, n in left.items() if n})
    out["params"] = dict(sorted(out["params"].items()))
    return dict(sorted(out.items()))


# -- checking and showing ---------------------------------------------------------------------


def _kind(value: Any) -> str:
    """What a JSON value is, in words (never its text: it may be huge or deeply nested)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _key(key: str) -> str:
    return json.dumps(key[:40] + ("…" if len(key) > 40 else ""), ensure_ascii=False)


def _bad(where: str, wanted: str, got: Any) -> ValueError:
    return ValueError(f"difference: {where} should be {wanted}, not {_kind(got)}")


def _record(value: Any, where: str, fields: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, "an object", value)
    missing = [f for f in fields if f not in value]
    if missing:
        raise ValueError(f"difference: {where} has no {', '.join(missing)}")
    return value


def _map(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, "an object", value)
    if not all(isinstance(k, str) for k in value):
        raise ValueError(f"difference: {where} has a key that is not a string")
    return value


def _pair(value: Any, optional: bool) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, str) or (optional and v is None) for v in value)
    )


def _is_finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int past float's range
        return False


def _is_value(value: Any) -> bool:
    return _is_finite(value) or (isinstance(value, str) and value in NON_FINITE)


def _text(text: str) -> str:
    """``text`` on one line: characters that are not printable written as escapes."""
    if not text:
        return '""'
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _optional(text: str | None) -> str:
    return "(none)" if text is None else _text(text)


def _number(value: float | str) -> str:
    return value if isinstance(value, str) else repr(value)


def _signed(delta: float) -> str:
    return f"{delta:+}"


__all__ = [
    "COMMIT_TAG",
    "MIN_CHARS",
    "NON_FINITE",
    "SOURCE_TAG",
    "bounded",
    "check_diff",
    "compare",
    "differs",
    "encode",
    "lines",
    "snapshot",
]
