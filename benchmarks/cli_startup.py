"""Start-up time of the `mlflow-approvals` command line, against `mlflow --version`.

Each command runs as a subprocess, five times, in the same run; the median wall time is printed
with its ratio to `mlflow --version`. `list` runs against a temporary sqlite registry (created
and migrated before timing starts), so it measures the cost of importing MLflow plus one query.

    .venv/bin/python benchmarks/cli_startup.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUNS = 5


def _time(cmd: list[str], env: dict[str, str]) -> float:
    """Median wall time of ``cmd`` over RUNS runs, in seconds."""
    samples = []
    for _ in range(RUNS):
        started = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    cli = str(BIN / "mlflow-approvals")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{Path(tmp) / 'registry.db'}")
        env.pop("MLFLOW_APPROVALS_POLICY", None)
        subprocess.run([cli, "list"], env=env, cwd=ROOT, check=True, capture_output=True)
        validate = [cli, "policy", "validate", "examples/policy.yaml"]
        cases = {
            "mlflow-approvals --help": [cli, "--help"],
            "mlflow-approvals policy validate examples/policy.yaml": validate,
            "mlflow-approvals list (sqlite registry)": [cli, "list"],
            "mlflow --version": [str(BIN / "mlflow"), "--version"],
        }
        times = {label: _time(cmd, env) for label, cmd in cases.items()}
    baseline = times["mlflow --version"]
    width = max(len(label) for label in times)
    print(f"median of {RUNS} runs each, as subprocesses, same machine and run")
    for label, seconds in times.items():
        print(f"{label:<{width}}  {seconds:6.2f} s  {seconds / baseline:5.2f}x mlflow --version")


if __name__ == "__main__":
    main()
