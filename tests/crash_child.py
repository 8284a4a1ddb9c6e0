"""One lifecycle step in its own process, killed with SIGKILL at an exact point.

tests/test_crash.py runs ``python tests/crash_child.py '<json>'``. The JSON names the registry
(``uri``), the policy file, the actor, the step (``request``, ``approve``, ``apply``) with its
``name``, ``version`` and ``archive`` flag, and the kill point:

    {"call": "append" | "set_tag" | "transition", "match": "...", "nth": 1,
     "when": "before" | "after"}

``append`` is the audit sink's ``append`` (``match``: the end of the event's type),
``set_tag`` the registry port's ``set_model_version_tag`` (``match``: the end of the tag key),
``transition`` the registry port's stage transition. The ``nth`` matching call kills this
process with SIGKILL just before or just after it runs. Nothing in the product knows: the
methods of this process's own engine are wrapped from the outside, and the process dies the
way a process dies when the machine is lost. Exit status 0 means the point was never reached.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _matches(call: str, match: str, args: tuple[Any, ...]) -> bool:
    if call == "append":
        return str(args[0]["type"]).endswith(match)
    if call == "set_tag":  # (name, version, key, value)
        return str(args[2]).endswith(match)
    return True


def arm(engine: Any, kill: dict[str, Any]) -> None:
    """Wrap the engine's port method named by ``kill`` so that its nth matching call dies."""
    owner, attr = {
        "append": (engine.audit, "append"),
        "set_tag": (engine.registry, "set_model_version_tag"),
        "transition": (engine.registry, "transition_model_version_stage"),
    }[kill["call"]]
    original: Callable[..., Any] = getattr(owner, attr)
    seen = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal seen
        hit = False
        if _matches(kill["call"], kill.get("match", ""), args):
            seen += 1
            hit = seen == kill.get("nth", 1)
        if hit and kill["when"] == "before":
            _die()
        result = original(*args, **kwargs)
        if hit:
            _die()
        return result

    setattr(owner, attr, wrapper)


def main(spec: dict[str, Any]) -> int:
    from mlflow_approvals import ApprovalClient

    client = ApprovalClient(spec["uri"], spec["uri"], policy=spec["policy"], actor=spec["actor"])
    arm(client.engine, spec["kill"])
    name, version = spec["name"], spec["version"]
    if spec["step"] == "request":
        client.request_transition(name, version, "Production", spec.get("archive", False))
    elif spec["step"] == "approve":
        client.approve(name, version)
    elif spec["step"] == "apply":
        client.apply(name, version)
    else:
        raise SystemExit(f"unknown step {spec['step']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
