"""The story `make demo` tells runs end to end on a temporary sqlite registry."""

from __future__ import annotations

from mlflow_approvals.demo import run_demo


def test_demo_story_completes_and_checks_every_step():
    """run_demo returns 0, refuses the self-approval and the early sign-off, and applies."""
    lines: list[str] = []
    assert run_demo(lines.append) == 0
    text = "\n".join(lines)
    assert "separation of duties" in text
    assert "level 1 is open" in text
    assert "is now in stage Production" in text
    assert "UNEXPECTED" not in text
