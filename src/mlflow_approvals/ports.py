"""The ports the engine and the audit readers work through: the registry and the audit sink.

One adapter, :class:`Registry`, serves both front ends: it wraps an MLflow model-registry *store*
(``AbstractStore``). The client passes the store behind ``MlflowClient`` (a ``RestStore`` for a
tracking server, a ``SqlAlchemyStore`` for a ``sqlite:///`` registry); the server passes its own
store, so its writes go straight to the database under the authenticated user's name instead of
back through the HTTP routes it gates. ``ModelVersion.version`` (and alias values) are ints on
some stores and strings on others: callers get strings from :meth:`Registry.versions_of`, and
the engine normalises with ``str()`` everywhere else.

:class:`Ports` bundles what the readers (``verify``, ``export``, ``reconcile``) need: the
registry, the audit sink and the policy. The engine is one; so is anything else that carries
those three attributes.

Names are data. Every search filter the package sends is built here, by :func:`search_filter`,
and every search re-checks its results in Python, so that any name MLflow accepts selects
exactly itself: see :func:`literal` for what MLflow's filter grammar can and cannot spell.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from datetime import datetime

    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

    from mlflow_approvals.audit import AuditStore
    from mlflow_approvals.policy import Policy

__all__ = [
    "EvidenceSource",
    "Ports",
    "Registry",
    "clause",
    "like_superset",
    "literal",
    "search_filter",
    "tag_field",
]


# Characters a LIKE superset pattern replaces by the one-character wildcard `_`: the quotes and
# the backslash (which the filter grammar cannot carry, and which PostgreSQL and MySQL read as
# LIKE's escape character), and the brackets (a character class in SQL Server's LIKE).
_LIKE_UNSAFE = frozenset("'\"\\[]")


def literal(value: str) -> str | None:
    """``value`` as a string literal MLflow's filter parser reads back as exactly ``value``.

    None when the grammar cannot spell it. MLflow (``mlflow.utils.search_utils``) tokenizes a
    filter with sqlparse, whose string tokens are ``'(''|\\'|[^'])*'`` and
    ``"(""|\\"|[^"])*"``, and then only cuts the first and last character off the token: nothing
    is unescaped. So ``'a\\'b'`` means the four characters ``a\\'b``, not ``a'b``; a value with
    a ``'`` can be spelled only in double quotes, one with both quotes not at all; and a value
    ending in a backslash turns its closing quote into ``\\'`` and swallows the rest of the
    filter. Every other value (``%``, ``_``, backticks, newlines, any unicode) is exact as is,
    provided the literal is followed by a space or the end of the filter (:func:`search_filter`
    joins clauses with ``" AND "``).
    """
    if value.endswith("\\"):
        return None
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def like_superset(value: str) -> str:
    """A single-quoted LIKE pattern that ``value`` matches (and some other values may too).

    The characters no literal can carry, and those some databases' LIKE reads specially, become
    the wildcard ``_``; ``%`` and ``_`` in ``value`` stay (as wildcards they only widen the
    match). SQLite's LIKE also ignores ASCII case: one more reason to re-check in Python.
    """
    return "'{}'".format("".join("_" if c in _LIKE_UNSAFE else c for c in value))


def tag_field(key: str) -> str:
    """The filter field of tag ``key`` (MLflow's tag keys hold no backtick; one is refused)."""
    if "`" in key:
        raise ValueError(f"a tag key with a backtick cannot be searched: {key!r}")
    return f"tags.`{key}`"


def clause(field: str, value: str | None) -> str:
    """One filter clause selecting ``field`` equal to ``value`` (None: a tag that is present).

    Exact when :func:`literal` can spell ``value``; otherwise a ``LIKE`` clause selecting a
    superset, so callers must compare the results with ``value`` in Python.
    """
    if value is None:
        return f"{field} LIKE '%'"
    spelled = literal(value)
    if spelled is not None:
        return f"{field} = {spelled}"
    return f"{field} LIKE {like_superset(value)}"


def search_filter(conditions: Mapping[str, str | None]) -> str:
    """The filter string selecting (a superset of) what every ``field: value`` condition names.

    Fields are ``"name"`` or :func:`tag_field` keys; see :func:`clause` for the values.
    """
    return " AND ".join(clause(field, value) for field, value in conditions.items())


def quote(name: str) -> str:
    """``name`` as an exact literal of MLflow's filter grammar.

    Prefer :meth:`Registry.search_versions`, which finds any name. Raises ``InvalidRequest``
    for a name no literal spells (see :func:`literal`).
    """
    spelled = literal(name)
    if spelled is None:
        from mlflow_approvals.errors import InvalidRequest

        raise InvalidRequest(
            f"the model name {name!r} cannot be written as an MLflow filter literal: "
            "search with Registry.search_versions, which re-checks the names it finds"
        )
    return spelled


class Registry:
    """The registry operations the lifecycle needs, over an MLflow model-registry store."""

    def __init__(self, store: Any) -> None:
        self._store = store

    @property
    def store(self) -> Any:
        """The wrapped store (resolved lazily when a callable was given)."""
        return self._store() if callable(self._store) else self._store

    def get_model_version(self, name: str, version: str) -> ModelVersion:
        return self.store.get_model_version(name, version)  # type: ignore[no-any-return]

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        return self.store.get_model_version_by_alias(name, alias)  # type: ignore[no-any-return]

    def get_registered_model(self, name: str) -> RegisteredModel:
        return self.store.get_registered_model(name)  # type: ignore[no-any-return]

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        from mlflow.entities.model_registry import ModelVersionTag

        tag = ModelVersionTag(key, value)  # type: ignore[no-untyped-call]
        self.store.set_model_version_tag(name, version, tag)

    def transition_model_version_stage(
        self, name: str, version: str, stage: str, archive_existing_versions: bool
    ) -> None:
        self.store.transition_model_version_stage(name, version, stage, archive_existing_versions)

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self.store.set_registered_model_alias(name, alias, version)

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        self.store.delete_registered_model_alias(name, alias)

    def search_model_versions(
        self, filter_string: str, page_token: str | None = None, max_results: int = 1000
    ) -> Any:
        """One page of versions matching ``filter_string`` (a ``PagedList`` with ``.token``)."""
        return self.store.search_model_versions(
            filter_string=filter_string,
            max_results=max_results,
            order_by=None,
            page_token=page_token,
        )

    def search_all(self, filter_string: str) -> list[ModelVersion]:
        """Every version matching ``filter_string``, all pages."""
        found: list[ModelVersion] = []
        token = None
        while True:
            page = self.search_model_versions(filter_string, token)
            found += list(page)
            token = page.token
            if not token:
                return found

    def search_versions(
        self, name: str | None = None, tags: Mapping[str, str | None] | None = None
    ) -> list[ModelVersion]:
        """Every version of model ``name`` (None: any model) whose tags match ``tags``, all pages.

        A tag value selects that exact value; None selects versions carrying the tag at all. The
        server-side filter may select a superset (see :func:`clause`); the results are checked
        here against ``name`` and ``tags``, so only exact matches come back.
        """
        wanted = dict(tags or {})
        conditions: dict[str, str | None] = {} if name is None else {"name": name}
        conditions.update({tag_field(key): value for key, value in wanted.items()})

        def matches(mv: ModelVersion) -> bool:
            if name is not None and mv.name != name:
                return False
            have = mv.tags or {}
            return all(
                key in have if value is None else have.get(key) == value
                for key, value in wanted.items()
            )

        return [mv for mv in self.search_all(search_filter(conditions)) if matches(mv)]

    def versions_of(self, name: str) -> list[ModelVersion]:
        """Every version of model ``name`` (exactly that name), with tags and stage, in order."""
        return sorted(self.search_versions(name), key=lambda mv: int(mv.version))


class EvidenceSource(Protocol):
    """Where the checks, the evidence digest and the "what changed" view read a version's run
    and model files: the tracking client's, or the server's own stores."""

    def run(self, run_id: str) -> Any | None:
        """The run ``run_id`` (an MLflow ``Run``), or None when there is no such run."""
        ...

    def files(self, mv: ModelVersion) -> Any:
        """The version's model files (a :class:`mlflow_approvals.checks.ModelFiles`)."""
        ...


class Ports(Protocol):
    """What the audit readers need: the registry, the audit sink, the policy and the clock."""

    @property
    def registry(self) -> Registry: ...

    @property
    def audit(self) -> AuditStore: ...

    @property
    def policy(self) -> Policy: ...

    def clock(self) -> datetime:
        """The current time (UTC)."""
        ...
