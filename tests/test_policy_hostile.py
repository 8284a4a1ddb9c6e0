"""Hostile and malformed policies: every one is refused with a PolicyError, never a crash.

Regression tests for issue #8 (duplicate keys, nesting, size, YAML tags and aliases, types),
property-based tests that any file or mapping gives a Policy or a PolicyError, and the one
gating decision (`Policy.gate`) as reconcile uses it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from conftest import register_versions, unique_name
from mlflow_approvals import ApprovalClient
from mlflow_approvals.cli import main
from mlflow_approvals.errors import PolicyError
from mlflow_approvals.policy import (
    MAX_POLICY_BYTES,
    MAX_POLICY_DEPTH,
    MAX_POLICY_VALUES,
    Gate,
    Policy,
    Rule,
    load_policy,
)
from mlflow_approvals.testing import EXAMPLE_POLICY

EXAMPLES = 500  # per property test; each example parses one small file or mapping

VALID_YAML = """\
roles:
  data-scientist: [alice, bob]
  ml-engineer: [carol, erin]
admins: [ml-engineer]
rules:
  - name: production
    models: ["fraud-*"]
    stages: [Production]
    aliases: [champion]
    levels:
      - [{role: data-scientist, count: 1}, {role: ml-engineer, count: 1}]
    expires_after: 7d
default: deny
"""


def write(folder: Path, name: str, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8, or bytes as they are) to ``folder/name``."""
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8", "surrogatepass"))
    return path


def refused(source: Any) -> str:
    """Load a policy that must be refused; return the PolicyError's message."""
    with pytest.raises(PolicyError) as info:
        load_policy(source)
    return str(info.value.message)


def nested(depth: int) -> Any:
    """A list nested ``depth`` deep, the innermost holding one string."""
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


# -- duplicate keys ---------------------------------------------------------------------------


def test_duplicate_json_key_is_refused(tmp_path: Path) -> None:
    """A JSON policy repeating "default" (deny, then allow) is refused, not loaded as allow."""
    path = write(tmp_path, "p.json", '{"rules": [], "default": "deny", "default": "allow"}')
    message = refused(path)
    assert str(path) in message
    assert "key 'default' appears twice" in message


def test_duplicate_json_key_in_a_rule_is_refused(tmp_path: Path) -> None:
    """A key repeated inside a nested JSON object (a rule's stages) is refused too."""
    rule = '{"name": "r", "stages": ["Production"], "stages": [], "levels": [{"role": "a"}]}'
    path = write(tmp_path, "p.json", '{"roles": {"a": ["x"]}, "rules": [' + rule + "]}")
    assert "key 'stages' appears twice" in refused(path)


def test_policy_validate_refuses_a_duplicate_json_key(tmp_path: Path) -> None:
    """`policy validate` exits 1 for a JSON policy with a repeated key (it said valid before)."""
    path = write(tmp_path, "p.json", '{"rules": [], "default": "deny", "default": "allow"}')
    result = CliRunner().invoke(main, ["policy", "validate", str(path)])
    assert result.exit_code == 1, result.output
    assert "appears twice" in result.output


def test_duplicate_yaml_key_in_a_rule_is_refused(tmp_path: Path) -> None:
    """A key repeated inside a nested YAML mapping (a rule) is refused with its line."""
    text = VALID_YAML.replace("    expires_after: 7d\n", "    expires_after: 7d\n    name: other\n")
    message = refused(write(tmp_path, "p.yaml", text))
    assert "duplicate key 'name'" in message
    assert "line 13" in message


# -- size and nesting -------------------------------------------------------------------------


def test_deeply_nested_json_is_refused(tmp_path: Path) -> None:
    """A JSON file nested 100,000 deep is a PolicyError, not a RecursionError."""
    path = write(tmp_path, "p.json", "[" * 100_000 + "]" * 100_000)
    message = refused(path)
    assert str(path) in message
    assert f"nest more than {MAX_POLICY_DEPTH} deep" in message


def test_deeply_nested_yaml_is_refused(tmp_path: Path) -> None:
    """A YAML file nested 100,000 deep (flow style) is a PolicyError naming the line."""
    message = refused(write(tmp_path, "p.yaml", "[" * 100_000 + "]" * 100_000))
    assert f"nest more than {MAX_POLICY_DEPTH} deep" in message
    assert "line 1, column 33" in message


