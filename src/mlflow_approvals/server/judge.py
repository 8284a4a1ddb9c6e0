"""The gate's decisions: may this direct write through, and what does the audit record of it?

Pure: :func:`judge` takes the door (see :mod:`.routes`), the request's parameters as MLflow's
handler will read them, and a :class:`View` of the registry; it returns a :class:`Judgement`.
The Flask and ASGI hooks (:mod:`.gate`) do the reading, the refusing and the writing.

A write is refused when it could promote a gated target or forge approval state:

* a stage transition, or an alias set or deleted, on a target a rule gates;
* any write or delete of a tag under the reserved prefix (model version or registered model),
  and a model or version created carrying one (``copy_model_version`` copies every tag);
* deleting a version that holds a gated stage or alias, or has an open request;
* renaming or deleting a model whose versions hold a gated stage or alias, or have open
  requests (a rename would detach every request and move the model out of its rules);
* an artifact write or delete under the audit experiment (the log itself), and deleting,
  renaming or retagging the audit experiment or its runs.

Everything else that changes the registry goes through, with an audit record of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mlflow_approvals import tags as T
from mlflow_approvals.lifecycle import utcnow

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from mlflow_approvals.policy import Rule

__all__ = ["Judgement", "View", "judge"]


class View(Protocol):
    """What the gate reads of the registry to decide."""

    def rule_for(self, name: str, kind: str, value: str) -> Rule | None:
        """The rule gating the target (raises NotAuthorized when the policy denies it)."""

    def version(self, name: str, version: str) -> ModelVersion | None:
        """The model version, or None when it does not exist."""

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of the model."""

    def model_aliases(self, name: str) -> dict[str, str]:
        """The model's aliases: alias -> version."""

    def audit_experiment(self) -> str | None:
        """The audit experiment's id, when it exists."""

    def run_experiment(self, run_id: str) -> str | None:
        """The experiment of run ``run_id``, or None when there is no such run."""


@dataclass(frozen=True)
class Judgement:
    """The gate's verdict on one write."""

    refusal: str | None = None
    """Why the write is refused; None when it may go through."""
    name: str | None = None
    """The registered model the write concerns (its audit log records it)."""
    version: str | None = None
    change: str = ""
    before: Any = None
    after: Any = None

    @property
    def recorded(self) -> bool:
        """True when the write is recorded in a model's audit log."""
        return self.name is not None


def _gated(view: View, name: str, kind: str, value: str) -> str | None:
    """The name of the rule gating the target (or the deny default's message), else None."""
    from mlflow_approvals.errors import NotAuthorized

    try:
        rule = view.rule_for(name, kind, value)
    except NotAuthorized as exc:
        return str(exc.message)
    return None if rule is None else f"rule '{rule.name}'"


def _reserved(tags: Iterable[Mapping[str, Any]] | Mapping[str, Any] | None) -> list[str]:
    if not tags:
        return []
    keys = tags.keys() if isinstance(tags, Mapping) else [str(t.get("key")) for t in tags]
    return sorted(k for k in keys if T.is_reserved(str(k)))


def _holds(view: View, name: str, mv: ModelVersion, aliases: Mapping[str, str]) -> list[str]:
    """What of ``mv`` the gate protects: a gated stage or alias, open requests."""
    found = []
    stage = str(mv.current_stage or "None")
    if stage != "None" and (why := _gated(view, name, "stage", stage)):
        found.append(f"v{mv.version} is in stage {stage} ({why})")
    for alias, target in sorted(aliases.items()):
        if str(target) == str(mv.version) and (why := _gated(view, name, "alias", alias)):
            found.append(f"@{alias} points at v{mv.version} ({why})")
    facts = T.VersionFacts(name, str(mv.version), mv.tags or {})
    open_ = [r.id for r in facts.all_requests(utcnow()) if r.is_open]
    if open_:
        found.append(f"v{mv.version} has open request(s) {', '.join(open_)}")
    return found


def _artifact_judgement(view: View, params: Mapping[str, Any]) -> Judgement:
    audit_exp = view.audit_experiment()
    if audit_exp is None:
        return Judgement()
    path = str(params.get("artifact_path") or "").lstrip("/")
    run_id = params.get("run_uuid") or params.get("run_id")
    hit = path.split("/", 1)[0] == audit_exp
    if not hit and run_id:
        hit = view.run_experiment(str(run_id)) == audit_exp
    if hit:
        return Judgement(
            refusal="the audit log's artifacts are written only by mlflow-approvals; read them "
            "with `mlflow-approvals audit verify` or `audit export`"
        )
    return Judgement()


def _audit_run_judgement(view: View, params: Mapping[str, Any]) -> Judgement:
    audit_exp = view.audit_experiment()
    if audit_exp is None:
        return Judgement()
    experiment = params.get("experiment_id")
    run_id = params.get("run_id") or params.get("run_uuid")
    if experiment is None and run_id:
        experiment = view.run_experiment(str(run_id))
    if experiment is not None and str(experiment) == audit_exp:
        return Judgement(
            refusal="the audit log's experiment and runs are kept by mlflow-approvals: they "
            "cannot be deleted, renamed or retagged through the tracking API"
        )
    return Judgement()


