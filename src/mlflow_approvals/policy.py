"""The approval policy: who must sign off before a model version reaches a stage or an alias.

A policy is a YAML or JSON file (see ``docs/policy.md``)::

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
    default: allow

This module is pure: it reads the policy file when asked to load it and does nothing else. The
models are frozen pydantic models that refuse unknown keys. Every policy that could never be
satisfied is refused when it is loaded, with a :class:`~mlflow_approvals.errors.PolicyError`
naming the file, the field path and the problem, and saying what to do:

* unknown keys, wrong types, an empty ``levels`` list or an empty level;
* a requirement naming a role that is not defined, a ``count`` below 1, or a ``count`` larger
  than the role's members;
* duplicate rule names, a bad ``expires_after`` duration, an unknown stage;
* an ``admins`` entry naming a role that is not defined;
* a rule that names no stage and no alias;
* a rule whose requirements cannot be filled by distinct people (a person signs a request once,
  and that sign-off counts toward one requirement).
* a check (``checks:``, see ``docs/checks.md``) of no known kind or of two, with an unknown
  key, a metric check without ``min`` or ``max`` or with ``min`` above ``max``, an artifact
  path that is absolute or goes up a folder, more than :data:`~.checks.MAX_CHECKS` checks in
  a rule.
* a notification (``notifications:``, see ``docs/notifications.md``) with an unknown key, a
  url that is not http:// or https://, or a name another one already uses.
* a rule's ``sagemaker:`` (see ``docs/sagemaker.md``) that is not a mapping, has an unknown key,
  a region that is not an AWS region name, an empty profile, or a role that is not an IAM role
  ARN.

The file itself is refused, with the same error, when it is larger than
:data:`MAX_POLICY_BYTES`, not UTF-8, not valid YAML or JSON, repeats a key in one mapping or
object, uses a YAML tag or merge key, nests deeper than :data:`MAX_POLICY_DEPTH`, or holds more
than :data:`MAX_POLICY_VALUES` values (a YAML alias counted each time it is used). A policy
passed as a mapping gets the same checks, bar the first two.

:meth:`Policy.gate` is the one gating decision: the rule that gates a target, or what the
default says when no rule does.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from mlflow_approvals.checks import ALLOWED_KEYS, MAX_CHECKS, CheckSpec, kind_problem
from mlflow_approvals.notify import Subscription

__all__ = [
    "ENV_VAR",
    "MAX_POLICY_BYTES",
    "MAX_POLICY_DEPTH",
    "MAX_POLICY_VALUES",
    "STAGES",
    "Gate",
    "Policy",
    "Requirement",
    "Rule",
    "SageMakerSettings",
    "canonical_stage",
    "describe_rule",
    "format_duration",
    "load_policy",
    "parse_duration",
    "policy_from_env",
]

STAGES: tuple[str, ...] = ("None", "Staging", "Production", "Archived")
"""The model-version stages MLflow knows, in their canonical spelling."""

ENV_VAR = "MLFLOW_APPROVALS_POLICY"
"""The environment variable that holds the path of the policy file."""

INLINE_SOURCE = "<inline policy>"

MAX_POLICY_BYTES = 1024 * 1024
"""The largest policy file that is read: 1 MiB. A larger file is refused unparsed."""

MAX_POLICY_DEPTH = 32
"""How deeply mappings and lists may nest, the top level being 1 (a full policy needs 6)."""

MAX_POLICY_VALUES = 100_000
"""How many values a policy may hold: every mapping, list, key and scalar, a YAML alias
counted each time it is used."""

_MAX_NUMBER = 2**63  # no number in a policy is near this; larger ones cannot even be printed

_STAGE_BY_LOWER = {stage.lower(): stage for stage in STAGES}

_DURATION_UNITS: dict[str, int] = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_RE = re.compile(r"\s*(\d+)\s*([smhdw])\s*")
_DURATION_HINT = "write a whole number followed by s, m, h, d or w, e.g. '30s', '15m', '12h', '7d'"

Loc = tuple[int | str, ...]


def canonical_stage(stage: str) -> str:
    """Return the canonical spelling of a stage name, matched case-insensitively.

    >>> canonical_stage("production")
    'Production'

    Raises ``ValueError`` for a name that is not one of :data:`STAGES`.
    """
    try:
        return _STAGE_BY_LOWER[stage.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}") from None


def parse_duration(text: str) -> timedelta:
    """Parse a duration such as ``"30s"``, ``"15m"``, ``"12h"``, ``"7d"`` or ``"2w"``.

    The number is a whole number above zero; the unit is one of s, m, h, d, w. Raises
    ``ValueError`` with a message saying what to write instead.
    """
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r}: {_DURATION_HINT}")
    found = _DURATION_RE.fullmatch(text)
    if found is None:
        raise ValueError(f"invalid duration {text!r}: {_DURATION_HINT}")
    number = int(found.group(1))
    if number <= 0:
        raise ValueError(f"invalid duration {text!r}: it must be greater than zero")
    try:
        return timedelta(seconds=number * _DURATION_UNITS[found.group(2)])
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: it is too long") from None


def format_duration(duration: timedelta) -> str:
    """Return the canonical string form of a whole-second duration: ``7d``, ``12h``, ``90s``.

    The largest of d, h, m, s that divides the duration evenly is used, so ``parse_duration``
    of the result gives the duration back, and ``"2w"`` and ``"14d"`` both format as ``14d``.
    """
    seconds, rest = divmod(duration, timedelta(seconds=1))
    if rest or seconds <= 0:
        raise ValueError(
            f"duration {duration} must be a positive whole number of seconds: {_DURATION_HINT}"
        )
    for unit in ("d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise AssertionError("unreachable: every whole number of seconds divides by 1")


NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
StageName = Annotated[str, AfterValidator(canonical_stage)]


class Requirement(BaseModel):
    """``count`` distinct members of ``role`` must sign off."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: NonEmptyStr
    count: StrictInt = Field(default=1, ge=1)


