"""Round trips and time of one full two-level approval cycle, against plain MlflowClient.

Usage::

    .venv/bin/python benchmarks/cycle.py [--tracking-uri URI] [--rounds N]

Without ``--tracking-uri`` a real ``mlflow server`` is started on a free loopback port (sqlite
backend in a temporary folder, job execution off, its own process group) and stopped at the end.

What is measured, all in the same run:

1. Round trips: every HTTP request the clients send to the tracking server is counted by
   wrapping ``requests.adapters.HTTPAdapter.send`` (method and path of each). One cycle under
   the test policy (levels [data-scientist 1 + ml-engineer 1], [business-owner 1]) is: alice
   requests Production, bob and carol sign level 1, dave signs level 2 and the promotion is
   applied. It is counted three times: cold (four new clients, each step its client's first
   call, MLflow's artifact-repository cache emptied before each step as in a new process per
   person, on a new model), warm (the same four clients, a second new model) and steady (the
   same clients, the next version of that second model).
2. Time: the median over ``--rounds`` of the full cycle and of each step, against the median of
   one plain ``MlflowClient.transition_model_version_stage`` on the same server, as ratios.
3. The same cycle on a direct ``sqlite:///`` registry (no server): time ratio only.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlflow_approvals.testing import (
    EXAMPLE_POLICY,
    RoundTrip,
    RoundTripCounter,
    mlflow_server,
    register_versions,
)

STEPS = (
    ("request", "alice", "request Production"),
    ("sign L1", "bob", "data-scientist, level 1"),
    ("sign L1", "carol", "ml-engineer, level 1"),
    ("sign L2", "dave", "business-owner, level 2; applies"),
)
STAGE = "Production"


# ----------------------------------------------------------------------------- counting --
def to_server(uri: str, calls: list[RoundTrip]) -> list[str]:
    """The endpoint labels of the calls, in order.

    Calls to another host than the tracking server (an artifact store the server does not
    proxy, such as S3) are labelled ``artifact-store <host>`` and counted as the audit's.
    """
    netloc = urlsplit(uri).netloc
    return [
        endpoint(m, p) if host == netloc else f"{m} artifact-store {host}" for host, m, p in calls
    ]


def endpoint(method: str, path: str) -> str:
    """A short endpoint label: artifact paths (which carry event hashes) are folded into one."""
    marker = "/mlflow-artifacts/artifacts/"
    if marker in path:
        return f"{method} mlflow-artifacts/artifacts/<event file>"
    for prefix in ("/ajax-api/2.0/mlflow/", "/api/2.0/mlflow/", "/api/3.0/mlflow/"):
        if path.startswith(prefix):
            return f"{method} {path[len(prefix) :]}"
    return f"{method} {path}"


def is_audit(label: str) -> bool:
    """Artifact uploads and experiment/run look-ups are the audit log's; the rest is registry."""
    what = label.split(" ", 1)[1]
    return what.startswith(("mlflow-artifacts/", "experiments/", "runs/", "artifact-store "))


# ----------------------------------------------------------------------------- registry --
def new_model(uri: str, count: int) -> tuple[str, list[str]]:
    """Register a new ``fraud-...`` model with ``count`` versions backed by run artifacts."""
    name = f"fraud-bench-{uuid.uuid4().hex[:10]}"
    return name, register_versions(uri, name, count)


def new_clients(uri: str) -> dict[str, Any]:
    from mlflow_approvals import ApprovalClient

    return {
        actor: ApprovalClient(
            tracking_uri=uri, registry_uri=uri, policy=EXAMPLE_POLICY, actor=actor
        )
        for actor in ("alice", "bob", "carol", "dave")
    }


def clear_artifact_repo_cache() -> None:
    """Forget MLflow's process-wide run -> artifact repository cache (a new process has none)."""
    from mlflow.tracking._tracking_service import utils

    utils._artifact_repos_cache.clear()


def step_calls(clients: dict[str, Any], name: str, version: str) -> list[Callable[[], Any]]:
    return [
        lambda: clients["alice"].request_transition(name, version, STAGE),
        lambda: clients["bob"].approve(name, version),
        lambda: clients["carol"].approve(name, version),
        lambda: clients["dave"].approve(name, version),
    ]


def check_applied(uri: str, name: str, version: str, result: Any) -> None:
    from mlflow import MlflowClient

    status = getattr(result.status, "value", result.status)
    if status != "applied":
        raise RuntimeError(f"{name} v{version}: the cycle ended {status}, not applied")
    stage = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(name, version)
    if stage.current_stage != STAGE:
        raise RuntimeError(f"{name} v{version} is in {stage.current_stage}, not {STAGE}")


