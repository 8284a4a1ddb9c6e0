"""Model names are data: any name MLflow accepts selects exactly itself (issue #8 item 4).

MLflow's filter parser cuts the quotes off a string token and unescapes nothing, so the filter
builder in :mod:`mlflow_approvals.ports` spells a name exactly when it can and falls back to a
LIKE superset when it cannot; every search re-checks its results in Python. The pure builder is
checked with hypothesis against MLflow's own parser and matcher and against SQLite's and
PostgreSQL's LIKE; the searches run against a real registry (``sqlite:///`` and the session's
``mlflow server``, on PostgreSQL when it answers).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from mlflow.utils.search_utils import SearchModelVersionUtils, SearchUtils, _like

from conftest import (
    MLFLOW_MAJOR,
    PG_HOST,
    PG_PORT,
    postgres_available,
    register_versions,
    unique_name,
)
from mlflow_approvals import ApprovalClient, InvalidRequest
from mlflow_approvals.audit import MODEL_TAG
from mlflow_approvals.ports import (
    clause,
    like_superset,
    literal,
    quote,
    search_filter,
    tag_field,
)
from mlflow_approvals.tags import INDEX_KEY

EXAMPLES = 500

# MLflow 2.x's in-memory LIKE matcher (`_like`, which only its file store uses) turns a pattern
# into a regular expression without escaping it, so it raises on "?" and cannot be the oracle.
# The searches below run on the SQL stores, whose LIKE is checked against SQLite and PostgreSQL.
regex_safe_like = pytest.mark.skipif(
    MLFLOW_MAJOR < 3, reason="MLflow 2.x's in-memory LIKE matcher does not escape regex characters"
)

# Text that hits the characters the grammar treats specially far more often than st.text() does
# (any code point a name can hold: no lone surrogates, which UTF-8 cannot carry).
SPECIAL = "'\"\\`%_[]() -*/$\n"
texts = st.text(
    alphabet=st.one_of(st.sampled_from(SPECIAL), st.characters(exclude_categories=("Cs",))),
    max_size=40,
)

# Each group: names that a filter built the old way (or a LIKE superset) confuses with each other.
GROUPS: dict[str, list[str]] = {
    "escaped-quote": ["fraud'q", "fraud\\'q"],
    "percent": ["a%b", "axb"],
    "underscore": ["a_b", "a-b"],
    "trailing-backslash": ["x\\", "x_", "x\\\\", "x"],
    "unicode": ["模型-ü", "模型-u", "模型-Ü"],
    "double-quote-backtick": ['say "hi" `x`', "say 'hi' `x`", "say _hi_ _x_"],
    "both-quotes": ['it\'s "q"', "it_s _q_", 'IT\'S "Q"', 'it\\\'s "q"'],
    "long": ["n" * 200 + "'\" \\", "n" * 200 + "__ _", "N" * 200 + "'\" \\"],
}


def _parsed_value(parsed: dict[str, Any]) -> tuple[str, str]:
    return parsed["comparator"], parsed["value"]


def _selects(comparator: str, pattern: str, value: str) -> bool:
    """Whether MLflow's own matcher selects ``value`` with one parsed clause."""
    return bool(SearchUtils.get_comparison_func(comparator)(value, pattern))


# -- the filter builder, against MLflow's parser ------------------------------------------------


@regex_safe_like
@settings(max_examples=EXAMPLES, deadline=None)
@given(name=texts, value=texts)
def test_version_filter_parses_back_to_each_value(name: str, value: str) -> None:
    """A model-version filter on a name and a tag parses to exact `=` values, or a LIKE that
    selects the value, never anything that swallows the next clause."""
    parsed = SearchModelVersionUtils.parse_search_filter(
        search_filter({"name": name, tag_field("k"): value, tag_field("j"): None})
    )
    assert [(p["type"], p["key"]) for p in parsed] == [
        ("attribute", "name"),
        ("tag", "k"),
        ("tag", "j"),
    ]
    for p, original in zip(parsed[:2], (name, value), strict=True):
        comparator, pattern = _parsed_value(p)
        if literal(original) is not None:
            assert (comparator, pattern) == ("=", original)
        else:
            assert comparator == "LIKE"
            assert _like(original, pattern)
    assert _parsed_value(parsed[2]) == ("LIKE", "%")


@regex_safe_like
@settings(max_examples=EXAMPLES, deadline=None)
@given(name=texts, other=texts)
def test_run_filter_parses_back_to_each_value(name: str, other: str) -> None:
    """A run filter on the audit model tag parses the way the version filter does (runs'
    parser, which serves the audit run look-up)."""
    parsed = SearchUtils.parse_search_filter(
        search_filter({tag_field(MODEL_TAG): name, tag_field("other"): other})
    )
    assert [(p["type"], p["key"]) for p in parsed] == [("tag", MODEL_TAG), ("tag", "other")]
    for p, original in zip(parsed, (name, other), strict=True):
        assert _selects(*_parsed_value(p), original)
        if literal(original) is not None:
            assert _parsed_value(p) == ("=", original)


@settings(max_examples=EXAMPLES, deadline=None)
@given(value=texts)
def test_literal_is_exact_or_absent(value: str) -> None:
    """literal() spells a value exactly (alone or first of two clauses) and is None only for
    values with both quotes or a trailing backslash."""
    spelled = literal(value)
    if spelled is None:
        assert value.endswith("\\") or ("'" in value and '"' in value)
        with pytest.raises(InvalidRequest):
            quote(value)
        return
    assert quote(value) == spelled
    for f in (f"name = {spelled}", f"name = {spelled} AND tags.`k` = 'v\"'"):
        assert _parsed_value(SearchModelVersionUtils.parse_search_filter(f)[0]) == ("=", value)