def test_deeply_nested_block_yaml_is_refused(tmp_path: Path) -> None:
    """Block-style YAML mappings nested past the limit are refused at the line that does it."""
    text = "".join(" " * depth + f"k{depth}:\n" for depth in range(MAX_POLICY_DEPTH + 5))
    message = refused(write(tmp_path, "p.yaml", text))
    assert f"nest more than {MAX_POLICY_DEPTH} deep" in message
    assert f"line {MAX_POLICY_DEPTH + 1}," in message  # where the 33rd mapping starts


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_nesting_limit_is_exact(tmp_path: Path, suffix: str) -> None:
    """MAX_POLICY_DEPTH levels are read (then judged as fields); one more is refused unread."""
    for depth, refused_for_depth in ((MAX_POLICY_DEPTH, False), (MAX_POLICY_DEPTH + 1, True)):
        data = {"rules": [], "extra": nested(depth - 1)}  # the top level is depth 1
        text = json.dumps(data)  # JSON is YAML too
        message = refused(write(tmp_path, "p" + suffix, text))
        assert ("nest more than" in message) is refused_for_depth, message
        assert ("unknown key 'extra'" in message) is not refused_for_depth, message


def test_deeply_nested_inline_mapping_is_refused() -> None:
    """A mapping passed as policy= nested past the limit is refused with its field path."""
    message = refused({"rules": [{"name": "r", "levels": nested(500)}]})
    assert message.startswith("<inline policy>: rules[0].levels[0]")
    assert f"nest more than {MAX_POLICY_DEPTH} deep" in message


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    """A file one byte over MAX_POLICY_BYTES is refused, whatever it holds."""
    path = write(tmp_path, "p.yaml", "#" * (MAX_POLICY_BYTES + 1))
    message = refused(path)
    assert str(path) in message
    assert f"larger than {MAX_POLICY_BYTES} bytes" in message


def test_file_of_exactly_the_size_limit_is_read(tmp_path: Path) -> None:
    """A file of exactly MAX_POLICY_BYTES is read (here: all comment, so refused as empty)."""
    message = refused(write(tmp_path, "p.yaml", "#" * MAX_POLICY_BYTES))
    assert "the policy file is empty" in message


def test_too_many_values_are_refused(tmp_path: Path) -> None:
    """A JSON file under the size limit but with more than MAX_POLICY_VALUES values is refused."""
    members = ",".join(["0"] * (MAX_POLICY_VALUES + 1))
    message = refused(write(tmp_path, "p.json", '{"roles": {"a": [' + members + "]}}"))
    assert f"more than {MAX_POLICY_VALUES} values" in message


# -- YAML features ----------------------------------------------------------------------------


