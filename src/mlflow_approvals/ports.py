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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from datetime import datetime

    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

    from mlflow_approvals.audit import AuditStore
    from mlflow_approvals.policy import Policy

__all__ = ["Ports", "Registry"]


def quote(name: str) -> str:
    """``name`` as a single-quoted literal of MLflow's search filter grammar."""
    return "'{}'".format(name.replace("'", "\\'"))


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

    def versions_of(self, name: str) -> list[ModelVersion]:
        """Every version of model ``name``, with tags and stage, in version order."""
        found = self.search_all(f"name = {quote(name)}")
        return sorted(found, key=lambda mv: int(mv.version))


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
