"""Unit tests of the approval policy: loading, validation, matching, hashing."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from conftest import CANONICAL_YAML
from mlflow_approvals.errors import PolicyError
from mlflow_approvals.policy import (
    STAGES,
    Policy,
    Requirement,
    Rule,
    canonical_stage,
    describe_rule,
    format_duration,
    load_policy,
    parse_duration,
    policy_from_env,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "policy.yaml"


def canonical() -> dict[str, Any]:
    """A fresh copy of the canonical policy as a mapping."""
    data: dict[str, Any] = yaml.safe_load(CANONICAL_YAML)
    return copy.deepcopy(data)


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``tmp_path/name`` and return the path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problem_lines(exc: PolicyError) -> list[str]:
    """The indented problem lines of a PolicyError message."""
    return [line.strip() for line in exc.message.splitlines() if line.startswith("  ")]


def refuse(data: dict[str, Any]) -> PolicyError:
    """Load an inline policy that must be refused and return the error."""
    with pytest.raises(PolicyError) as info:
        load_policy(data)
    return info.value


# -- stages and durations -------------------------------------------------------------------


def test_stages_are_mlflows_four() -> None:
    """STAGES lists MLflow's four stages in canonical spelling."""
    assert STAGES == ("None", "Staging", "Production", "Archived")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("production", "Production"),
        ("STAGING", "Staging"),
        ("none", "None"),
        ("Archived", "Archived"),
    ],
)
def test_canonical_stage_ignores_case(given: str, expected: str) -> None:
    """canonical_stage maps any letter case to the canonical stage name."""
    assert canonical_stage(given) == expected


def test_canonical_stage_refuses_unknown_stage() -> None:
    """canonical_stage raises ValueError naming the stage and the valid ones."""
    with pytest.raises(ValueError) as info:
        canonical_stage("prod")
    assert str(info.value) == "unknown stage 'prod': use one of None, Staging, Production, Archived"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        (" 3d ", timedelta(days=3)),
    ],
)
def test_parse_duration_reads_each_unit(text: str, expected: timedelta) -> None:
    """parse_duration reads a whole number followed by s, m, h, d or w."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "1.5h", "-1d", "7 days", "1d12h", "7D"])
def test_parse_duration_refuses_malformed_text(text: str) -> None:
    """parse_duration raises ValueError showing the expected form for malformed text."""
    with pytest.raises(ValueError, match=r"invalid duration .*'7d'"):
        parse_duration(text)


def test_parse_duration_refuses_zero() -> None:
    """parse_duration refuses a zero duration, saying it must be greater than zero."""
    with pytest.raises(ValueError, match="greater than zero"):
        parse_duration("0h")


def test_parse_duration_refuses_overflow() -> None:
    """parse_duration turns a duration too long for timedelta into a ValueError."""
    with pytest.raises(ValueError, match="too long"):
        parse_duration("99999999999w")


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (timedelta(days=7), "7d"),
        (timedelta(weeks=2), "14d"),
        (timedelta(hours=36), "36h"),
        (timedelta(minutes=90), "90m"),
        (timedelta(seconds=61), "61s"),
    ],
)
def test_format_duration_uses_largest_even_unit(duration: timedelta, text: str) -> None:
    """format_duration writes the largest unit that divides evenly, and parses back."""
    assert format_duration(duration) == text
    assert parse_duration(text) == duration


# -- loading --------------------------------------------------------------------------------


def test_example_policy_loads() -> None:
    """examples/policy.yaml loads into the canonical policy."""
    policy = load_policy(EXAMPLE)
    assert policy.roles == {
        "data-scientist": ("alice", "bob"),
        "ml-engineer": ("carol", "erin"),
        "business-owner": ("dave",),
    }
    assert policy.admins == ("ml-engineer",)
    assert policy.default == "allow"
    (rule,) = policy.rules
    assert rule.name == "production"
    assert rule.models == ("fraud-*",)
    assert rule.stages == ("Production",)
    assert rule.aliases == ("champion",)
    assert rule.levels == (
        (Requirement(role="data-scientist"), Requirement(role="ml-engineer")),
        (Requirement(role="business-owner"),),
    )
    assert rule.expires_after == timedelta(days=7)
    assert rule.separation_of_duties is True
    assert policy.content_hash == load_policy(canonical()).content_hash


def test_yaml_and_json_files_load_the_same_policy(tmp_path: Path) -> None:
    """A .yaml, a .yml and a .json file with the same content load equal policies."""
    from_yaml = load_policy(write(tmp_path, "p.yaml", CANONICAL_YAML))
    from_yml = load_policy(str(write(tmp_path, "p.yml", CANONICAL_YAML)))
    from_json = load_policy(write(tmp_path, "p.json", json.dumps(canonical(), indent=2)))
    assert from_yaml.model_dump() == from_yml.model_dump() == from_json.model_dump()
    assert from_json.rules[0].expires_after == timedelta(days=7)


def test_source_records_the_path_and_stays_out_of_dump(tmp_path: Path) -> None:
    """source is the file's path (None inline) and is neither dumped nor hashed."""
    path = write(tmp_path, "p.yaml", CANONICAL_YAML)
    from_file = load_policy(path)
    inline = load_policy(canonical())
    assert from_file.source == str(path)
    assert inline.source is None
    assert "source" not in from_file.model_dump()
    assert from_file.content_hash == inline.content_hash