Level = Annotated[tuple[Requirement, ...], Field(min_length=1)]


class BreakGlass(BaseModel):
    """Who may apply at once in an emergency, and how soon the rule's levels must review it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    roles: Annotated[tuple[NonEmptyStr, ...], Field(min_length=1)]
    review_within: timedelta

    @field_validator("review_within", mode="before")
    @classmethod
    def _parse_deadline(cls, value: Any) -> timedelta:
        if isinstance(value, str):
            return parse_duration(value)
        if isinstance(value, timedelta):
            format_duration(value)
            return value
        raise ValueError(
            f"review_within must be a duration string, got {value!r}: {_DURATION_HINT}"
        )

    @field_serializer("review_within")
    def _dump_deadline(self, value: timedelta) -> str:
        return format_duration(value)


_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$")


class SageMakerSettings(BaseModel):
    """Where a rule's linked SageMaker model packages live, and whose credentials change them.

    ``region`` is the AWS region of the packages; ``profile`` a named profile of the AWS
    configuration (None: the default credential chain); ``role_arn`` an IAM role assumed
    through STS before each change (None: the credentials as found).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str
    profile: NonEmptyStr | None = None
    role_arn: str | None = None

    @field_validator("region", mode="before")
    @classmethod
    def _check_region(cls, value: Any) -> Any:
        if not isinstance(value, str) or not _REGION.fullmatch(value):
            raise ValueError(
                f"region must be an AWS region name such as 'us-east-1', got {_clip(repr(value))}"
            )
        return value

    @field_validator("role_arn", mode="before")
    @classmethod
    def _check_role(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, str) or not _ROLE_ARN.fullmatch(value)):
            raise ValueError(
                "role_arn must be an IAM role ARN such as "
                f"'arn:aws:iam::123456789012:role/approvals', got {_clip(repr(value))}"
            )
        return value


