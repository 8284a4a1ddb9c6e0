"""What a request is filed and applied on: the rule's checks, the evidence digest of the model
files, and what changed against the version holding the target now.

The engine asks an :class:`Assessor` when a request is filed (the results go into the request
fact and its ``request.created`` event, so every signer signs over them) and again just before
it is applied (a changed digest invalidates the request; a failing check blocks the apply until
it passes again). The reading goes through an :class:`~mlflow_approvals.ports.EvidenceSource`;
the judging is pure (:mod:`.checks`, :mod:`.changes`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from mlflow_approvals.checks import CheckReport
    from mlflow_approvals.evidence import Evidence
    from mlflow_approvals.lifecycle import Target
    from mlflow_approvals.policy import Rule
    from mlflow_approvals.ports import EvidenceSource, Registry

__all__ = ["Assessor", "run_or_none"]


def run_or_none(get_run: Callable[[str], Any], run_id: str) -> Any | None:
    """``get_run(run_id)``, or None when MLflow says there is no such run (other errors raise)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        return get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise


class Assessor:
    """Reads a version's run and files through ``source`` and judges them."""

    def __init__(
        self,
        source: EvidenceSource | None,
        registry: Registry,
        clock: Callable[[], datetime],
    ) -> None:
        self.source = source
        self.registry = registry
        self.clock = clock

    def _run(self, run_id: str | None) -> Any | None:
        if not run_id or self.source is None:
            return None
        return self.source.run(run_id)

    def checks(self, rule: Rule, mv: ModelVersion, target: Target) -> CheckReport:
        """Every check of ``rule`` on ``mv`` (all evaluated, none skipped)."""
        from mlflow_approvals.checks import CheckReport, evaluate

        if not rule.checks:
            return CheckReport(())
        files = None if self.source is None else self.source.files(mv)
        try:
            run = self._run(mv.run_id)
        except Exception:  # the check names the missing run; an outage is a failure too
            run = None
        return evaluate(rule.checks, mv, run, target, files, self.clock())

    def evidence(self, mv: ModelVersion) -> Evidence | None:
        """The evidence digest of ``mv``'s model files, source and run (None without a source).

        Raises when the files cannot be read: a request is not filed (or applied) on bytes
        nobody could hash.
        """
        if self.source is None:
            return None
        from mlflow_approvals.errors import ApprovalError, InvalidRequest
        from mlflow_approvals.evidence import collect

        try:
            return collect(self.source.files(mv), mv.source, mv.run_id)
        except ApprovalError:
            raise
        except Exception as exc:
            raise InvalidRequest(
                f"the model files of '{mv.name}' v{mv.version} (source {mv.source}) could not "
                f"be read ({type(exc).__name__}: {str(exc)[:300]}): every sign-off is bound to "
                "their digest, so nothing can be filed or applied without them. Check that this "
                "client (or the approvals server) can read the artifact store"
            ) from exc

    def changes(self, mv: ModelVersion, holders: tuple[str, ...] | None) -> dict[str, Any] | None:
        """What differs between ``mv``'s run and the run of the version holding the target."""
        if self.source is None:
            return None
        from mlflow_approvals.changes import bounded, compare, snapshot

        others = [v for v in holders or () if v != str(mv.version)]
        against = others[-1] if others else None
        old = None
        if against is not None:
            held = self.registry.get_model_version(mv.name, against)
            old = snapshot(self._run(held.run_id))
        return bounded(compare(snapshot(self._run(mv.run_id)), old, against))