def test_load_policy_returns_a_policy_as_is() -> None:
    """load_policy given a Policy returns that very object."""
    policy = load_policy(canonical())
    assert load_policy(policy) is policy


def test_missing_file_names_path_and_how_to_point_at_it(tmp_path: Path) -> None:
    """A missing file raises PolicyError naming the path, MLFLOW_APPROVALS_POLICY and policy=."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    message = info.value.message
    assert str(path) in message
    assert "not found" in message
    assert "MLFLOW_APPROVALS_POLICY" in message
    assert "policy=" in message


def test_directory_is_refused(tmp_path: Path) -> None:
    """A directory given as the policy path raises PolicyError naming it."""
    with pytest.raises(PolicyError, match="is a directory"):
        load_policy(tmp_path)


def test_policy_text_instead_of_path_is_refused() -> None:
    """Passing YAML text instead of a path raises PolicyError saying to pass a path."""
    with pytest.raises(PolicyError, match="takes the path"):
        load_policy(CANONICAL_YAML)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A YAML syntax error raises PolicyError with the file and the line of the error."""
    path = write(tmp_path, "p.yaml", "roles:\n  a: [x\nrules: []\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(path) in info.value.message
    assert "YAML syntax error at line 3" in info.value.message


def test_json_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A JSON syntax error raises PolicyError with the file and the line of the error."""
    path = write(tmp_path, "p.json", '{\n  "roles": {},\n  "rules": [,]\n}\n')
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(path) in info.value.message
    assert "JSON syntax error at line 3" in info.value.message


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    """A key repeated in one YAML mapping is refused with its line, not silently overwritten."""
    path = write(tmp_path, "p.yaml", "roles:\n  a: [x]\n  a: [y]\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert "duplicate key 'a'" in info.value.message
    assert "line 3" in info.value.message


def test_empty_file_is_refused(tmp_path: Path) -> None:
    """An empty policy file is refused rather than read as an allow-everything policy."""
    with pytest.raises(PolicyError, match="the policy file is empty"):
        load_policy(write(tmp_path, "p.yaml", "# nothing yet\n"))


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    """A policy file whose top level is a list is refused, naming the file."""
    path = write(tmp_path, "p.yaml", "- name: x\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(path) in info.value.message
    assert "top level must be a mapping" in info.value.message


def test_file_errors_name_file_and_field_path(tmp_path: Path) -> None:
    """A validation error from a file names the file and the full field path."""
    data = canonical()
    data["rules"][0]["levels"][1][0]["count"] = 0
    path = write(tmp_path, "p.yaml", yaml.safe_dump(data))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert f"invalid approval policy in {path}" in info.value.message
    assert problem_lines(info.value) == [
        "rules[0].levels[1][0].count: count must be 1 or more, got 0: it is how many distinct "
        "members of the role must sign"
    ]


def test_inline_errors_name_inline_policy() -> None:
    """A validation error from a mapping says <inline policy> where a file name would be."""
    data = canonical()
    data["default"] = "maybe"
    error = refuse(data)
    assert "invalid approval policy in <inline policy>" in error.message
    assert problem_lines(error)[0].startswith("default: ")


def test_every_problem_is_listed_one_per_line() -> None:
    """All problems of a policy are listed, one line each, with a line saying what to do."""
    data = canonical()
    data["bogus"] = 1
    data["rules"][0]["stages"] = ["prod"]
    data["rules"][0]["expires_after"] = "soon"
    error = refuse(data)
    lines = problem_lines(error)
    assert len(lines) == 3
    assert "(3 problems)" in error.message
    assert any(line.startswith("bogus: unknown key 'bogus'") for line in lines)
    assert any(line.startswith("rules[0].stages[0]: unknown stage 'prod'") for line in lines)
    assert any(line.startswith("rules[0].expires_after: invalid duration 'soon'") for line in lines)
    assert "Fix each field listed above" in error.message


def test_policy_error_is_a_400() -> None:
    """A refused policy raises PolicyError that maps to HTTP 400, not a retried 5xx."""
    data = canonical()
    data["default"] = "maybe"
    assert refuse(data).get_http_status_code() == 400


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ((), "typo: unknown key 'typo': use one of roles, admins, rules, default"),
        (("rules", 0), "rules[0].typo: unknown key 'typo'"),
        (
            ("rules", 0, "levels", 0, 1),
            "rules[0].levels[0][1].typo: unknown key 'typo': use one of role, count",
        ),
    ],
)
def test_unknown_keys_are_refused_anywhere(where: tuple[Any, ...], expected: str) -> None:
    """An unknown key at the top, in a rule or in a requirement is refused with its path."""
    data = canonical()
    target: Any = data
    for step in where:
        target = target[step]
    target["typo"] = True
    (line,) = problem_lines(refuse(data))
    assert line.startswith(expected)


def test_requirement_naming_undefined_role_is_refused() -> None:
    """A requirement naming a role not under roles is refused at its role field."""
    data = canonical()
    data["rules"][0]["levels"][1][0]["role"] = "business-owners"
    (line,) = problem_lines(refuse(data))
    assert line.startswith(
        "rules[0].levels[1][0].role: role 'business-owners' is not defined under roles"
    )


def test_count_below_one_is_refused() -> None:
    """A requirement count of 0 is refused at its count field."""
    data = canonical()
    data["rules"][0]["levels"][0][0]["count"] = 0
    (line,) = problem_lines(refuse(data))
    assert line.startswith("rules[0].levels[0][0].count: count must be 1 or more")


def test_count_must_be_an_integer() -> None:
    """A count given as text or a boolean is refused rather than coerced."""
    for bad in ("2", True):
        data = canonical()
        data["rules"][0]["levels"][0][0]["count"] = bad
        (line,) = problem_lines(refuse(data))
        assert line.startswith("rules[0].levels[0][0].count:")


def test_count_above_role_members_is_refused() -> None:
    """A count larger than the role's members is refused, naming the role and its size."""
    data = canonical()
    data["rules"][0]["levels"][1][0]["count"] = 2
    (line,) = problem_lines(refuse(data))
    assert line.startswith(
        "rules[0].levels[1][0].count: count 2 asks for more signers than role "
        "'business-owner' has members (1)"
    )


def test_role_without_members_is_refused_when_used() -> None:
    """A role with no members is refused when a requirement uses it."""
    data = canonical()
    data["roles"]["business-owner"] = []
    (line,) = problem_lines(refuse(data))
    assert line.startswith("rules[0].levels[1][0].role: role 'business-owner' has no members")


def test_role_without_members_is_allowed_when_unused() -> None:
    """A role with no members loads when no requirement uses it."""
    data = canonical()
    data["roles"]["auditor"] = []
    assert load_policy(data).roles["auditor"] == ()


def test_member_listed_twice_in_a_role_is_refused() -> None:
    """A person listed twice in one role is refused at that entry."""
    data = canonical()
    data["roles"]["ml-engineer"] = ["carol", "erin", "carol"]
    (line,) = problem_lines(refuse(data))
    assert line.startswith("roles.ml-engineer[2]: 'carol' is listed twice")


def test_yaml_scalar_read_as_non_text_says_to_quote(tmp_path: Path) -> None:
    """A member name YAML reads as a number or boolean is refused with a hint to quote it."""
    path = write(tmp_path, "p.yaml", "roles:\n  ops: [1234, no]\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    lines = problem_lines(info.value)
    assert lines[0].startswith("roles.ops[0]: expected text, got int 1234: quote the value")
    assert lines[1].startswith("roles.ops[1]: expected text, got bool False: quote the value")


def test_duplicate_rule_names_are_refused() -> None:
    """A rule name used twice is refused at the second rule's name."""
    data = canonical()
    data["rules"].append(copy.deepcopy(data["rules"][0]))
    (line,) = problem_lines(refuse(data))
    assert line.startswith("rules[1].name: rule name 'production' is already used by rules[0]")


@pytest.mark.parametrize("bad", ["7 days", "0d", 7, "-3h"])
def test_bad_duration_is_refused(bad: object) -> None:
    """An expires_after that is not a positive duration string is refused at its path."""
    data = canonical()
    data["rules"][0]["expires_after"] = bad
    (line,) = problem_lines(refuse(data))
    assert line.startswith("rules[0].expires_after: ")


def test_unknown_stage_is_refused() -> None:
    """An unknown stage is refused at its index, listing the valid stages."""
    data = canonical()
    data["rules"][0]["stages"] = ["Staging", "Prod"]
    (line,) = problem_lines(refuse(data))
    assert line == (
        "rules[0].stages[1]: unknown stage 'Prod': use one of None, Staging, Production, Archived"
    )


def test_stages_are_canonicalised_at_load() -> None:
    """Stages written in any case are stored in canonical spelling."""
    data = canonical()
    data["rules"][0]["stages"] = ["production", "STAGING"]
    assert load_policy(data).rules[0].stages == ("Production", "Staging")


def test_admins_naming_undefined_role_is_refused() -> None:
    """An admins entry naming a role not under roles is refused at its index."""
    data = canonical()
    data["admins"] = ["ml-engineer", "admin"]
    (line,) = problem_lines(refuse(data))
    assert line.startswith("admins[1]: admins names role 'admin', which is not defined")


def test_rule_without_stage_or_alias_is_refused() -> None:
    """A rule that names no stage and no alias is refused, naming the rule."""
    data = canonical()
    data["rules"][0]["stages"] = []
    del data["rules"][0]["aliases"]
    (line,) = problem_lines(refuse(data))
    assert line.startswith("rules[0]: rule 'production' names no stage and no alias")


def test_empty_levels_list_is_refused() -> None:
    """A rule with levels: [] is refused at its levels field."""
    data = canonical()
    data["rules"][0]["levels"] = []
    (line,) = problem_lines(refuse(data))
    assert line.startswith("rules[0].levels: a rule needs at least one level")


def test_empty_level_is_refused() -> None:
    """An empty level inside levels is refused at that level's index."""
    data = canonical()
    data["rules"][0]["levels"].append([])
    (line,) = problem_lines(refuse(data))
    assert line.startswith("rules[0].levels[2]: level 3 is empty")


def test_missing_levels_is_refused() -> None:
    """A rule without a levels key is refused, saying the key is required."""
    data = canonical()
    del data["rules"][0]["levels"]
    (line,) = problem_lines(refuse(data))
    assert line == "rules[0].levels: required key 'levels' is missing: add it"


def test_empty_models_list_is_refused() -> None:
    """A rule with models: [] (which could never match) is refused."""
    data = canonical()
    data["rules"][0]["models"] = []
    (line,) = problem_lines(refuse(data))
    assert line.startswith("rules[0].models: models is empty")


def test_single_mapping_is_a_one_requirement_level() -> None:
    """A level written as one {role, count} mapping equals a list holding that requirement."""
    data = canonical()
    data["rules"][0]["levels"][1] = {"role": "business-owner"}
    rule = load_policy(data).rules[0]
    assert rule.levels[1] == (Requirement(role="business-owner", count=1),)


# -- distinct signers -----------------------------------------------------------------------


def test_overlapping_roles_short_of_distinct_people_are_refused() -> None:
    """Requirements that distinct people cannot fill are refused, naming rule, roles and counts."""
    data = canonical()
    data["roles"]["business-owner"] = ["carol"]
    data["rules"][0]["levels"] = [
        [{"role": "ml-engineer", "count": 2}],
        [{"role": "business-owner", "count": 1}],
    ]
    (line,) = problem_lines(refuse(data))
    assert line.startswith(
        "rules[0].levels: rule 'production' needs 3 distinct signers from roles ml-engineer, "
        "business-owner but only 2 people hold them"
    )


def test_same_role_on_two_levels_needs_two_people() -> None:
    """One role asked for on two levels needs two members, since a person signs once."""
    data = canonical()
    data["rules"][0]["levels"] = [[{"role": "business-owner"}], [{"role": "business-owner"}]]
    (line,) = problem_lines(refuse(data))
    assert line.startswith(
        "rules[0].levels: rule 'production' needs 2 distinct signers from role business-owner "
        "but only 1 person holds them"
    )


def test_shortfall_names_only_the_roles_that_lack_people() -> None:
    """The distinct-signer message names the short roles, not every role of the rule."""
    data = canonical()
    data["roles"]["business-owner"] = ["carol"]
    data["roles"]["risk"] = ["carol"]
    data["rules"][0]["levels"] = [
        [{"role": "data-scientist", "count": 2}],
        [{"role": "business-owner"}, {"role": "risk"}],
    ]
    (line,) = problem_lines(refuse(data))
    assert "needs 2 distinct signers from roles business-owner, risk but only 1 person" in line


def test_overlapping_roles_with_enough_people_load() -> None:
    """A person in several roles does not block a rule that distinct people can still fill."""
    data = canonical()
    data["roles"] = {"a": ["x"], "b": ["x", "y"], "c": ["x", "y", "z"]}
    data["admins"] = []
    data["rules"][0]["levels"] = [
        [{"role": "c", "count": 1}, {"role": "b", "count": 1}],
        [{"role": "a", "count": 1}],
    ]
    assert len(load_policy(data).rules[0].levels) == 2


# -- matching -------------------------------------------------------------------------------


def rules_policy(*rules: dict[str, Any], default: str = "allow") -> Policy:
    """A policy with one role and the given rules, each asking for one sign-off."""
    return load_policy(
        {
            "roles": {"reviewer": ["rita"]},
            "rules": [{"levels": [{"role": "reviewer"}], **rule} for rule in rules],
            "default": default,
        }
    )


def test_model_globs_select_rules() -> None:
    """A rule gates only models matching its globs, case-sensitively."""
    policy = rules_policy(
        {"name": "fraud", "models": ["fraud-*", "risk-?"], "stages": ["Production"]}
    )
    assert policy.match("fraud-model", "stage", "Production") is not None
    assert policy.match("risk-1", "stage", "Production") is not None
    assert policy.match("risk-10", "stage", "Production") is None
    assert policy.match("Fraud-model", "stage", "Production") is None
    assert policy.match("churn", "stage", "Production") is None


def test_default_models_glob_matches_every_model() -> None:
    """A rule without models gates every registered model."""
    policy = rules_policy({"name": "all", "stages": ["Production"]})
    assert policy.rules[0].models == ("*",)
    assert policy.match("anything/at all", "stage", "Production") is not None


def test_first_matching_rule_wins() -> None:
    """When several rules match, the first in file order is returned."""
    policy = rules_policy(
        {"name": "fraud", "models": ["fraud-*"], "stages": ["Production"]},
        {"name": "everything", "stages": ["Production", "Staging"]},
    )
    rule = policy.match("fraud-model", "stage", "Production")
    assert rule is not None and rule.name == "fraud"
    rule = policy.match("fraud-model", "stage", "Staging")
    assert rule is not None and rule.name == "everything"


def test_stage_matching_ignores_case() -> None:
    """A stage target matches whatever its letter case."""
    policy = rules_policy({"name": "prod", "stages": ["production"]})
    assert policy.match("m", "stage", "PRODUCTION") is not None
    assert policy.match("m", "stage", "Staging") is None


def test_matching_an_unknown_stage_raises() -> None:
    """Matching an unknown stage raises ValueError instead of silently not matching."""
    policy = rules_policy({"name": "prod", "stages": ["Production"]})
    with pytest.raises(ValueError, match="unknown stage 'Prod'"):
        policy.match("m", "stage", "Prod")


def test_alias_globs_select_rules() -> None:
    """An alias target matches the rule's alias globs, case-sensitively."""
    policy = rules_policy({"name": "champ", "aliases": ["champion", "prod-*"]})
    assert policy.match("m", "alias", "champion") is not None
    assert policy.match("m", "alias", "prod-eu") is not None
    assert policy.match("m", "alias", "Champion") is None
    assert policy.match("m", "alias", "challenger") is None


def test_stage_rule_does_not_gate_alias_of_same_name() -> None:
    """A stage rule does not match an alias spelled like the stage, and vice versa."""
    policy = rules_policy(
        {"name": "stage-only", "stages": ["Production"]},
        {"name": "alias-only", "aliases": ["Staging"]},
    )
    assert policy.match("m", "alias", "Production") is None
    assert policy.match("m", "stage", "Staging") is None


def test_unknown_target_kind_raises() -> None:
    """Rule.matches raises ValueError for a kind other than stage or alias."""
    rule = rules_policy({"name": "prod", "stages": ["Production"]}).rules[0]
    with pytest.raises(ValueError, match="unknown target kind"):
        rule.matches("m", "tag", "x")  # type: ignore[arg-type]


def test_default_is_allow_unless_deny_is_written() -> None:
    """default is allow when omitted, stays deny when written; an unmatched target is None."""
    assert rules_policy({"name": "prod", "stages": ["Production"]}).default == "allow"
    deny = rules_policy({"name": "prod", "stages": ["Production"]}, default="deny")
    assert deny.default == "deny"
    assert deny.match("m", "stage", "Staging") is None
    assert load_policy({"default": "deny"}).default == "deny"


# -- roles ----------------------------------------------------------------------------------


def test_roles_of_lists_roles_in_policy_order() -> None:
    """roles_of returns the actor's roles in the order roles are written, case-sensitively."""
    policy = load_policy(
        {"roles": {"b-role": ["ann", "joe"], "a-role": ["joe"], "c-role": ["ann"]}}
    )
    assert policy.roles_of("joe") == ("b-role", "a-role")
    assert policy.roles_of("ann") == ("b-role", "c-role")
    assert policy.roles_of("Joe") == ()
    assert policy.roles_of("nobody") == ()


def test_is_admin_follows_admin_roles() -> None:
    """is_admin is true only for members of a role listed under admins."""
    policy = load_policy(canonical())
    assert policy.is_admin("carol")
    assert policy.is_admin("erin")
    assert not policy.is_admin("alice")
    assert not policy.is_admin("dave")
    assert not policy.is_admin("Carol")


# -- hashing and dumping --------------------------------------------------------------------


def test_content_hash_is_sha256_hex() -> None:
    """content_hash is 'sha256:' followed by 64 hex digits."""
    digest = load_policy(canonical()).content_hash
    prefix, hexdigits = digest.split(":")
    assert prefix == "sha256"
    assert len(hexdigits) == 64
    int(hexdigits, 16)


def test_content_hash_ignores_key_order_and_formatting(tmp_path: Path) -> None:
    """Reordered keys, flow vs block YAML, JSON, stage case and level shorthand hash the same."""
    reordered = """\
default: allow
rules:
- levels:
  - - count: 1
      role: data-scientist
    - {count: 1, role: ml-engineer}
  - {role: business-owner}
  expires_after: 1w
  aliases: [champion]
  stages: [production]
  models: [fraud-*]
  name: production
admins:
- ml-engineer
roles:
  business-owner: [dave]
  ml-engineer: [carol, erin]
  data-scientist: [alice, bob]
"""
    hashes = {
        load_policy(write(tmp_path, "a.yaml", CANONICAL_YAML)).content_hash,
        load_policy(write(tmp_path, "b.yaml", reordered)).content_hash,
        load_policy(write(tmp_path, "c.json", json.dumps(canonical()))).content_hash,
    }
    assert len(hashes) == 1


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["roles"]["business-owner"].append("frank"),
        lambda d: d["rules"][0].update(expires_after="8d"),
        lambda d: d["rules"][0].update(separation_of_duties=False),
        lambda d: d.update(default="deny"),
        lambda d: d["rules"][0]["levels"].reverse(),
    ],
)
def test_content_hash_changes_with_content(change: Any) -> None:
    """Any change to roles, rules or default changes content_hash."""
    data = canonical()
    change(data)
    assert load_policy(data).content_hash != load_policy(canonical()).content_hash