class Rule(BaseModel):
    """Which targets a rule gates, and the ordered levels of sign-off it asks for.

    A rule matches a request when the registered model's name matches one of ``models`` and the
    target is one of ``stages`` (for a stage transition) or matches one of ``aliases`` (for an
    alias). Level 2 opens only when level 1 is satisfied.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: NonEmptyStr
    models: Annotated[tuple[NonEmptyStr, ...], Field(min_length=1)] = ("*",)
    stages: tuple[StageName, ...] = ()
    aliases: tuple[NonEmptyStr, ...] = ()
    levels: Annotated[tuple[Level, ...], Field(min_length=1)]
    expires_after: timedelta | None = None
    separation_of_duties: bool = True
    break_glass: BreakGlass | None = None
    checks: Annotated[tuple[CheckSpec, ...], Field(max_length=MAX_CHECKS)] = ()
    sagemaker: SageMakerSettings | None = None

    @field_validator("sagemaker", mode="before")
    @classmethod
    def _sagemaker_mapping(cls, value: Any) -> Any:
        """Refuse ``sagemaker: us-east-1`` and the like with the form to write instead."""
        if value is not None and not isinstance(value, (Mapping, SageMakerSettings)):
            raise ValueError(
                "sagemaker must be a mapping such as `{region: us-east-1}` (optionally with "
                f"profile and role_arn), got {type(value).__name__} {_clip(repr(value))}"
            )
        return value

    @field_validator("levels", mode="before")
    @classmethod
    def _expand_shorthand(cls, value: Any) -> Any:
        """Accept a single ``{role, count}`` mapping as a level of one requirement."""
        if isinstance(value, (list, tuple)):
            return [[level] if isinstance(level, Mapping) else level for level in value]
        return value

    @field_validator("checks", mode="before")
    @classmethod
    def _no_checks(cls, value: Any) -> Any:
        """Read ``checks:`` with nothing under it (YAML's null) as no checks."""
        return () if value is None else value

    @field_validator("expires_after", mode="before")
    @classmethod
    def _parse_expiry(cls, value: Any) -> timedelta | None:
        """Read ``expires_after`` from a duration string such as ``7d``."""
        if value is None:
            return None
        if isinstance(value, str):
            return parse_duration(value)
        if isinstance(value, timedelta):
            format_duration(value)  # raises for a zero, negative or fractional duration
            return value
        raise ValueError(
            f"expires_after must be a duration string, got {value!r}: {_DURATION_HINT}"
        )

    @field_serializer("expires_after")
    def _dump_expiry(self, value: timedelta | None) -> str | None:
        return None if value is None else format_duration(value)

    @model_validator(mode="after")
    def _names_a_target(self) -> Rule:
        if not self.stages and not self.aliases:
            raise ValueError(
                f"rule {self.name!r} names no stage and no alias, so it can never match: "
                "add `stages: [...]` or `aliases: [...]` (or both)"
            )
        return self

    def matches(self, model: str, kind: Literal["stage", "alias"], value: str) -> bool:
        """Whether this rule gates moving ``model`` to stage ``value`` or alias ``value``.

        Model names and aliases are matched with :func:`fnmatch.fnmatchcase` globs; stages are
        compared case-insensitively. Raises ``ValueError`` for an unknown stage or kind.
        """
        if kind == "stage":
            stage = canonical_stage(value)
            hit = stage in self.stages
        elif kind == "alias":
            hit = any(fnmatch.fnmatchcase(value, pattern) for pattern in self.aliases)
        else:
            raise ValueError(f"unknown target kind {kind!r}: use 'stage' or 'alias'")
        return hit and any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


class PolicyInvalid(ValueError):
    """A policy that cannot be loaded; the message names the file, the field and the problem.

    Raised by :func:`parse_policy` (pure, no MLflow import); :func:`load_policy` turns it into
    :class:`~mlflow_approvals.errors.PolicyError`.
    """


class _Problems(ValueError):
    """Several problems found at once, each with its own field path."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("\n".join(f"{_format_loc(loc)}: {msg}" for loc, msg in problems))
        self.problems = problems


@dataclass(frozen=True)
class Gate:
    """What the policy decides for one target: see :meth:`Policy.gate`.

    ``rule`` is the rule that gates the target (sign-off needed), or ``None``; ``denied`` is
    true when no rule matches and the default is ``deny`` (the change is refused); ``reason``
    says which of the three it is, in words for a person (with ``denied``, the refusal).
    """

    rule: Rule | None
    denied: bool
    reason: str

    @property
    def gated(self) -> bool:
        """Whether the change cannot pass at once: it needs sign-off, or it is refused."""
        return self.rule is not None or self.denied


class Policy(BaseModel):
    """An approval policy: the roles, the rules in file order, and what happens with no rule."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    roles: dict[NonEmptyStr, tuple[NonEmptyStr, ...]] = {}
    admins: tuple[NonEmptyStr, ...] = ()
    rules: tuple[Rule, ...] = ()
    default: Literal["allow", "deny"] = "allow"
    notifications: tuple[Subscription, ...] = ()

    _source: str | None = PrivateAttr(default=None)

    @field_validator("notifications", mode="before")
    @classmethod
    def _no_notifications(cls, value: Any) -> Any:
        """Read ``notifications:`` with nothing under it (YAML's null) as none."""
        return () if value is None else value

    @model_validator(mode="after")
    def _check_consistency(self) -> Policy:
        problems = list(_consistency_problems(self))
        if problems:
            raise _Problems(problems)
        return self

    @property
    def source(self) -> str | None:
        """The path the policy was loaded from, or ``None`` for an inline policy."""
        return self._source

    @property
    def content_hash(self) -> str:
        """``sha256:<hex>`` of the policy's canonical JSON; ``source`` is not part of it.

        The same policy written with other key order, YAML or JSON, or the one-requirement
        level shorthand gives the same hash.
        """
        dumped = self.model_dump(mode="json")
        for rule in dumped["rules"]:  # a policy without break-glass or checks hashes as before
            if rule.get("break_glass") is None:
                rule.pop("break_glass", None)
            if not rule.get("checks"):
                rule.pop("checks", None)
            if rule.get("sagemaker") is None:  # nor one without SageMaker
                rule.pop("sagemaker", None)
        if not dumped.get("notifications"):  # nor does one without notifications
            dumped.pop("notifications", None)
        canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def match(self, model: str, kind: Literal["stage", "alias"], value: str) -> Rule | None:
        """The first rule, in file order, that gates this target, or ``None``.

        With ``None`` the caller applies :attr:`default`: ``allow`` passes the change
        straight through, ``deny`` refuses it.
        """
        for rule in self.rules:
            if rule.matches(model, kind, value):
                return rule
        return None

    def gate(self, model: str, kind: Literal["stage", "alias"], value: str) -> Gate:
        """The one gating decision for moving ``model`` to stage ``value`` or alias ``value``.

        The first matching rule gates it; with no rule, :attr:`default` decides (``deny``
        gives ``denied=True``). Raises ``ValueError`` for an unknown stage or kind.
        """
        rule = self.match(model, kind, value)
        target = f"{kind} {value!r} of model '{model}'"
        if rule is not None:
            return Gate(rule, False, f"rule '{rule.name}' gates {target}: it needs sign-off")
        if self.default == "deny":
            return Gate(
                None,
                True,
                f"no rule of the policy covers {target}, and the policy's default is deny: "
                "add a rule for it to the policy",
            )
        return Gate(
            None,
            False,
            f"no rule of the policy covers {target}, and the policy's default is allow: "
            "the change is applied at once",
        )

    def roles_of(self, actor: str) -> tuple[str, ...]:
        """The roles ``actor`` is a member of, in the order of :attr:`roles` (case-sensitive)."""
        return tuple(role for role, members in self.roles.items() if actor in members)

    def is_admin(self, actor: str) -> bool:
        """Whether ``actor`` holds one of the :attr:`admins` roles (may cancel any request)."""
        return any(actor in self.roles.get(role, ()) for role in self.admins)


def describe_rule(rule: Rule) -> list[str]:
    """One line per level, e.g. ``level 1: 1 of data-scientist, 1 of ml-engineer``."""
    return [
        f"level {number}: " + ", ".join(f"{req.count} of {req.role}" for req in level)
        for number, level in enumerate(rule.levels, start=1)
    ]


def parse_policy(source: str | os.PathLike[str] | Policy | Mapping[str, Any]) -> Policy:
    """Load a policy from a ``.yaml``/``.yml``/``.json`` file path, a mapping, or a Policy.

    A :class:`Policy` is returned as is. A mapping is validated as an inline policy. A path
    ending in ``.json`` is read as JSON; any other path is read as YAML. Raises
    :class:`PolicyInvalid` for a missing or unreadable file, a syntax error (with its line), and
    every invalid field (all listed, one per line). It imports nothing from MLflow, so the
    command line can check a policy at once; :func:`load_policy` raises ``PolicyError`` instead.
    """
    if isinstance(source, Policy):
        return source
    if isinstance(source, Mapping):
        return _validate(dict(source), INLINE_SOURCE)
    if not isinstance(source, (str, os.PathLike)):
        raise PolicyInvalid(
            f"a policy is a file path, a mapping or a Policy, not {type(source).__name__}: "
            "pass the path of a .yaml, .yml or .json policy file"
        )
    if isinstance(source, str) and "\n" in source:
        raise PolicyInvalid(
            "load_policy takes the path of a policy file, not the policy text: write the text "
            "to a .yaml file and pass its path, or pass the parsed mapping"
        )
    path = os.fspath(source)
    if not isinstance(path, str):
        raise PolicyInvalid(f"the policy path {path!r} is not text: pass it as a str")
    data = _read(path)
    policy = _validate(data, path)
    policy._source = path
    return policy


def load_policy(source: str | os.PathLike[str] | Policy | Mapping[str, Any]) -> Policy:
    """As :func:`parse_policy`, raising :class:`~mlflow_approvals.errors.PolicyError`.

    ``PolicyError`` is an ``MlflowException`` (HTTP 400), like every error of this package.
    """
    try:
        return parse_policy(source)
    except PolicyInvalid as exc:
        from mlflow_approvals.errors import PolicyError

        raise PolicyError(str(exc)) from None


def policy_from_env(environ: Mapping[str, str] | None = None) -> Policy | None:
    """Load the policy named by ``MLFLOW_APPROVALS_POLICY``; ``None`` if it is unset or empty."""
    env = os.environ if environ is None else environ
    path = env.get(ENV_VAR, "").strip()
    if not path:
        return None
    return load_policy(os.path.expanduser(path))


# -- consistency checks ---------------------------------------------------------------------


def _consistency_problems(policy: Policy) -> Iterator[tuple[Loc, str]]:
    """Every cross-field problem of a policy whose fields are each valid on their own."""
    for role, members in policy.roles.items():
        seen: set[str] = set()
        for index, member in enumerate(members):
            if member in seen:
                yield (
                    ("roles", role, index),
                    f"{member!r} is listed twice in role {role!r}: list each person once",
                )
            seen.add(member)

    for index, role in enumerate(policy.admins):
        if role not in policy.roles:
            yield (
                ("admins", index),
                f"admins names role {role!r}, which is not defined under roles: "
                "define it under roles or remove it from admins",
            )

    first_by_name: dict[str, int] = {}
    for index, rule in enumerate(policy.rules):
        if rule.name in first_by_name:
            yield (
                ("rules", index, "name"),
                f"rule name {rule.name!r} is already used by rules[{first_by_name[rule.name]}]: "
                "give each rule its own name",
            )
        else:
            first_by_name[rule.name] = index
        yield from _rule_problems(policy.roles, index, rule)

    first_by_name = {}
    for index, sub in enumerate(policy.notifications):
        if sub.name in first_by_name:
            yield (
                ("notifications", index, "name"),
                f"notification name {sub.name!r} is already used by "
                f"notifications[{first_by_name[sub.name]}]: give each subscription its own name",
            )
        else:
            first_by_name[sub.name] = index


def _rule_problems(
    roles: Mapping[str, tuple[str, ...]], index: int, rule: Rule
) -> Iterator[tuple[Loc, str]]:
    """Requirements naming unknown or too-small roles, then the distinct-signer check."""
    found = False
    if rule.break_glass is not None:
        for role_index, role in enumerate(rule.break_glass.roles):
            if role not in roles:
                defined = ", ".join(roles) or "none"
                yield (
                    ("rules", index, "break_glass", "roles", role_index),
                    f"role {role!r} is not defined under roles (defined: {defined}): "
                    "define it or fix the name",
                )
    for level_index, level in enumerate(rule.levels):
        for req_index, req in enumerate(level):
            loc: Loc = ("rules", index, "levels", level_index, req_index)
            if req.role not in roles:
                found = True
                defined = ", ".join(roles) or "none"
                yield (
                    (*loc, "role"),
                    f"role {req.role!r} is not defined under roles (defined: {defined}): "
                    "define it or fix the name",
                )
                continue
            members = len(set(roles[req.role]))
            if members == 0:
                found = True
                yield (
                    (*loc, "role"),
                    f"role {req.role!r} has no members, so nobody can sign this requirement: "
                    "add members to the role or remove the requirement",
                )
            elif req.count > members:
                found = True
                yield (
                    (*loc, "count"),
                    f"count {req.count} asks for more signers than role {req.role!r} has "
                    f"members ({members}): lower the count or add members to the role",
                )
    if found:
        return
    short = _unfillable_roles(rule, roles)
    if short is not None:
        needed = sum(req.count for level in rule.levels for req in level if req.role in short)
        people = len({member for role in short for member in roles[role]})
        yield (
            ("rules", index, "levels"),
            f"rule {rule.name!r} needs {needed} distinct signers from "
            f"{'role' if len(short) == 1 else 'roles'} {', '.join(short)} but only {people} "
            f"{'person holds' if people == 1 else 'people hold'} them (a person signs a request "
            "once): add members to these roles or lower the counts",
        )


def _unfillable_roles(rule: Rule, roles: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    """Roles whose sign-off slots cannot all go to distinct people, or ``None`` if all can.

    Each requirement contributes ``count`` slots; a slot may be filled by any member of its
    role, and a person fills at most one slot. Slots are matched one by one along augmenting
    paths (breadth-first). When a slot cannot be matched, the roles of the slots reached from
    it need more people than hold them (Hall's condition fails for that set), and are returned
    in order of first appearance in the rule.

    Each slot first takes the next free member of its role (linear in the members); only the
    slots left over search for augmenting paths, in which a role's members are scanned once.
    """
    slots = [req.role for level in rule.levels for req in level for _ in range(req.count)]
    holder: dict[str, int] = {}  # person -> the slot they fill
    cursor: dict[str, int] = {}  # role -> its first member that may be free (none before is)
    left: list[int] = []
    for slot, role in enumerate(slots):
        members, at = roles[role], cursor.get(role, 0)
        while at < len(members) and members[at] in holder:
            at += 1
        cursor[role] = at
        if at < len(members):
            holder[members[at]] = slot
        else:
            left.append(slot)
    for start in left:
        parent: dict[int, tuple[int, str] | None] = {start: None}  # slot -> (prev slot, person)
        queue = deque([start])
        scanned: set[str] = set()  # roles whose members this search has looked at
        free: tuple[int, str] | None = None
        while queue and free is None:
            slot = queue.popleft()
            if slots[slot] in scanned:
                continue  # another slot of the role found every member already
            scanned.add(slots[slot])
            for person in roles[slots[slot]]:
                taken = holder.get(person)
                if taken is None:
                    free = (slot, person)
                    break
                if taken not in parent:
                    parent[taken] = (slot, person)
                    queue.append(taken)
        if free is None:
            reached = {slots[slot] for slot in parent}
            order = dict.fromkeys(req.role for level in rule.levels for req in level)
            return [role for role in order if role in reached]
        slot, person = free
        while True:  # flip the augmenting path back to the start slot
            holder[person] = slot
            step = parent[slot]
            if step is None:
                break
            slot, person = step
    return None


# -- reading and error messages ---------------------------------------------------------------


_YAML_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("str", "seq", "map"))
_YAML_MERGE = "tag:yaml.org,2002:merge"


class _PolicyLoader(yaml.SafeLoader):
    """A safe YAML loader for policies: no repeated key, no tag, no merge key, no deep nesting.

    Aliases stay shared while loading; :func:`_check_shape` counts each use afterwards.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        tag = getattr(event, "tag", None)
        if tag not in (None, "!") and tag not in _YAML_TAGS:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"the tag {tag} is not allowed in a policy: remove it (quote the value if it "
                "must be text)",
                event.start_mark,
            )
        nests = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        if nests and self._depth >= MAX_POLICY_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"mappings and lists nest more than {MAX_POLICY_DEPTH} deep (a policy needs 6): "
                "flatten the file",
                event.start_mark,
            )
        self._depth += nests
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= nests

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            text = str(node.value) if isinstance(node, yaml.ScalarNode) else str(node.tag)
            shown = text if len(text) <= 40 else text[:40] + "..."
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"cannot read {shown!r} ({exc}): quote it if it is text",
                node.start_mark,
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        for key_node, _ in node.value:
            if key_node.tag == _YAML_MERGE:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    "YAML merge keys (<<) are not allowed in a policy: write the keys out",
                    key_node.start_mark,
                )
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:
                continue  # unhashable: the base constructor reports it
            if repeated:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}: keep one",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read(path: str) -> Any:
    """Read and parse a policy file, turning every failure into a PolicyInvalid."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError:
        raise PolicyInvalid(
            f"policy file not found: {path}. Point {ENV_VAR} (or policy=) at an existing "
            ".yaml, .yml or .json policy file"
        ) from None
    except IsADirectoryError:
        raise PolicyInvalid(
            f"policy path is a directory: {path}. Point {ENV_VAR} (or policy=) at a .yaml, "
            ".yml or .json policy file"
        ) from None
    except OSError as exc:
        raise PolicyInvalid(f"cannot read policy file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a NUL character in the path
        raise PolicyInvalid(f"cannot read policy file {path!r}: {exc}") from None
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyInvalid(
            f"{path}: the policy file is larger than {MAX_POLICY_BYTES} bytes (1 MiB), the most "
            "that is read: a policy is far smaller; check that this is the policy file"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PolicyInvalid(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}): save it as UTF-8"
        ) from None

    data = _parse_json(text, path) if path.lower().endswith(".json") else _parse_yaml(text, path)
    if data is None:
        raise PolicyInvalid(
            f"{path}: the policy file is empty. Write at least `rules:` (see "
            "docs/policy.md); an empty file is refused so a gate is never opened by accident"
        )
    return data


def _parse_json(text: str, path: str) -> Any:
    """Parse JSON text, refusing a key repeated in one object and an absurdly long number."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise PolicyInvalid(
                    f"{path}: key {_clip(key)!r} appears twice in one JSON object (keys: "
                    f"{_clip(', '.join(dict(pairs)))}): keep one; JSON would silently use the "
                    "last"
                )
            obj[key] = value
        return obj

    def number(digits: str) -> int:
        if len(digits) > 30:
            raise PolicyInvalid(
                f"{path}: a number of {len(digits)} digits: no number in a policy is that long"
            )
        return int(digits)

    try:
        return json.loads(text, object_pairs_hook=unique, parse_int=number)
    except json.JSONDecodeError as exc:
        raise PolicyInvalid(
            f"{path}: JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}. "
            "Fix the JSON and load the policy again"
        ) from None
    except RecursionError:
        raise PolicyInvalid(
            f"{path}: objects and arrays nest more than {MAX_POLICY_DEPTH} deep (a policy "
            "needs 6): flatten the file"
        ) from None


def _parse_yaml(text: str, path: str) -> Any:
    """Parse YAML text with :class:`_PolicyLoader`."""
    try:
        loader = _PolicyLoader(text)  # refuses a control character at once
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        syntax = isinstance(exc, (yaml.scanner.ScannerError, yaml.parser.ParserError))
        raise PolicyInvalid(
            f"{path}: YAML {'syntax ' if syntax else ''}error{where}: {problem}. Fix the YAML "
            "and load the policy again"
        ) from None
    except yaml.YAMLError as exc:
        raise PolicyInvalid(f"{path}: YAML error: {exc}. Fix the YAML") from None


def _check_shape(data: Any, where: str) -> None:
    """Refuse data nested too deeply, too big, cyclic, with a non-text key or unencodable text.

    A value used in several places (a YAML alias) is counted each time, measured once.
    """
    measured: dict[int, tuple[int, int]] = {}  # id -> (values, nesting) of a container
    open_: set[int] = set()  # the containers being measured: one met again is a cycle

    def refuse(loc: Loc, problem: str) -> PolicyInvalid:
        return PolicyInvalid(f"{where}: {_clip(_format_loc(loc))}: {problem}")

    def check_text(text: str, loc: Loc) -> None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise refuse(
                loc,
                "the text is not valid Unicode (it holds a lone surrogate, e.g. from a "
                "\\ud800 escape): fix the text",
            ) from None

    def measure(value: Any, loc: Loc, depth: int) -> tuple[int, int]:
        if isinstance(value, str):
            check_text(value, loc)
            return 1, 0
        if isinstance(value, int) and not -_MAX_NUMBER < value < _MAX_NUMBER:
            raise refuse(loc, "the number is too large: no number in a policy is near 2**63")
        if isinstance(value, Mapping):
            items: list[tuple[Any, Any]] = list(value.items())
        elif isinstance(value, (list, tuple, set, frozenset)):
            items = list(enumerate(value))
        else:
            return 1, 0
        known = measured.get(id(value))
        if known is None:
            if id(value) in open_:
                raise refuse(
                    loc,
                    "the value contains itself (e.g. through a YAML alias): write the value out",
                )
            if depth >= MAX_POLICY_DEPTH:
                raise refuse(
                    loc,
                    f"mappings and lists nest more than {MAX_POLICY_DEPTH} deep (a policy "
                    "needs 6): flatten it",
                )
            open_.add(id(value))
            count, nesting = 1, 0
            for key, item in items:
                if isinstance(value, Mapping):
                    if not isinstance(key, str):
                        raise refuse(
                            loc,
                            f"the key {_clip(repr(key))} is {type(key).__name__}, not text: "
                            "write it as text (in YAML, quote it)",
                        )
                    check_text(key, (*loc, key))
                    count += 1
                item_count, item_nesting = measure(item, (*loc, key), depth + 1)
                count += item_count
                nesting = max(nesting, item_nesting)
                if count > MAX_POLICY_VALUES:
                    break
            open_.discard(id(value))
            known = (count, nesting + 1)
            measured[id(value)] = known
        if depth + known[1] > MAX_POLICY_DEPTH:
            raise refuse(
                loc,
                f"mappings and lists nest more than {MAX_POLICY_DEPTH} deep (a policy needs 6, "
                "YAML aliases count where they are used): flatten it",
            )
        if known[0] > MAX_POLICY_VALUES:
            raise PolicyInvalid(
                f"{where}: the policy holds more than {MAX_POLICY_VALUES} values (each YAML "
                "alias counted where it is used): a policy needs far fewer; check the file"
            )
        return known

    measure(data, (), 0)


def _clip(text: str, limit: int = 200) -> str:
    """``text``, cut to ``limit`` characters for an error message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _validate(data: Any, where: str) -> Policy:
    """Validate parsed policy data, turning a ValidationError into one PolicyError."""
    if not isinstance(data, Mapping):
        raise PolicyInvalid(
            f"{where}: the top level must be a mapping with the keys roles, admins, rules, "
            f"default, notifications; found {type(data).__name__}"
        )
    _check_shape(data, where)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        locs = [tuple(error["loc"]) for error in errors]
        problems = [
            line
            for error in errors
            if not _counts_only_failed_items(error, locs)
            for line in _explain(error)
        ]
        count = f"{len(problems)} problem" + ("" if len(problems) == 1 else "s")
        body = "\n".join(f"  {_clip(line, 500)}" for line in problems[:_MAX_LISTED])
        if len(problems) > _MAX_LISTED:
            body += f"\n  ... and {len(problems) - _MAX_LISTED} more"
        raise PolicyInvalid(
            f"invalid approval policy in {where} ({count}):\n{body}\n"
            "Fix each field listed above and load the policy again (docs/policy.md describes "
            "every field)."
        ) from None


_MAX_LISTED = 50  # problems listed in one error; the count says how many there are

_ALLOWED_KEYS: dict[str, tuple[str, ...]] = {
    "policy": tuple(Policy.model_fields),
    "rule": tuple(Rule.model_fields),
    "requirement": tuple(Requirement.model_fields),
    "subscription": tuple(Subscription.model_fields),
    "sagemaker": tuple(SageMakerSettings.model_fields),
}


def _counts_only_failed_items(error: Mapping[str, Any], locs: list[tuple[Any, ...]]) -> bool:
    """Whether a "too short" error only counts items that failed and are reported themselves.

    pydantic checks a tuple's length after validating its items, so a level whose one
    requirement is invalid is also reported as empty; that second report is noise.
    """
    if error["type"] != "too_short":
        return False
    loc = tuple(error["loc"])
    return any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs)


