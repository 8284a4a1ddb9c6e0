"""Terminal injection: what the command line prints of a value someone else chose.

The pure escaping (:mod:`mlflow_approvals.render`) is checked with hypothesis; the commands run
through click's CliRunner against a real ``sqlite:///`` registry, with a comment, a model name,
an actor and an audit event type that carry terminal controls.
"""

from __future__ import annotations

import io
import json
import unicodedata
from contextlib import redirect_stdout
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import register_versions, unique_name
from mlflow_approvals.audit import TYPE_PREFIX
from mlflow_approvals.cli import Settings, _request_view, _table, main
from mlflow_approvals.client import ApprovalClient
from mlflow_approvals.lifecycle import Ending, RequestRecord, Requirement, SignOff, Target, derive
from mlflow_approvals.render import restore, safe

# ESC[2K erases the line, CR returns to its start, BS steps back, OSC 8 makes hidden link text:
# together they overwrite what an approver reads with a status line of the requester's choosing.
OSC8 = "\x1b]8;;http://evil.example/\x1b\\click here\x1b]8;;\x1b\\"
COMMENT = "ok\x1b[2K\r  status   applied by dave\x08 " + OSC8 + "\nfake line"
COMMENT_SHOWN = (
    r"ok\x1b[2K\r  status   applied by dave\x08 "
    r"\x1b]8;;http://evil.example/\x1b\\click here\x1b]8;;\x1b\\\nfake line"
)
NAME_TAIL = "\x1b[2K\r\x08\x1b]8;;evil.example\x1b\\"  # a model name cannot hold ':' or '/'
NAME_TAIL_SHOWN = r"\x1b[2K\r\x08\x1b]8;;evil.example\x1b\\"
ACTOR = "mallory\x1b[2K\rdave\x08"
ACTOR_SHOWN = r"mallory\x1b[2K\rdave\x08"
BIDI = {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}
# Characters that reach the terminal as commands or as invisible reordering, by an oracle
# written out here rather than the one render.py uses.
_NASTY = [
    "\x1b", "\r", "\n", "\x08", "\x07", "\t", "\x00", "\x7f", "\x85", "\x9b", "\x9d", "\\",
    "\u202a", "\u202e", "\u2066", "\u2069", "\u200e", "\u200f", "\u061c", "\u2028", "\u2029",
    "\ufeff", "\u200b", "\u200d", "\u00ad", "\U000e0041", "\ud800", "\udfff",
    "x", "u", "U", "n", "r", "0", "1", "b", "[", "]", ";", " ", "e", "\u00e9", "\U0001f680",
]  # fmt: skip
TEXT = st.text(st.one_of(st.characters(exclude_categories=()), st.sampled_from(_NASTY)))
PURE = settings(max_examples=1000, deadline=None)


def _dangerous(char: str) -> bool:
    code = ord(char)
    return (
        code < 0x20
        or 0x7F <= code <= 0x9F
        or char in BIDI
        or char in "\u2028\u2029\u200e\u200f\u061c"
        or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp")
    )


def _assert_clean(printed: str) -> None:
    """No character of ``printed`` but its line ends can move the cursor or reorder text."""
    bad = sorted({c for c in printed if c != "\n" and _dangerous(c)})
    assert not bad, f"raw control characters reached the terminal: {bad!r}"


# ------------------------------------------------------------------------- the pure core --
@PURE
@given(TEXT)
def test_safe_output_has_no_control_bidi_or_line_break(text: str) -> None:
    """safe() never lets a control, format, bidi or line-separating character through."""
    shown = safe(text)
    assert not any(_dangerous(c) for c in shown)
    assert len(shown.splitlines()) <= 1
    assert "\n" not in shown


@PURE
@given(TEXT)
def test_safe_is_reversible(text: str) -> None:
    """restore(safe(text)) is text, so what is printed names exactly one original."""
    assert restore(safe(text)) == text


@PURE
@given(TEXT, TEXT)
def test_distinct_texts_render_distinctly(a: str, b: str) -> None:
    """Two different texts are never printed the same (a literal backslash is escaped too)."""
    if a != b:
        assert safe(a) != safe(b)