@settings(max_examples=EXAMPLES, deadline=None)
@given(value=texts)
def test_like_superset_selects_its_value_in_sqlite(value: str) -> None:
    """SQLite's LIKE (the sqlite registry) selects a value with its superset pattern."""
    pattern = like_superset(value)[1:-1]
    assert not set("'\"\\[]") & set(pattern)
    with sqlite3.connect(":memory:") as db:
        assert db.execute("SELECT ? LIKE ?", (value, pattern)).fetchone() == (1,)


@pytest.fixture(scope="module")
def pg_cursor() -> Iterator[Any]:
    """A cursor on the local PostgreSQL (skips when none answers)."""
    if not postgres_available():
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432")
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="test")
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(value=texts.filter(lambda t: "\x00" not in t))  # PostgreSQL text holds no NUL
def test_like_superset_selects_its_value_in_postgresql(pg_cursor: Any, value: str) -> None:
    """PostgreSQL's LIKE (backslash is its escape character) selects a value with its superset
    pattern."""
    pg_cursor.execute("SELECT %s LIKE %s", (value, like_superset(value)[1:-1]))
    assert pg_cursor.fetchone() == (True,)


def test_clause_spelling() -> None:
    """clause() picks single quotes, then double quotes, then a LIKE superset."""
    assert clause("name", "a%b") == "name = 'a%b'"
    assert clause("name", "fraud'q") == 'name = "fraud\'q"'
    assert clause("name", "fraud\\'q") == 'name = "fraud\\\'q"'
    assert clause("name", "x\\") == "name LIKE 'x_'"
    assert clause("name", 'it\'s "q"') == "name LIKE 'it_s _q_'"
    assert clause(tag_field("k"), None) == "tags.`k` LIKE '%'"
    with pytest.raises(ValueError, match="backtick"):
        tag_field("a`b")


# -- against a real registry --------------------------------------------------------------------


# Every group on sqlite; over the real server's REST path the groups whose spelling differs
# (a quote pair, both quotes, a trailing backslash): the rest add minutes and no new path.
_SERVER_GROUPS = ("both-quotes", "escaped-quote", "trailing-backslash")
_CASES = [("sqlite", g) for g in sorted(GROUPS)] + [("server", g) for g in _SERVER_GROUPS]


@pytest.fixture(params=_CASES, ids=[f"{b}-{g}" for b, g in _CASES])
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(backend, group of names) for the registry tests."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def tracking_uri(
    case: tuple[str, str], request: pytest.FixtureRequest, tmp_path: Any, _sqlite_template: Any
) -> str:
    """The case's registry: a fresh sqlite one, or the session's real server."""
    from conftest import _fresh_sqlite

    if case[0] == "sqlite":
        return _fresh_sqlite(_sqlite_template, tmp_path)
    return str(request.getfixturevalue("mlflow_server").uri)


@pytest.fixture
def models(case: tuple[str, str], tracking_uri: str) -> list[tuple[str, str]]:
    """One group of confusable model names (each under one fresh prefix), one version each."""
    prefix = unique_name("fraud-names") + "-"
    names = [prefix + suffix for suffix in GROUPS[case[1]]]
    return [(name, register_versions(tracking_uri, name)[0]) for name in names]


def _client(tracking_uri: str, policy_dict: dict[str, Any], actor: str) -> ApprovalClient:
    return ApprovalClient(tracking_uri, tracking_uri, policy=policy_dict, actor=actor)


def test_versions_of_selects_only_its_model(tracking_uri, policy_dict, models):
    """Registry.versions_of(name) and search_versions(name, tags) return that model alone."""
    alice = _client(tracking_uri, policy_dict, "alice")
    for name, v in models:
        alice.request_transition(name, v, "Production")
    registry = _client(tracking_uri, policy_dict, "bob").registry
    for name, v in models:
        assert [(mv.name, str(mv.version)) for mv in registry.versions_of(name)] == [(name, v)]
        for tags in ({INDEX_KEY: "pending"}, {INDEX_KEY: None}):
            found = registry.search_versions(name, tags)
            assert [(mv.name, str(mv.version)) for mv in found] == [(name, v)]
        assert registry.search_versions(name, {INDEX_KEY: "idle"}) == []


def test_each_model_has_its_own_audit_run_and_log(tracking_uri, policy_dict, models):
    """Each model's audit run carries exactly its name, and its verify and reconcile read only
    its own events."""
    alice = _client(tracking_uri, policy_dict, "alice")
    for name, v in models:
        alice.request_transition(name, v, "Production")
    reader = _client(tracking_uri, policy_dict, "bob")  # a fresh audit store: no cached runs
    plain = MlflowClient(tracking_uri, tracking_uri)
    runs: dict[str, str] = {}
    for name, _ in models:
        (run_id,) = reader.audit.run_ids(name, create=False)
        assert plain.get_run(run_id).data.tags[MODEL_TAG] == name
        runs[name] = run_id
        report = reader.verify_audit(name)
        assert report.ok, report
        assert report.total == 1
        reconciled = reader.reconcile(name)
        assert reconciled.ok
        assert reconciled.events_replayed == 1
    assert len(set(runs.values())) == len(models)


def test_list_requests_of_a_model_lists_only_its_requests(tracking_uri, policy_dict, models):
    """list_requests(name) lists the requests of that model alone."""
    alice = _client(tracking_uri, policy_dict, "alice")
    filed = {name: alice.request_transition(name, v, "Production").id for name, v in models}
    for name, _ in models:
        for status in (None, "pending"):
            listed = alice.list_requests(name, status=status)
            assert [(r.name, r.id) for r in listed] == [(name, filed[name])]