def _explain(error: Mapping[str, Any]) -> list[str]:
    """The lines, ``path: problem: what to do``, for one pydantic error."""
    loc, check_kind = _check_loc(tuple(error["loc"]))
    kind = error["type"]
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, _Problems):
        return [f"{_format_loc((*loc, *sub))}: {msg}" for sub, msg in cause.problems]
    if kind in ("value_error", "assertion_error") and cause is not None:
        message = str(cause)
    elif kind in ("check_kind", "union_tag_not_found") and _is_check(loc):
        message = kind_problem(error["input"])
    elif kind == "tuple_type" and loc[-1:] == ("checks",):
        message = (
            f"checks is a list of checks, e.g. `[{{metric: val_auc, min: 0.9}}]`, not "
            f"{type(error['input']).__name__}"
        )
    elif kind == "too_long" and loc[-1:] == ("checks",):
        message = (
            f"a rule lists at most {MAX_CHECKS} checks (their results are stored with each "
            "request): merge some into a custom check"
        )
    elif kind in ("float_type", "finite_number") and check_kind == "metric":
        message = f"{loc[-1]} must be a finite number, got {error['input']!r}"
    elif kind == "extra_forbidden" and check_kind is not None:
        message = (
            f"unknown key {loc[-1]!r}: a {check_kind} check takes "
            f"{', '.join(ALLOWED_KEYS[check_kind])}"
        )
    elif kind == "extra_forbidden":
        allowed = _ALLOWED_KEYS.get(_model_at(loc[:-1]))
        message = f"unknown key {loc[-1]!r}"
        if allowed:
            message += f": use one of {', '.join(allowed)}"
    elif kind == "missing":
        message = f"required key {loc[-1]!r} is missing: add it"
    elif kind == "too_short" and loc[-1:] == ("levels",):
        message = "a rule needs at least one level: add e.g. `- [{role: <role>, count: 1}]`"
    elif kind == "too_short" and len(loc) >= 2 and loc[-2] == "levels":
        message = (
            f"level {int(loc[-1]) + 1} is empty: list at least one {{role, count}} requirement "
            "or remove the level"
        )
    elif kind == "too_short" and loc[-1:] == ("models",):
        message = "models is empty, so the rule can never match: list a glob such as '*'"
    elif kind == "greater_than_equal" and loc[-1:] == ("count",):
        message = (
            f"count must be 1 or more, got {error['input']!r}: it is how many distinct "
            "members of the role must sign"
        )
    elif kind == "string_type" and isinstance(error["input"], (bool, int, float, date)):
        message = (
            f"expected text, got {type(error['input']).__name__} {error['input']!r}: "
            "quote the value in YAML (e.g. 'no', '123')"
        )
    else:
        message = str(error["msg"])
    return [f"{_format_loc(loc)}: {message}"]