def test_yaml_alias_bomb_is_refused(tmp_path: Path) -> None:
    """Nine levels of ten aliases each (a billion laughs) are refused, counted as expanded."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    lines.append("roles: {r: *a8}")
    message = refused(write(tmp_path, "p.yaml", "\n".join(lines) + "\n"))
    assert f"more than {MAX_POLICY_VALUES} values" in message


def test_few_yaml_aliases_are_fine(tmp_path: Path) -> None:
    """An alias reused a few times (a shared member list) loads like the written-out policy."""
    text = VALID_YAML.replace("ml-engineer: [carol, erin]", "ml-engineer: &eng [carol, erin]")
    text = text.replace("admins:", "  reviewers: *eng\nadmins:", 1)
    policy = load_policy(write(tmp_path, "p.yaml", text))
    assert policy.roles["reviewers"] == policy.roles["ml-engineer"] == ("carol", "erin")


def test_yaml_alias_of_its_own_container_is_refused(tmp_path: Path) -> None:
    """A YAML value that contains itself through an alias is refused with its field path."""
    message = refused(write(tmp_path, "p.yaml", "rules: &r [*r]\n"))
    assert "rules[0]: the value contains itself" in message


@pytest.mark.parametrize(
    "text",
    [
        "default: !!python/object/apply:os.system ['true']\n",
        "default: !!python/name:os.system\n",
        "admins: !!set {a: null}\n",
        "default: !!binary aGVsbG8=\n",
        "default: !!timestamp nonsense\n",
        "default: !!bool maybe\n",
        "default: !custom deny\n",
    ],
)
def test_yaml_tags_are_refused(tmp_path: Path, text: str) -> None:
    """Explicit YAML tags (other than !!str, !!seq, !!map) are refused with their line."""
    message = refused(write(tmp_path, "p.yaml", text))
    assert "is not allowed in a policy" in message
    assert "line 1" in message


def test_yaml_str_tag_is_allowed(tmp_path: Path) -> None:
    """!!str is a way of quoting, so it is read as text."""
    policy = load_policy(write(tmp_path, "p.yaml", "roles: {a: [!!str 123]}\ndefault: deny\n"))
    assert policy.roles == {"a": ("123",)}


def test_yaml_merge_key_is_refused(tmp_path: Path) -> None:
    """A YAML merge key (<<) is refused, so no merge can expand or override silently."""
    text = "base: &b {name: r}\nrules: [{<<: *b, stages: [Production]}]\n"
    assert "merge keys (<<) are not allowed" in refused(write(tmp_path, "p.yaml", text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("roles: {a: [2020-02-30]}\n", "cannot read '2020-02-30' (day is out of range"),
        ("rules: [{count: " + "9" * 5000 + "}]\n", "cannot read '9999"),
        ("rules: [{count: 0x" + "f" * 5000 + "}]\n", "rules[0].count: the number is too large"),
        ("default: \x00\n", "unacceptable character #x0000"),
    ],
)
def test_yaml_values_that_break_their_constructor_are_refused(
    tmp_path: Path, text: str, expected: str
) -> None:
    """A scalar YAML cannot build (an impossible date, a 5,000-digit number) is a PolicyError."""
    assert expected in refused(write(tmp_path, "p.yaml", text))


# -- types, keys, bytes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1: x\n", "(top level): the key 1 is int, not text"),
        ("roles:\n  1.5: [a]\n", "roles: the key 1.5 is float, not text"),
        ("roles:\n  ~: [a]\n", "roles: the key None is NoneType, not text"),
        ("roles:\n  2020-01-01: [a]\n", "roles: the key datetime.date(2020, 1, 1) is date"),
        ("roles:\n  yes: [a]\n", "roles: the key True is bool, not text"),
    ],
)
def test_yaml_keys_that_are_not_text_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    """A mapping key YAML reads as a number, null, date or boolean is refused: quote it."""
    message = refused(write(tmp_path, "p.yaml", text))
    assert expected in message
    assert "quote it" in message


def test_inline_mapping_with_a_non_text_key_is_refused() -> None:
    """A mapping passed as policy= with a non-str key names the mapping that holds it."""
    message = refused({"roles": {("a", "b"): ["x"]}})
    assert message.startswith("<inline policy>: roles: the key ('a', 'b') is tuple, not text")


def test_inline_mapping_that_contains_itself_is_refused() -> None:
    """A self-referencing mapping passed as policy= is refused, not a RecursionError."""
    data: dict[str, Any] = {"default": "deny"}
    data["rules"] = [data]
    message = refused(data)
    assert message.startswith("<inline policy>: rules[0]")
    assert "the value contains itself" in message


def test_yaml_value_read_as_a_date_says_to_quote(tmp_path: Path) -> None:
    """A member name YAML reads as a date is refused with the quoting hint."""
    message = refused(write(tmp_path, "p.yaml", "roles: {a: [2020-01-01]}\n"))
    assert "roles.a[0]: expected text, got date" in message


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_invalid_utf8_is_refused(tmp_path: Path, suffix: str) -> None:
    """Bytes that are not UTF-8 are refused with the byte offset."""
    path = write(tmp_path, "p" + suffix, b'{"default": "\xff"}')
    message = refused(path)
    assert str(path) in message
    assert "not UTF-8 text (byte 13" in message


def test_binary_garbage_is_refused(tmp_path: Path) -> None:
    """A binary file (here the start of a gzip stream) is refused as not UTF-8."""
    assert "not UTF-8 text" in refused(write(tmp_path, "p.yaml", b"\x1f\x8b\x08\x00\xff\x00"))


def test_lone_surrogate_is_refused(tmp_path: Path) -> None:
    """A JSON \\ud800 escape (text that is not valid Unicode) is refused at its field."""
    message = refused(write(tmp_path, "p.json", '{"roles": {"a": ["\\ud800"]}}'))
    assert "roles.a[0]: the text is not valid Unicode" in message


def test_long_json_number_is_refused(tmp_path: Path) -> None:
    """A 5,000-digit JSON number is a PolicyError, not Python's int-conversion ValueError."""
    assert "a number of 5000 digits" in refused(write(tmp_path, "p.json", "[" + "9" * 5000 + "]"))


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    """A UTF-8 byte order mark (as some editors write) does not stop a JSON policy loading."""
    path = write(tmp_path, "p.json", '\ufeff{"default": "deny"}')
    assert load_policy(path).default == "deny"


