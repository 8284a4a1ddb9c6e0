"""The approvals pages: what opening the inbox and a request page costs, against the API.

Usage::

    .venv/bin/python benchmarks/web.py [--reps N] [--requests N]

One real ``mlflow server --app-name approvals`` (sqlite, one worker, job execution off) behind
``--static-prefix /mlflow``, the user named by a trusted ``X-Forwarded-User`` header (so no
password hashing is timed). ``--requests`` model versions each get a request filed by alice and
approved by carol (level 1 half signed), so the inbox has that many open requests.

Measured, interleaved call by call so load on the machine affects each alike, median of
``--reps``:

* ``mlflow get``: MLflow's own ``GET model-versions/get`` (the floor: one registry read);
* ``api get``: the approval endpoint ``get`` for one request (one registry read, the facts
  decoded);
* ``request page``: ``GET /approvals/request`` for that request, as dave (the registry read, the
  model's audit log read and verified, the page rendered);
* ``inbox``: ``GET /approvals/`` as dave (one paged search of every version with an approval,
  the page rendered).

Printed as milliseconds and as ratios against ``mlflow get`` and ``api get``; each page is one
HTTP round trip from the browser (plus the stylesheet, cached for an hour).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests
import yaml

from mlflow_approvals.testing import EXAMPLE_POLICY, mlflow_server, register_versions

HEADER = "X-Forwarded-User"
PREFIX = "/mlflow"


def _timed(call: Callable[[], requests.Response]) -> float:
    start = time.perf_counter()
    response = call()
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        folder = Path(tmp)
        policy = folder / "policy.yaml"
        policy.write_text(yaml.safe_dump(EXAMPLE_POLICY))
        env = {
            "MLFLOW_APPROVALS_POLICY": str(policy),
            "MLFLOW_APPROVALS_AUTH": "trusted-header",
            "MLFLOW_APPROVALS_IDENTITY_HEADER": HEADER,
            "MLFLOW_APPROVALS_WEB_SECRET": "bench-secret",
        }
        with mlflow_server(
            folder / "server", app_name="approvals", env=env, static_prefix=PREFIX
        ) as server:
            uri = server.uri
            api = f"{uri}/api/2.0/mlflow-approvals"
            names = []
            for i in range(args.requests):
                name = f"fraud-bench-{i}"
                (v,) = register_versions(server.backend_store_uri, name)
                for user, action, body in (
                    ("alice", "request", {"stage": "Production", "comment": "bench"}),
                    ("carol", "approve", {"comment": "ok"}),
                ):
                    requests.post(
                        f"{api}/{action}",
                        json={"name": name, "version": v, **body},
                        headers={HEADER: user},
                        timeout=60,
                    ).raise_for_status()
                names.append((name, v))
            name, v = names[0]
            request_id = requests.get(
                f"{api}/get",
                params={"name": name, "version": v},
                headers={HEADER: "dave"},
                timeout=60,
            ).json()["request"]["id"]
            dave = {HEADER: "dave"}
            calls: dict[str, Callable[[], requests.Response]] = {
                "mlflow get": lambda: requests.get(
                    f"{uri}/api/2.0/mlflow/model-versions/get",
                    params={"name": name, "version": v},
                    headers=dave,
                    timeout=60,
                ),
                "api get": lambda: requests.get(
                    f"{api}/get",
                    params={"name": name, "version": v, "request_id": request_id},
                    headers=dave,
                    timeout=60,
                ),
                "request page": lambda: requests.get(
                    f"{uri}/approvals/request",
                    params={"name": name, "version": v, "id": request_id},
                    headers=dave,
                    timeout=60,
                ),
                "inbox": lambda: requests.get(f"{uri}/approvals/", headers=dave, timeout=60),
            }
            for call in calls.values():  # warm-up
                _timed(call)
            samples: dict[str, list[float]] = {k: [] for k in calls}
            for _ in range(args.reps):
                for label, call in calls.items():
                    samples[label].append(_timed(call))

    medians = {k: statistics.median(v) for k, v in samples.items()}
    print(f"# {platform.platform()}, python {platform.python_version()}")
    print(f"# {args.requests} open requests, {args.reps} reps, medians")
    print(f"{'call':<14}{'ms':>9}{'/ mlflow get':>14}{'/ api get':>11}")
    for label, ms in medians.items():
        print(
            f"{label:<14}{ms:>9.1f}{ms / medians['mlflow get']:>14.1f}"
            f"{ms / medians['api get']:>11.1f}"
        )


if __name__ == "__main__":
    main()