def _is_check(loc: Loc) -> bool:
    """Whether ``loc`` is one check: ``("rules", i, "checks", j)``."""
    return len(loc) == 4 and loc[0] == "rules" and loc[2] == "checks" and isinstance(loc[3], int)


def _check_loc(loc: Loc) -> tuple[Loc, str | None]:
    """``loc`` without the check kind pydantic puts after ``rules[i].checks[j]``, and that kind.

    ``("rules", 0, "checks", 2, "metric", "min")`` -> ``(("rules", 0, "checks", 2, "min"),
    "metric")``; any other ``loc`` is returned as is, with ``None``.
    """
    if len(loc) >= 5 and _is_check(loc[:4]) and loc[4] in ALLOWED_KEYS:
        return (*loc[:4], *loc[5:]), str(loc[4])
    return loc, None


def _model_at(loc: Loc) -> str:
    """Which model sits at ``loc``: ``policy``, ``rule``, ``requirement``, ``subscription``,
    ``sagemaker`` or ``""``."""
    if loc == ():
        return "policy"
    if len(loc) == 2 and loc[0] == "rules":
        return "rule"
    if len(loc) == 5 and loc[0] == "rules" and loc[2] == "levels":
        return "requirement"
    if len(loc) == 2 and loc[0] == "notifications":
        return "subscription"
    if len(loc) == 3 and loc[0] == "rules" and loc[2] == "sagemaker":
        return "sagemaker"
    return ""


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _format_loc(loc: Loc) -> str:
    """``("rules", 0, "levels", 1, 0, "count")`` -> ``rules[0].levels[1][0].count``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text or "(top level)"