@pytest.mark.parametrize("source", [123, b"policy.yaml", None, 1.5])
def test_source_of_the_wrong_type_is_refused(source: Any) -> None:
    """load_policy of something that is not a path, a mapping or a Policy is a PolicyError."""
    assert "a policy is a file path, a mapping or a Policy" in refused(source)


def test_path_with_a_nul_character_is_refused() -> None:
    """A path holding a NUL character is a PolicyError, not open()'s ValueError."""
    assert "embedded null byte" in refused("policy\x00.yaml")


def test_problem_list_is_capped(tmp_path: Path) -> None:
    """200 unknown keys give a message listing 50 of them and counting the rest."""
    data = {f"typo{i}": 1 for i in range(200)}
    message = refused(write(tmp_path, "p.json", json.dumps(data)))
    assert "(200 problems)" in message
    assert "... and 150 more" in message
    assert len([line for line in message.splitlines() if "unknown key" in line]) == 50


def test_a_huge_unknown_key_is_cut_in_the_message(tmp_path: Path) -> None:
    """A 100,000-character key is reported cut short, not copied into the message whole."""
    message = refused(write(tmp_path, "p.json", json.dumps({"k" * 100_000: 1})))
    assert "characters)" in message
    assert len(message) < 2_000


# -- the distinct-signer check -----------------------------------------------------------------


def test_large_role_with_a_large_count_loads() -> None:
    """A rule asking 20,000 of a 20,000-member role loads (the greedy pass fills it)."""
    members = [f"p{i}" for i in range(20_000)]
    rule = {"name": "r", "stages": ["Production"], "levels": [{"role": "a", "count": 20_000}]}
    assert load_policy({"roles": {"a": members}, "rules": [rule]}).rules[0].name == "r"


@st.composite
def rules_and_roles(draw: st.DrawFn) -> tuple[dict[str, list[str]], list[list[dict[str, Any]]]]:
    """Small overlapping roles and a rule of requirements each role can fill on its own."""
    people = [f"p{i}" for i in range(draw(st.integers(1, 6)))]
    names = [f"r{i}" for i in range(draw(st.integers(1, 4)))]
    roles = {
        name: draw(st.lists(st.sampled_from(people), min_size=1, unique=True)) for name in names
    }
    requirement = st.sampled_from(names).flatmap(
        lambda role: st.fixed_dictionaries(
            {"role": st.just(role), "count": st.integers(1, len(roles[role]))}
        )
    )
    levels = draw(st.lists(st.lists(requirement, min_size=1, max_size=3), min_size=1, max_size=3))
    return roles, levels


@settings(max_examples=EXAMPLES, deadline=None)
@given(rules_and_roles())
def test_distinct_signer_check_is_halls_condition(
    case: tuple[dict[str, list[str]], list[list[dict[str, Any]]]],
) -> None:
    """A rule loads exactly when every set of its roles has at least as many people as it needs."""
    roles, levels = case
    demand: dict[str, int] = {}
    for level in levels:
        for req in level:
            demand[req["role"]] = demand.get(req["role"], 0) + req["count"]
    fillable = all(
        sum(demand[role] for role in subset) <= len({p for role in subset for p in roles[role]})
        for size in range(1, len(demand) + 1)
        for subset in itertools.combinations(demand, size)
    )
    data = {"roles": roles, "rules": [{"name": "r", "stages": ["Production"], "levels": levels}]}
    if fillable:
        load_policy(data)
    else:
        assert "distinct signers" in refused(data)


# -- property tests: anything gives a Policy or a PolicyError -----------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the property tests' files (each example overwrites its file)."""
    return tmp_path_factory.mktemp("hostile")


def policy_or_policy_error(path: Path) -> None:
    """Load ``path``: a Policy, or a PolicyError that names the file; any other outcome fails."""
    try:
        assert isinstance(load_policy(path), Policy)
    except PolicyError as exc:
        assert str(path) in exc.message


KEYS = st.sampled_from(
    [
        *Policy.model_fields,
        *Rule.model_fields,
        "role",
        "count",
        "review_within",
        "data-scientist",
        "ml-engineer",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["Production", "staging", "7d", "0s", "champion", "deny", "alice", "*"])
)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(), inner, max_size=4)
    ),
    max_leaves=30,
)
POLICYISH = st.dictionaries(KEYS, JSONISH, max_size=5)