def test_dump_round_trips_with_duration_as_text() -> None:
    """model_dump writes expires_after as its duration string and validates back equal."""
    policy = load_policy(canonical())
    dumped = policy.model_dump(mode="json")
    assert dumped["rules"][0]["expires_after"] == "7d"
    assert policy.model_dump()["rules"][0]["expires_after"] == "7d"
    assert load_policy(dumped) == policy
    rule = policy.rules[0]
    assert Rule.model_validate(rule.model_dump()) == rule


def test_models_are_frozen() -> None:
    """Policies and rules cannot be changed after loading."""
    policy = load_policy(canonical())
    with pytest.raises(ValidationError):
        policy.default = "deny"
    with pytest.raises(ValidationError):
        policy.rules[0].name = "other"


def test_building_a_policy_in_python_checks_consistency() -> None:
    """Constructing Policy directly runs the same cross-field checks as loading."""
    with pytest.raises(ValidationError, match="admins names role 'ghost'"):
        Policy(admins=("ghost",))


def test_describe_rule_lists_levels() -> None:
    """describe_rule gives one line per level with count and role of each requirement."""
    policy = load_policy(canonical())
    assert describe_rule(policy.rules[0]) == [
        "level 1: 1 of data-scientist, 1 of ml-engineer",
        "level 2: 1 of business-owner",
    ]