def counted_cycle(
    rt: RoundTripCounter, uri: str, clients: dict[str, Any], name: str, version: str, cold: bool
) -> list[list[str]]:
    """Run one cycle, counting each step's requests to the server.

    ``cold``: MLflow's process-wide artifact-repository cache is emptied before each step, as
    it is in a new process (the clients themselves are expected to be new).
    """
    per_step: list[list[str]] = []
    result = None
    for call in step_calls(clients, name, version):
        if cold:
            clear_artifact_repo_cache()
        with rt.count() as calls:
            result = call()
        per_step.append(to_server(uri, calls))
    check_applied(uri, name, version, result)
    return per_step


def timed_rounds(
    uri: str, clients: dict[str, Any], name: str, versions: list[str], plain_versions: list[str]
) -> tuple[list[list[float]], list[float]]:
    """Interleave a timed cycle and a timed plain transition per round; return the samples."""
    from mlflow import MlflowClient

    plain = MlflowClient(tracking_uri=uri, registry_uri=uri)
    steps: list[list[float]] = [[] for _ in STEPS]
    plain_times: list[float] = []
    for version, plain_version in zip(versions, plain_versions, strict=True):
        result = None
        for i, call in enumerate(step_calls(clients, name, version)):
            t0 = time.perf_counter()
            result = call()
            steps[i].append(time.perf_counter() - t0)
        check_applied(uri, name, version, result)
        t0 = time.perf_counter()
        plain.transition_model_version_stage(name, plain_version, STAGE)
        plain_times.append(time.perf_counter() - t0)
    return steps, plain_times


# ----------------------------------------------------------------------------- output --
W = 52  # width of the first column


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def print_counts(
    title: str, columns: dict[str, list[list[str]]], plain: dict[str, list[str]], legend: str
) -> None:
    names = list(columns)
    print(f"\n{title}")
    head = f"  {'step':<{W}}" + "".join(f"{n:>8}" for n in names)
    print(head)
    print("  " + "-" * (len(head) - 2))
    for i, (label, actor, what) in enumerate(STEPS):
        row = f"  {label + ' ' + actor + ' (' + what + ')':<{W}}"
        print(row + "".join(f"{len(columns[n][i]):>8}" for n in names))
    totals = {n: sum(len(s) for s in columns[n]) for n in names}
    audit = {n: sum(is_audit(e) for s in columns[n] for e in s) for n in names}
    print("  " + "-" * (len(head) - 2))
    print(f"  {'full cycle':<{W}}" + "".join(f"{totals[n]:>8}" for n in names))
    print(f"  {'  of which audit (artifacts, experiments, runs)':<{W}}", end="")
    print("".join(f"{audit[n]:>8}" for n in names))
    print(f"  {'  of which registry':<{W}}", end="")
    print("".join(f"{totals[n] - audit[n]:>8}" for n in names))
    print(legend)

    print("\n  per endpoint (full cycle)")
    labels: list[str] = []
    counters = {n: Counter(e for s in columns[n] for e in s) for n in names}
    for n in names:
        labels += [e for e in counters[n] if e not in labels]
    labels.sort(key=lambda e: (is_audit(e), e.split(" ", 1)[1], e))
    print(f"  {'endpoint':<52}{'share':>7}" + "".join(f"{n:>8}" for n in names))
    for e in labels:
        share = "audit" if is_audit(e) else "reg."
        print(f"  {e:<52}{share:>7}" + "".join(f"{counters[n][e]:>8}" for n in names))

    print("\n  plain MlflowClient, one call each, for comparison")
    for what, calls in plain.items():
        print(f"  {what:<{W}}{len(calls):>8}   {', '.join(calls)}")

    for n in names[:2]:
        print(f"\n  per step, in order ({n})")
        for (label, actor, _), calls in zip(STEPS, columns[n], strict=True):
            print(f"    {label} {actor}:")
            for e in calls:
                print(f"      {e}{'   [audit]' if is_audit(e) else ''}")


def print_times(title: str, steps: list[list[float]], plain: list[float]) -> None:
    cycles = [sum(parts) for parts in zip(*steps, strict=True)]
    base = statistics.median(plain)
    print(f"\n{title}  (median of {len(plain)} rounds)")
    print(f"  {'':<{W}}{'median':>10}{'x plain':>10}   min - max")

    def row(label: str, samples: list[float]) -> None:
        m = statistics.median(samples)
        spread = f"{min(samples) * 1000:.0f} - {max(samples) * 1000:.0f} ms"
        print(f"  {label:<{W}}{ms(m):>10}{m / base:>9.1f}x   {spread}")

    row("plain MlflowClient.transition_model_version_stage", plain)
    for (label, actor, _), samples in zip(STEPS, steps, strict=True):
        row(f"{label} {actor}", samples)
    row("full cycle (4 steps)", cycles)