YAML_TOKENS = st.sampled_from(
    [
        "roles:",
        "rules:",
        "levels:",
        "- ",
        "  ",
        "\n",
        ": ",
        "[",
        "]",
        "{",
        "}",
        ", ",
        "&a ",
        "*a",
        "&b ",
        "*b",
        "<<: ",
        "!!str ",
        "!!python/object:os.system ",
        "!!int ",
        "!!timestamp ",
        "? ",
        "'",
        '"',
        "#",
        "---\n",
        "...\n",
        "%YAML 1.1\n",
        "%TAG !! tag:example.com,2000:\n",
        "|\n",
        ">\n",
        "alice",
        "7d",
        "Production",
        "default: deny",
        "count: 1",
        "0x" + "f" * 40,
        "2020-02-30",
        "\\ud800",
        "\t",
        "\x00",
        "\ufeff",
    ]
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=st.text(max_size=300), suffix=st.sampled_from([".yaml", ".json"]))
def test_any_text_gives_a_policy_or_a_policy_error(folder: Path, text: str, suffix: str) -> None:
    """Arbitrary text (lone surrogates written raw) loads or raises PolicyError, nothing else."""
    policy_or_policy_error(write(folder, "text" + suffix, text))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".yaml", ".json"]))
def test_any_bytes_give_a_policy_or_a_policy_error(
    folder: Path, content: bytes, suffix: str
) -> None:
    """Arbitrary bytes as a policy file load or raise PolicyError, nothing else."""
    policy_or_policy_error(write(folder, "bytes" + suffix, content))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(tokens=st.lists(YAML_TOKENS, max_size=40))
def test_yaml_made_of_yaml_features_gives_a_policy_or_a_policy_error(
    folder: Path, tokens: list[str]
) -> None:
    """Text stitched from YAML syntax (anchors, aliases, tags, merges) loads or is refused."""
    policy_or_policy_error(write(folder, "tokens.yaml", "".join(tokens)))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    position=st.integers(0, len(VALID_YAML)),
    cut=st.integers(0, 5),
    insert=st.text(max_size=5) | YAML_TOKENS,
    suffix=st.sampled_from([".yaml", ".json"]),
)
def test_edited_valid_policy_gives_a_policy_or_a_policy_error(
    folder: Path, position: int, cut: int, insert: str, suffix: str
) -> None:
    """A valid policy (YAML, or JSON) with a few characters cut or inserted loads or is refused."""
    base = VALID_YAML if suffix == ".yaml" else json.dumps(yaml.safe_load(VALID_YAML), indent=1)
    text = base[:position] + insert + base[position + cut :]
    policy_or_policy_error(write(folder, "edited" + suffix, text))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=POLICYISH | JSONISH, suffix=st.sampled_from([".yaml", ".json"]))
def test_any_json_like_structure_gives_a_policy_or_a_policy_error(
    folder: Path, data: Any, suffix: str
) -> None:
    """Nested lists, mappings and scalars, dumped as YAML or JSON, load or raise PolicyError."""
    # JSON as Python writes it (NaN and Infinity included); YAML in block style
    text = json.dumps(data) if suffix == ".json" else yaml.safe_dump(data, allow_unicode=True)
    policy_or_policy_error(write(folder, "data" + suffix, text))


@settings(max_examples=EXAMPLES, deadline=None)
@given(data=POLICYISH)
def test_any_mapping_gives_a_policy_or_a_policy_error(data: dict[str, Any]) -> None:
    """A mapping passed as policy= (as ApprovalClient(policy={...}) does) loads or is refused."""
    try:
        assert isinstance(load_policy(data), Policy)
    except PolicyError as exc:
        assert exc.message.startswith(("<inline policy>", "invalid approval policy in <inline"))


@settings(max_examples=EXAMPLES, deadline=None)
@given(default=st.sampled_from(["allow", "deny"]), model=st.text(max_size=12), alias=KEYS)
def test_gate_is_match_plus_default(default: str, model: str, alias: str) -> None:
    """Policy.gate gives match()'s rule, and denied exactly when no rule matches under deny."""
    policy = load_policy({**EXAMPLE_POLICY, "default": default})
    gate = policy.gate(model, "alias", alias)
    assert gate.rule == policy.match(model, "alias", alias)
    assert gate.denied is (gate.rule is None and default == "deny")
    assert gate.gated is (gate.rule is not None or default == "deny")


