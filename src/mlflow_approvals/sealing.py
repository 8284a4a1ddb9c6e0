"""Sealing a model's audit log: its loose event files copied into anchored segments.

:meth:`mlflow_approvals.audit.AuditStore.seal` does the work (segments in
:mod:`mlflow_approvals.segments`); this module is the step both front ends run: it checks the
name and the minimum, refuses a model that has neither a registered model nor an audit log, and
reports what was sealed as a :class:`SealReport` that travels as JSON from the approvals server.
Sealing only adds (segment files and their anchor tags), so running it again seals nothing new.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow_approvals.ports import Ports

__all__ = ["SealReport", "Segment", "check_min_events", "seal_model"]


@dataclass(frozen=True)
class Segment:
    """One segment written: its artifact path in the audit run and how many events it holds."""

    path: str
    events: int


@dataclass(frozen=True)
class SealReport:
    """What one seal of model ``name`` wrote (no segments: nothing new to seal)."""

    name: str
    segments: tuple[Segment, ...] = ()
    min_events: int = 1

    @property
    def events(self) -> int:
        """How many events were sealed."""
        return sum(s.events for s in self.segments)

    @property
    def summary(self) -> str:
        """One line for a person."""
        if not self.segments:
            below = f" (fewer than {self.min_events} loose events)" if self.min_events > 1 else ""
            return f"nothing new to seal in the audit log of {self.name}{below}"
        n = len(self.segments)
        return f"sealed {self.events} events of {self.name} into {n} segment{'s' * (n != 1)}"

    @property
    def lines(self) -> list[str]:
        """One line per segment written."""
        return [f"SEALED  {s.path}: {s.events} events" for s in self.segments]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "min_events": self.min_events,
            "events": self.events,
            "segments": [{"path": s.path, "events": s.events} for s in self.segments],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SealReport:
        """The report :meth:`to_dict` wrote (raises ValueError when ``doc`` is not one)."""
        try:
            segments = tuple(
                Segment(str(s["path"]), int(s["events"])) for s in doc.get("segments") or []
            )
            return cls(str(doc["name"]), segments, int(doc.get("min_events") or 1))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a seal report: {exc}") from None


def check_min_events(value: Any) -> int:
    """``value`` as a whole number of at least 1; raises InvalidRequest otherwise."""
    from mlflow_approvals.errors import InvalidRequest

    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidRequest("min_events must be a whole number of at least 1")
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1 or len(text) > 9:
        raise InvalidRequest(
            f"min_events must be a whole number from 1 to 999999999, not {str(value)[:40]!r}"
        )
    return int(text)


def seal_model(ports: Ports, name: str, min_events: int = 1) -> SealReport:
    """Seal the loose audit events of model ``name`` (when at least ``min_events`` are loose).

    A name with neither an audit log nor a registered model is refused
    (``ModelVersionNotFound``) and nothing is written; a deleted model's log, which outlives it,
    is sealed like any other. Raises ``AuditUnavailable`` when a segment or its anchor cannot
    be written (the events stay loose, and are read as before).
    """
    from mlflow.exceptions import MlflowException

    from mlflow_approvals.errors import InvalidRequest, ModelVersionNotFound

    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("name the registered model whose audit log to seal")
    minimum = check_min_events(min_events)
    if not ports.audit.run_ids(name, create=False):
        try:
            ports.registry.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise ModelVersionNotFound(
                f"no registered model '{name}' and no audit log of that name: check the name "
                "(it is case-sensitive)"
            ) from None
        return SealReport(name, (), minimum)  # registered, never audited: nothing to seal
    written = ports.audit.seal(name, min_events=minimum)
    return SealReport(name, tuple(Segment(p, n) for p, n in written), minimum)