# -- environment ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ", [{}, {"MLFLOW_APPROVALS_POLICY": ""}, {"MLFLOW_APPROVALS_POLICY": "  "}]
)
def test_policy_from_env_is_none_when_unset(environ: dict[str, str]) -> None:
    """policy_from_env returns None when MLFLOW_APPROVALS_POLICY is unset or blank."""
    assert policy_from_env(environ) is None


def test_policy_from_env_loads_the_named_file(tmp_path: Path) -> None:
    """policy_from_env loads the file MLFLOW_APPROVALS_POLICY names."""
    path = write(tmp_path, "p.yaml", CANONICAL_YAML)
    policy = policy_from_env({"MLFLOW_APPROVALS_POLICY": str(path)})
    assert policy is not None
    assert policy.source == str(path)
    assert policy.rules[0].name == "production"


def test_policy_from_env_reads_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """policy_from_env without an argument reads the process environment."""
    path = write(tmp_path, "p.yaml", CANONICAL_YAML)
    monkeypatch.setenv("MLFLOW_APPROVALS_POLICY", str(path))
    policy = policy_from_env()
    assert policy is not None and policy.source == str(path)
    monkeypatch.delenv("MLFLOW_APPROVALS_POLICY")
    assert policy_from_env() is None


def test_policy_from_env_with_missing_file_raises(tmp_path: Path) -> None:
    """policy_from_env naming a missing file raises PolicyError naming that path."""
    path = tmp_path / "gone.yaml"
    with pytest.raises(PolicyError, match=r"gone\.yaml"):
        policy_from_env({"MLFLOW_APPROVALS_POLICY": str(path)})