# -- the one gating decision ------------------------------------------------------------------


def test_gate_names_the_rule_that_gates() -> None:
    """A target a rule matches is gated by that rule, and not denied."""
    gate = load_policy(EXAMPLE_POLICY).gate("fraud-x", "stage", "production")
    assert gate.rule is not None and gate.rule.name == "production"
    assert (gate.denied, gate.gated) == (False, True)
    assert (
        gate.reason
        == "rule 'production' gates stage 'production' of model 'fraud-x': it needs sign-off"
    )


def test_gate_under_deny_gives_the_engines_refusal() -> None:
    """An unmatched target under default: deny is denied, with the engine's refusal text."""
    gate = load_policy({**EXAMPLE_POLICY, "default": "deny"}).gate("other", "stage", "Staging")
    assert gate == Gate(
        None,
        True,
        "no rule of the policy covers stage 'Staging' of model 'other', and the policy's "
        "default is deny: add a rule for it to the policy",
    )
    assert gate.gated


def test_gate_under_allow_lets_through() -> None:
    """An unmatched target under default: allow is neither gated nor denied."""
    gate = load_policy(EXAMPLE_POLICY).gate("other", "alias", "shadow")
    assert (gate.rule, gate.denied, gate.gated) == (None, False, False)
    assert gate.reason.endswith("the policy's default is allow: the change is applied at once")


def test_gate_refuses_an_unknown_stage() -> None:
    """Policy.gate raises ValueError for a stage MLflow does not know, as match does."""
    with pytest.raises(ValueError, match="unknown stage"):
        load_policy(EXAMPLE_POLICY).gate("fraud-x", "stage", "Prod")


# -- reconcile honours default: deny ----------------------------------------------------------


@pytest.fixture
def deny_auditor(sqlite_uri: str) -> Iterator[tuple[str, ApprovalClient]]:
    """A sqlite registry and an auditor's client under the test policy with default: deny."""
    policy = {**EXAMPLE_POLICY, "default": "deny"}
    yield sqlite_uri, ApprovalClient(sqlite_uri, sqlite_uri, policy=policy, actor="auditor")


def test_reconcile_under_deny_reports_an_unmatched_stage_as_a_bypass(
    deny_auditor: tuple[str, ApprovalClient],
) -> None:
    """Under default: deny, a stage change no rule covers is a bypass (CHANGED), not UNGATED."""
    uri, auditor = deny_auditor
    name = unique_name()
    (v,) = register_versions(uri, name)
    MlflowClient(uri, uri).transition_model_version_stage(name, v, "Staging")
    report = auditor.reconcile(name)
    (change,) = report.changes
    assert (change.what, change.actual, change.gated) == ("stage", "Staging", True)
    assert not report.ok
    assert report.lines == [
        f"CHANGED  v{v} stage: the audit log says 'None', the registry has 'Staging'"
    ]


def test_reconcile_under_deny_reports_an_unmatched_alias_as_a_bypass(
    deny_auditor: tuple[str, ApprovalClient],
) -> None:
    """Under default: deny, an alias no rule covers set by a plain client is a bypass."""
    uri, auditor = deny_auditor
    name = unique_name()
    (v,) = register_versions(uri, name)
    MlflowClient(uri, uri).set_registered_model_alias(name, "shadow", v)
    report = auditor.reconcile(name)
    (change,) = report.changes
    assert (change.what, change.key, change.gated) == ("alias", "shadow", True)
    assert not report.ok
    assert report.lines[0].startswith("CHANGED  alias @shadow")


def test_reconcile_under_allow_still_reports_an_unmatched_stage_as_ungated(
    sqlite_uri: str,
) -> None:
    """Under default: allow, the same unmatched stage change stays UNGATED and the report ok."""
    name = unique_name()
    (v,) = register_versions(sqlite_uri, name)
    MlflowClient(sqlite_uri, sqlite_uri).transition_model_version_stage(name, v, "Staging")
    auditor = ApprovalClient(sqlite_uri, sqlite_uri, policy=EXAMPLE_POLICY, actor="auditor")
    report = auditor.reconcile(name)
    (change,) = report.changes
    assert not change.gated and report.ok
    assert report.lines[0].startswith("UNGATED")
