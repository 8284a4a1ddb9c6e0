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

from mlflow_approvals.evidence import ArtifactFiles

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from mlflow_approvals.checks import CheckReport
    from mlflow_approvals.evidence import Evidence
    from mlflow_approvals.lifecycle import Target
    from mlflow_approvals.policy import Rule
    from mlflow_approvals.ports import EvidenceSource, Registry

__all__ = ["Assessment", "Assessor", "run_or_none"]


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

    def of(self, mv: ModelVersion) -> Assessment:
        """The assessment of ``mv`` for one step: its files and runs are read at most once."""
        return Assessment(self, mv)


_UNREAD: Any = object()


class _OneListing(ArtifactFiles):
    """A version's files whose tree is listed once for the step (checks and digest share it)."""

    _tree: list[str] | None = None

    def paths(self) -> list[str]:
        if self._tree is None:
            self._tree = super().paths()
        return list(self._tree)


def _listed_once(files: Any) -> Any:
    return _OneListing(files.repo, files.root) if isinstance(files, ArtifactFiles) else files


class Assessment:
    """One step's judgments of one model version (checks, evidence, changes), which share its
    reads: the version's files (one download-URI look-up and one listing of the tree) and each
    run, fetched the first time a judgment needs them."""

    def __init__(self, assessor: Assessor, mv: ModelVersion) -> None:
        self._assessor = assessor
        self.mv = mv
        self._files: Any = _UNREAD
        self._runs: dict[str, Any] = {}

    def _read_files(self) -> Any:
        source = self._assessor.source
        if source is None:
            return None
        if self._files is _UNREAD:
            self._files = _listed_once(source.files(self.mv))
        return self._files

    def _run(self, run_id: str | None) -> Any | None:
        source = self._assessor.source
        if not run_id or source is None:
            return None
        if run_id not in self._runs:
            self._runs[run_id] = source.run(run_id)
        return self._runs[run_id]

    def checks(self, rule: Rule, target: Target) -> CheckReport:
        """Every check of ``rule`` on the version (all evaluated, none skipped)."""
        from mlflow_approvals.checks import CheckReport, evaluate

        if not rule.checks:
            return CheckReport(())
        files = self._read_files()
        try:
            run = self._run(self.mv.run_id)
        except Exception:  # the check names the missing run; an outage is a failure too
            run = None
        return evaluate(rule.checks, self.mv, run, target, files, self._assessor.clock())

    def evidence(self) -> Evidence | None:
        """The evidence digest of the version's model files, source and run (None without a
        source).

        Raises when the files cannot be read: a request is not filed (or applied) on bytes
        nobody could hash.
        """
        if self._assessor.source is None:
            return None
        from mlflow_approvals.errors import ApprovalError, InvalidRequest
        from mlflow_approvals.evidence import collect

        mv = self.mv
        try:
            return collect(self._read_files(), mv.source, mv.run_id)
        except ApprovalError:
            raise
        except Exception as exc:
            raise InvalidRequest(
                f"the model files of '{mv.name}' v{mv.version} (source {mv.source}) could not "
                f"be read ({type(exc).__name__}: {str(exc)[:300]}): every sign-off is bound to "
                "their digest, so nothing can be filed or applied without them. Check that this "
                "client (or the approvals server) can read the artifact store"
            ) from exc

    def changes(self, holders: tuple[str, ...] | None) -> dict[str, Any] | None:
        """What differs between the version's run and the run of the version holding the
        target."""
        if self._assessor.source is None:
            return None
        from mlflow_approvals.changes import bounded, compare, snapshot

        mv = self.mv
        others = [v for v in holders or () if v != str(mv.version)]
        against = others[-1] if others else None
        old = None
        if against is not None:
            held = self._assessor.registry.get_model_version(mv.name, against)
            old = snapshot(self._run(held.run_id))
        return bounded(compare(snapshot(self._run(mv.run_id)), old, against))
