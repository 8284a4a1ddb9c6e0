"""Start-up time of the `mlflow-approvals` command line, against `mlflow --version`.

Each command runs as a subprocess, five times, in the same run; the median wall time is printed
with its ratio to `mlflow --version` and to `mlflow-approvals --help`. `list` runs against a
temporary sqlite registry (created and migrated before timing starts), so it measures the cost
of importing MLflow plus one query.

`status` also runs against an enforcing server (`mlflow server --app-name approvals` with
basic-auth, started here and configured as in `benchmarks/server.py`) on a version with a
pending request: there the command goes straight to the approval endpoint, one HTTP request and
no MLflow import; with `--as` it asks the server's `info` first (two requests); with
`MLFLOW_APPROVALS_SERVER=0` it goes through `ApprovalClient` (MLflow imported, as against a
plain server). The median time of the one `get` request itself, sent from this process, is
printed beside them: basic-auth checks the password on each request, which is most of it.

    .venv/bin/python benchmarks/cli_startup.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from mlflow_approvals.testing import EXAMPLE_POLICY, mlflow_server, register_versions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server import PASSWORD, auth_env, create_users, credentials

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUNS = 5


def _time(cmd: list[str], env: dict[str, str], code: int = 0) -> float:
    """Median wall time of ``cmd`` over RUNS runs, in seconds (each must exit ``code``)."""
    samples = []
    for _ in range(RUNS):
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        samples.append(time.perf_counter() - started)
        if proc.returncode != code:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}")
    return statistics.median(samples)


def _request_time(uri: str, name: str, version: str) -> float:
    """Median time of the one request `status` sends, from this process."""
    import requests

    url = f"{uri}/api/2.0/mlflow-approvals/get"
    samples = []
    for _ in range(RUNS):
        started = time.perf_counter()
        answer = requests.get(
            url, params={"name": name, "version": version}, auth=("bob", PASSWORD), timeout=60
        )
        samples.append(time.perf_counter() - started)
        answer.raise_for_status()
    return statistics.median(samples)


def _enforcing(tmp: Path, cli: str, base_env: dict[str, str]) -> dict[str, float]:
    """Time `status` against an approvals server, on a version with a pending request."""
    from mlflow_approvals.lifecycle import Target
    from mlflow_approvals.remote import RemoteLifecycle

    policy = tmp / "policy.yaml"
    policy.write_text(yaml.safe_dump(EXAMPLE_POLICY))
    env = auth_env(tmp / "auth", policy)
    with mlflow_server(tmp / "approvals", app_name="approvals", env=env) as server:
        create_users(server.uri)
        name = f"fraud-startup-{uuid.uuid4().hex[:8]}"
        with credentials("alice"):
            (version,) = register_versions(server.uri, name, 1)
        alice = RemoteLifecycle(server.uri, auth=("alice", PASSWORD))
        alice.file(name, version, Target("stage", "Production"), "start-up benchmark")
        run_env = dict(
            base_env,
            MLFLOW_TRACKING_URI=server.uri,
            MLFLOW_TRACKING_USERNAME="bob",
            MLFLOW_TRACKING_PASSWORD=PASSWORD,
        )
        status = [cli, "status", name, version]
        as_bob = [cli, "--as", "bob", "status", name, version]
        client_env = dict(run_env, MLFLOW_APPROVALS_SERVER="0")
        return {
            "mlflow-approvals status (approvals server: 1 request)": _time(status, run_env, 3),
            "mlflow-approvals --as bob status (approvals server: 2)": _time(as_bob, run_env, 3),
            "  status with MLFLOW_APPROVALS_SERVER=0 (ApprovalClient)": _time(
                status, client_env, 3
            ),
            "  the one request alone (GET .../mlflow-approvals/get)": _request_time(
                server.uri, name, version
            ),
        }


def main() -> None:
    cli = str(BIN / "mlflow-approvals")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{Path(tmp) / 'registry.db'}")
        for var in ("MLFLOW_APPROVALS_POLICY", "MLFLOW_APPROVALS_SERVER", "MLFLOW_REGISTRY_URI"):
            env.pop(var, None)
        subprocess.run([cli, "list"], env=env, cwd=ROOT, check=True, capture_output=True)
        validate = [cli, "policy", "validate", "examples/policy.yaml"]
        cases = {
            "mlflow-approvals --help": [cli, "--help"],
            "mlflow-approvals policy validate examples/policy.yaml": validate,
            "mlflow-approvals list (sqlite registry)": [cli, "list"],
            "mlflow --version": [str(BIN / "mlflow"), "--version"],
        }
        times = {label: _time(cmd, env) for label, cmd in cases.items()}
        times.update(_enforcing(Path(tmp), cli, env))
    baseline = times["mlflow --version"]
    helped = times["mlflow-approvals --help"]
    width = max(len(label) for label in times)
    print(f"median of {RUNS} runs each, as subprocesses, same machine and run")
    print(f"{'':<{width}}  {'':>8}  {'x mlflow --version':>18}  {'x --help':>9}")
    for label, seconds in times.items():
        print(
            f"{label:<{width}}  {seconds:6.2f} s  {seconds / baseline:17.2f}x  "
            f"{seconds / helped:8.2f}x"
        )


if __name__ == "__main__":
    main()