@PURE
@given(st.text(st.characters(exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp"))))
def test_printable_text_is_printed_as_is(text: str) -> None:
    """Printable text, accents and emoji included, is unchanged unless it holds a backslash."""
    assert safe(text) == text.replace("\\", "\\\\")


def test_escapes_are_python_string_escapes() -> None:
    r"""The escapes are the ones docs/cli.md lists: \\, \n, \r, \t, \xNN, \uNNNN, \UNNNNNNNN."""
    assert safe("a\\b\n\r\t\x1b\x9b\u202e\u2028\U000e0041") == (
        r"a\\b\n\r\t\x1b\x9b\u202e\u2028\U000e0041"
    )
    assert safe(COMMENT) == COMMENT_SHOWN


_WHEN = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@st.composite
def _requests(draw: st.DrawFn) -> Any:
    role = draw(TEXT.filter(bool))
    record = RequestRecord(
        id=draw(TEXT),
        name=draw(TEXT),
        version=draw(TEXT),
        target=Target(draw(st.sampled_from(["stage", "alias"])), draw(TEXT)),
        requester=draw(TEXT),
        created_at=_WHEN,
        comment=draw(st.none() | TEXT),
        rule=draw(TEXT),
        levels=((Requirement(role, 2),), (Requirement(draw(TEXT.filter(bool)), 1),)),
        separation_of_duties=False,
        expires_at=None,
        policy_hash="0" * 64,
    )
    signoffs = tuple(
        SignOff(draw(TEXT), decision, role, 1 if decision == "approve" else None, draw(TEXT), _WHEN)
        for decision in draw(st.lists(st.sampled_from(["approve", "reject"]), max_size=2))
    )
    ending = Ending(draw(TEXT), _WHEN, draw(st.none() | TEXT))
    end = draw(st.sampled_from(["", "cancelled", "applied"]))
    return derive(record, signoffs, _WHEN, **({end: ending} if end else {}))


@settings(max_examples=500, deadline=None)
@given(_requests())
def test_request_view_values_cannot_add_or_rewrite_lines(request: Any) -> None:
    """A request's view prints one terminal line per line of the view, whatever its values hold,
    with no control character, and each printed line restores to the line the CLI composed."""
    view = _request_view(request)
    out = io.StringIO()
    with redirect_stdout(out):
        Settings().out({}, lambda: view)
    printed = out.getvalue()
    _assert_clean(printed)
    lines = printed.split("\n")
    assert lines[-1] == "" and len(printed.splitlines()) == len(view)
    assert [restore(line) for line in lines[:-1]] == view
    if request.comment:
        assert request.comment in restore(lines[2])


@PURE
@given(st.lists(st.lists(TEXT, min_size=3, max_size=3), min_size=1, max_size=4))
def test_list_columns_align_after_escaping(rows: list[list[str]]) -> None:
    """`list`'s table lines up as printed: each cell starts where its column starts."""
    rows = [["REQUEST", "MODEL", "FILED"], *rows]
    widths = [max(len(safe(row[i])) for row in rows) for i in range(3)]
    for row, line in zip(rows, _table(rows), strict=True):
        shown, start = safe(line).ljust(sum(widths) + 4), 0  # only padding spaces are cut
        for cell, width in zip(row, widths, strict=True):
            assert shown[start : start + len(safe(cell))] == safe(cell)
            start += width + 2


# ------------------------------------------------------------------------- the commands ---
def _run(uri: str, policy: Path, *args: str, actor: str | None = None) -> Result:
    head = ["--tracking-uri", uri, "--policy", str(policy)]
    if actor is not None:
        head += ["--as", actor]
    return CliRunner().invoke(main, [*head, *args])


@pytest.fixture
def filed(sqlite_uri: str, policy_file: Path) -> tuple[str, str, Path]:
    """A model whose name carries controls, with a request filed by ``ACTOR`` with ``COMMENT``."""
    name = unique_name() + NAME_TAIL
    register_versions(sqlite_uri, name, 1)
    result = _run(
        sqlite_uri, policy_file, "request", name, "1", "--stage", "Production", "-m", COMMENT,
        actor=ACTOR,
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    return sqlite_uri, name, policy_file


def test_status_escapes_comment_name_and_actor(filed: tuple[str, str, Path]) -> None:
    """`status` shows the comment, model name and requester escaped, never their raw controls."""
    uri, name, policy = filed
    result = _run(uri, policy, "status", name, "1")
    assert result.exit_code == 3, result.output
    _assert_clean(result.output)
    assert f"by {ACTOR_SHOWN} at " in result.stdout
    assert f'"{COMMENT_SHOWN}"' in result.stdout
    assert NAME_TAIL_SHOWN + " v1 -> stage Production" in result.stdout
    assert not any(line.startswith("fake line") for line in result.stdout.splitlines())


def test_list_escapes_name_and_requester(filed: tuple[str, str, Path]) -> None:
    """`list` shows the model name and requester escaped, its columns still aligned."""
    uri, _, policy = filed
    result = _run(uri, policy, "list")
    assert result.exit_code == 0, result.output
    _assert_clean(result.output)
    header, row = result.stdout.splitlines()
    assert NAME_TAIL_SHOWN in row and ACTOR_SHOWN in row
    assert row.index(ACTOR_SHOWN) == header.index("REQUESTER")


def test_audit_verify_escapes_event_type_and_name(filed: tuple[str, str, Path]) -> None:
    """`audit verify` escapes an event type forged into the log and the model name it names."""
    uri, name, policy = filed
    from mlflow import MlflowClient

    run_id = ApprovalClient(uri, uri, policy=str(policy), actor="auditor").audit.run_ids(
        name, create=False
    )[0]
    events = MlflowClient(uri, uri).get_run(run_id).info.artifact_uri.removeprefix("file://")
    (path,) = (Path(events) / "events" / "v1").glob("*.json")
    event = json.loads(path.read_bytes())
    event["type"] = TYPE_PREFIX + "request.created" + COMMENT
    path.write_text(json.dumps(event))

    result = _run(uri, policy, "audit", "verify", name)
    assert result.exit_code == 1, result.output
    _assert_clean(result.output)
    assert f"request.created{COMMENT_SHOWN}" in result.stdout
    assert f"error: the audit trail of {safe(name)} does not verify" in result.stderr
    assert NAME_TAIL_SHOWN in result.stderr


def test_json_keeps_every_value_exact(filed: tuple[str, str, Path]) -> None:
    """`--json` round-trips the comment, name and requester exactly, in plain ASCII."""
    uri, name, policy = filed
    result = _run(uri, policy, "--json", "status", name, "1")
    assert result.exit_code == 3, result.output
    assert all(" " <= c <= "~" or c == "\n" for c in result.stdout)
    doc = json.loads(result.stdout)
    assert (doc["comment"], doc["name"], doc["requester"]) == (COMMENT, name, ACTOR)


def test_json_keeps_unicode_and_backslashes_exact(sqlite_uri: str, policy_file: Path) -> None:
    """`--json` round-trips bidi overrides, separators, emoji and literal backslash escapes."""
    name = unique_name()
    register_versions(sqlite_uri, name, 1)
    comment = "caf\u00e9 \U0001f680 \u202eevil\u202c \u2028 \\x1b literal \\ \x1b[31m"
    args = ["--json", "request", name, "1", "--stage", "Production", "-m", comment]
    result = _run(sqlite_uri, policy_file, *args, actor="alice")
    assert result.exit_code == 3, result.output
    assert json.loads(result.stdout)["comment"] == comment
    human = _run(sqlite_uri, policy_file, "status", name, "1")
    _assert_clean(human.output)
    assert r"caf\u00e9" not in human.stdout and "caf\u00e9 \U0001f680" in human.stdout
    assert r"\u202eevil\u202c \u2028 \\x1b literal \\ \x1b[31m" in human.stdout


def test_error_messages_are_escaped(filed: tuple[str, str, Path]) -> None:
    """An approval error naming the actor, and click's own usage error, are printed escaped."""
    uri, name, policy = filed
    refused = _run(uri, policy, "approve", name, "1", actor=ACTOR)
    assert refused.exit_code == 6, refused.output  # not allowed
    _assert_clean(refused.output)
    assert refused.stderr.startswith("error: ") and ACTOR_SHOWN in refused.stderr

    as_json = _run(uri, policy, "--json", "approve", name, "1", actor=ACTOR)
    assert ACTOR in json.loads(as_json.stdout)["error"]["message"]

    usage = _run(uri, policy, "wait", name, "1", "--timeout", "5\x1b[2K\rx")
    assert usage.exit_code == 2, usage.output
    _assert_clean(usage.output)
    assert "Usage:" in usage.stderr and "--timeout" in usage.stderr


def test_policy_problems_stay_one_per_line(tmp_path: Path) -> None:
    """`policy validate` still lists each problem on its own line, their values escaped."""
    path = tmp_path / "policy.yaml"
    path.write_text('rules:\n  - {name: "a\\e[2K\\rb", levels: []}\nbogus\\e: 1\n')
    result = CliRunner().invoke(main, ["policy", "validate", str(path)])
    assert result.exit_code == 1, result.output
    _assert_clean(result.output)
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: invalid approval policy") and len(lines) >= 4
    assert all(line.startswith("  ") for line in lines[1:-1])