# ----------------------------------------------------------------------------- main --
def run_server_part(uri: str, rounds: int, rt: RoundTripCounter) -> None:
    from mlflow import MlflowClient

    from mlflow_approvals.audit import AuditStore

    # The audit experiment exists once per server: make sure it does, and count what it cost.
    probe = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with rt.count() as setup_calls:
        AuditStore(probe).experiment_id()
    setup = to_server(uri, setup_calls)

    clients = new_clients(uri)
    cold_name, cold_versions = new_model(uri, 1)
    cold = counted_cycle(rt, uri, clients, cold_name, cold_versions[0], cold=True)
    warm_name, warm_versions = new_model(uri, 3 + 2 * rounds)
    warm = counted_cycle(rt, uri, clients, warm_name, warm_versions[0], cold=False)
    steady = counted_cycle(rt, uri, clients, warm_name, warm_versions[1], cold=False)

    plain = MlflowClient(tracking_uri=uri, registry_uri=uri)
    plain_eps: dict[str, list[str]] = {}
    with rt.count() as calls:
        plain.transition_model_version_stage(warm_name, warm_versions[2], STAGE)
    plain_eps["transition_model_version_stage"] = to_server(uri, calls)
    with rt.count() as calls:
        plain.set_model_version_tag(warm_name, warm_versions[2], "benchmark.note", "x")
    plain_eps["set_model_version_tag"] = to_server(uri, calls)
    with rt.count() as calls:
        plain.get_model_version(warm_name, warm_versions[2])
    plain_eps["get_model_version"] = to_server(uri, calls)

    print(f"\nbefore the cycles, the audit experiment was looked up: {', '.join(setup)}")
    print_counts(
        "ROUND TRIPS to the tracking server, one full cycle",
        {"cold": cold, "warm": warm, "steady": steady},
        plain_eps,
        "  cold: four new clients, each step its client's first call, MLflow's artifact-"
        "\n        repository cache emptied before each step (as in a new process per"
        "\n        person); the first request on a new model"
        "\n  warm: the same four clients, a second new model"
        "\n  steady: the same clients, the next version of that second model",
    )

    rest = warm_versions[3:]
    steps, plain_times = timed_rounds(uri, clients, warm_name, rest[:rounds], rest[rounds:])
    print_times("TIME through the server (steady clients)", steps, plain_times)


def run_sqlite_part(root: Path, rounds: int) -> None:
    uri = f"sqlite:///{root / 'registry.db'}"
    name, versions = new_model(uri, 2 + 2 * rounds)
    clients = new_clients(uri)
    # warm-up: one untimed cycle and one untimed plain transition
    from mlflow import MlflowClient

    for call in step_calls(clients, name, versions[0]):
        result = call()
    check_applied(uri, name, versions[0], result)
    MlflowClient(tracking_uri=uri, registry_uri=uri).transition_model_version_stage(
        name, versions[1], STAGE
    )
    rest = versions[2:]
    steps, plain_times = timed_rounds(uri, clients, name, rest[:rounds], rest[rounds:])
    print_times("TIME on a direct sqlite:/// registry (no server)", steps, plain_times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", help="an http(s) tracking server (default: start one)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no requests to other hosts
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no run links
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)

    root = Path(tempfile.mkdtemp(prefix="mlflow-approvals-bench-"))
    rt = RoundTripCounter()
    rt.install()
    try:
        print("mlflow-approvals benchmark: one two-level approval cycle vs plain MlflowClient")
        print(f"  date      {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
        print(f"  machine   {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}")
        print(f"  python    {platform.python_version()}   mlflow {mlflow.__version__}")
        print(f"  rounds    {args.rounds}")
        if args.tracking_uri:
            print(f"  server    {args.tracking_uri} (given)")
            run_server_part(args.tracking_uri, args.rounds, rt)
        else:
            with mlflow_server(root / "server") as server:
                print(f"  server    {server.uri}: mlflow server, sqlite backend, 1 worker")
                print(f"            (ready after {server.ready_after:.1f} s)")
                run_server_part(server.uri, args.rounds, rt)
        (root / "direct").mkdir()
        run_sqlite_part(root / "direct", args.rounds)
    finally:
        rt.uninstall()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