def judge(door: str, params: Mapping[str, Any], view: View) -> Judgement:
    """The gate's verdict on a write through ``door`` with ``params``."""
    name = str(params.get("name") or "")
    version = str(params.get("version") or "") or None
    if door == "write_artifacts":
        return _artifact_judgement(view, params)
    if door == "audit_run":
        return _audit_run_judgement(view, params)
    if not name:
        return Judgement()  # MLflow's handler refuses a write without a name
    mv = view.version(name, version) if version and version.isdigit() else None

    if door == "transition_stage":
        from mlflow_approvals.policy import canonical_stage

        try:
            stage = canonical_stage(str(params.get("stage") or ""))
        except ValueError:
            return Judgement()  # MLflow refuses an unknown stage itself
        before = None if mv is None else {"stage": mv.current_stage, "version": version}
        after = {"stage": stage, "version": version}
        if why := _gated(view, name, "stage", stage):
            return Judgement(
                f"stage {stage} of '{name}' is gated by {why}: ask for it with "
                f"`mlflow-approvals request {name} {version} --stage {stage}` (or "
                "ApprovalClient.request_transition); it is applied when the last level signs off",
                name,
                version,
                door,
                before,
                after,
            )
        return Judgement(None, name, version, door, before, after)

    if door in ("set_alias", "delete_alias"):
        alias = str(params.get("alias") or "")
        current = view.model_aliases(name).get(alias)
        before = {"alias": alias, "version": current}
        after = {"alias": alias, "version": version if door == "set_alias" else None}
        held_by = version if door == "set_alias" else current
        if why := _gated(view, name, "alias", alias):
            how = (
                f"`mlflow-approvals request {name} {version} --alias {alias}`"
                if door == "set_alias"
                else f"ApprovalClient.request_alias_deletion('{name}', '{alias}')"
            )
            return Judgement(
                f"alias @{alias} of '{name}' is gated by {why}: ask for the change with {how}; "
                "it is applied when the last level signs off",
                name,
                held_by,
                door,
                before,
                after,
            )
        return Judgement(None, name, held_by, door, before, after)

    if door in ("set_version_tag", "delete_version_tag", "set_model_tag", "delete_model_tag"):
        key = str(params.get("key") or "")
        on_version = door.endswith("version_tag")
        if T.is_reserved(key):
            return Judgement(
                f"tag key {key!r} is under the reserved prefix '{T.PREFIX}', which only "
                "mlflow-approvals writes: use the approval commands (request, approve, reject, "
                "cancel) instead",
                name,
                version if on_version else None,
                door,
                None,
                {"tag": key},
            )
        old = None if mv is None else (mv.tags or {}).get(key)
        new = params.get("value") if door.startswith("set") else None
        return Judgement(
            None,
            name,
            version if on_version else None,
            door,
            {"tag": key, "value": old} if on_version else {"tag": key},
            {"tag": key, "value": new},
        )

    if door in ("create_model", "create_version", "rename_model"):
        claimed = str(params.get("new_name") or name)
        if "/" in claimed:
            return Judgement(refusal=f"a registered model name cannot contain '/': {claimed!r}")
    if door in ("create_model", "create_version"):
        reserved = _reserved(params.get("tags"))
        if reserved:
            return Judgement(
                f"the new {'version' if door == 'create_version' else 'model'} would carry "
                f"tags under the reserved prefix '{T.PREFIX}' ({', '.join(reserved)}), which "
                "only mlflow-approvals writes. copy_model_version copies every tag of its "
                "source: create the version from the source's URI (models:/NAME/VERSION) "
                "without those tags instead",
                name,
                None,
                door,
                None,
                {"tags": reserved},
            )
        created: dict[str, Any] = {
            k: params.get(k) for k in ("source", "run_id", "description") if params.get(k)
        }
        return Judgement(None, name, None, door, None, created or None)

    if door in ("update_model", "update_version"):
        return Judgement(
            None,
            name,
            version if door == "update_version" else None,
            door,
            None,
            {"description": params.get("description")},
        )

    if door == "delete_version":
        if mv is None:
            return Judgement()
        held = _holds(view, name, mv, view.model_aliases(name))
        if held:
            return Judgement(
                f"v{version} of '{name}' cannot be deleted while {'; '.join(held)}: cancel the "
                "open requests, and ask for the gated stage or alias to move first",
                name,
                version,
                door,
                {"version": version, "exists": True},
                {"version": version, "exists": False},
            )
        return Judgement(
            None,
            name,
            version,
            door,
            {"version": version, "exists": True, "stage": mv.current_stage},
            {"version": version, "exists": False},
        )

    if door in ("rename_model", "delete_model"):
        aliases = view.model_aliases(name)
        held = [h for v in view.versions(name) for h in _holds(view, name, v, aliases)]
        new_name = params.get("new_name")
        gone: dict[str, Any] = {"name": new_name} if door == "rename_model" else {"exists": False}
        if held:
            verb = "renamed" if door == "rename_model" else "deleted"
            return Judgement(
                f"registered model '{name}' cannot be {verb} while {'; '.join(held)}: its "
                "requests and rules are bound to its name. Cancel the open requests and move "
                "the gated stages and aliases through approvals first",
                name,
                None,
                door,
                {"name": name},
                gone,
            )
        return Judgement(None, name, None, door, {"name": name}, gone)

    return Judgement()
