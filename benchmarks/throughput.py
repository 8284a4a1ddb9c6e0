"""Throughput of sign-offs on a 4-worker server on PostgreSQL, with 8 concurrent processes.

Usage::

    .venv/bin/python benchmarks/throughput.py [--processes N] [--per-process N] [--workers N]

Needs PostgreSQL on 127.0.0.1:5432 accepting user ``postgres`` without a password (trust auth)
and a database ``test`` to connect to. Each run creates its own databases,
``bench_<random>_appr``, ``bench_<random>_auth`` and ``bench_<random>_plain``, and drops them at
the end, so nothing collides with the test suite or another run.

Two real servers are started side by side, each with ``--workers`` workers (default 4), job
execution off, artifacts proxied into a temporary folder:

* ``approvals``: ``mlflow server --app-name approvals`` on ``bench_<random>_appr``, with
  basic-auth (its users in ``bench_<random>_auth``, ``auth_cache_ttl_seconds = 300`` as
  docs/operations.md recommends for several workers) and ``EXAMPLE_POLICY``;
* ``plain``: ``mlflow server`` on ``bench_<random>_plain``, for the client-gated mode
  (``ApprovalClient`` runs every step in the caller's process over MLflow's REST API).

For each mode, one mode after the other:

1. Round trips per step, counted with :class:`~mlflow_approvals.testing.RoundTripCounter` in
   this process, on a second cycle after a warm-up cycle: alice requests Production; bob and
   carol sign level 1; dave signs level 2, which applies the promotion.
2. Throughput: ``--processes`` processes (default 8, ``multiprocessing`` with spawn) each
   register ``--per-process`` models (default 5) of one version each (untimed), make their
   four clients and probe the server, then, all starting together at a barrier, run three
   phases, each ended by a barrier: every process files its requests (alice); signs level 1 on
   each (bob, then carol); signs level 2 on each (dave, which applies it). Printed: requests per
   second, sign-offs per second (level 1, level 2 with the apply, and both phases together),
   and the median and 95th percentile latency of each step under that load.
3. Checks: every request ended applied, every version is in Production, and the audit log of
   every model verifies.

Every model is its own registered model, so the processes contend for the server, its
database and its workers, not for one audit run; a version's sign-offs are sequential.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _common import quiet_process, started_together

from mlflow_approvals.testing import (
    EXAMPLE_POLICY,
    MlflowServer,
    RoundTripCounter,
    mlflow_server,
    register_versions,
)

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
ADMIN = "admin"
PASSWORD = "approvals-bench-password"  # every user's (basic-auth wants >= 12 characters)
USERS = ("alice", "bob", "carol", "dave")
MODES = ("approvals", "plain")
STEPS = (
    ("request", "alice", "request Production"),
    ("sign L1", "bob", "data-scientist, level 1"),
    ("sign L1", "carol", "ml-engineer, level 1"),
    ("sign L2", "dave", "business-owner, level 2; applies"),
)
PHASES = ("request", "sign L1", "sign L2")
BARRIER_TIMEOUT = 900.0  # seconds: registration of every model on a loaded machine included
W = 46  # width of the first column


# ----------------------------------------------------------------------------- postgres --
def pg_admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used here (None: it can)."""
    try:
        pg_admin("SELECT 1")
    except ImportError:
        return "psycopg2 is not installed: .venv/bin/pip install psycopg2-binary"
    except Exception as exc:
        why = " ".join(str(exc).split())
        return (
            "PostgreSQL does not answer on 127.0.0.1:5432 as user postgres (trust auth) with a "
            f"database `test` ({type(exc).__name__}: {why}): start it, or skip this benchmark"
        )
    return None


@contextlib.contextmanager
def databases(names: list[str]) -> Iterator[None]:
    """Create the databases; drop them (connections forced closed) on the way out."""
    made: list[str] = []
    try:
        for name in names:
            pg_admin(f'CREATE DATABASE "{name}"')
            made.append(name)
        yield
    finally:
        for name in made:
            with contextlib.suppress(Exception):
                pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ----------------------------------------------------------------------------- servers --
@contextlib.contextmanager
def two_servers(root: Path, prefix: str, workers: int) -> Iterator[dict[str, MlflowServer]]:
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    policy = root / "policy.yaml"
    policy.write_text(yaml.safe_dump(EXAMPLE_POLICY))
    ini = root / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = EDIT\n"
        f"database_uri = {PG}/{prefix}_auth\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 300\n"
    )
    env = {
        "MLFLOW_APPROVALS_POLICY": str(policy),
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": f"approvals-bench-{uuid.uuid4().hex}",
    }
    managers = {
        "approvals": mlflow_server(
            root / "approvals",
            backend_store_uri=f"{PG}/{prefix}_appr",
            workers=workers,
            app_name="approvals",
            env=env,
        ),
        "plain": mlflow_server(
            root / "plain", backend_store_uri=f"{PG}/{prefix}_plain", workers=workers
        ),
    }
    with started_together(managers) as servers:
        yield servers


@contextlib.contextmanager
def credentials(user: str | None) -> Iterator[None]:
    """MLflow's client sends ``user``'s credentials inside the block (None: none)."""
    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    old = {k: os.environ.get(k) for k in keys}
    if user is not None:
        os.environ.update(dict(zip(keys, (user, PASSWORD), strict=True)))
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def create_users(uri: str) -> None:
    from mlflow.server.auth.client import AuthServiceClient

    with credentials(ADMIN):
        admin = AuthServiceClient(uri)
        for user in USERS:
            admin.create_user(user, PASSWORD)


def clients(mode: str, uri: str) -> dict[str, Any]:
    """The four people's ``ApprovalClient``s, each having probed the server."""
    from mlflow_approvals import ApprovalClient

    made = {
        user: ApprovalClient(
            uri,
            uri,
            policy=EXAMPLE_POLICY,
            actor=user,
            server_auth=(user, PASSWORD) if mode == "approvals" else None,
        )
        for user in USERS
    }
    for client in made.values():
        if client.enforcing_server != (mode == "approvals"):
            raise RuntimeError(f"{uri}: ApprovalClient.enforcing_server is wrong for {mode}")
    return made


def steps(people: dict[str, Any], name: str, version: str) -> list[Callable[[], Any]]:
    return [
        lambda: people["alice"].request_transition(name, version, "Production"),
        lambda: people["bob"].approve(name, version),
        lambda: people["carol"].approve(name, version),
        lambda: people["dave"].approve(name, version),
    ]


def status_of(result: Any) -> str:
    return str(getattr(result.status, "value", result.status))


def registrar(mode: str) -> str | None:
    """Who registers the models: alice, signed in, on the approvals server; nobody on plain."""
    return "alice" if mode == "approvals" else None


# ----------------------------------------------------------------------------- 1. trips --
def round_trips(rt: RoundTripCounter, mode: str, uri: str, tag: str) -> list[list[str]]:
    """Requests of each step of a steady cycle (after a warm-up cycle on another model)."""
    netloc = urlsplit(uri).netloc
    people = clients(mode, uri)
    counted: list[list[str]] = []
    for round_ in ("warm-up", "counted"):
        name = f"fraud-tp-{tag}-{mode}-{round_}"
        with credentials(registrar(mode)):
            (version,) = register_versions(uri, name)
        counted = []
        result = None
        for step in steps(people, name, version):
            with rt.count() as calls:
                result = step()
            counted.append([f"{c.method} {c.path}" for c in calls if c.host == netloc])
        if status_of(result) != "applied":
            raise RuntimeError(f"{mode}: the counted cycle ended {status_of(result)}")
    return counted


# ----------------------------------------------------------------------------- 2. load --
def worker(
    mode: str, uri: str, names: list[str], barrier: Any, results: Any
) -> None:  # pragma: no cover - runs in a child process
    """One process: register its models, then the three timed phases between barriers."""
    import mlflow  # noqa: F401  (its import sets up its loggers: quiet them after it)

    quiet_process()
    latencies: dict[str, list[float]] = {phase: [] for phase in PHASES}
    errors: list[str] = []
    outcome: dict[str, str] = {}
    versions: dict[str, str] = {}
    people: dict[str, Any] = {}
    try:
        with credentials(registrar(mode)):
            for name in names:
                (versions[name],) = register_versions(uri, name)
        people = clients(mode, uri)
    except Exception as exc:
        errors.append(f"setup: {type(exc).__name__}: {exc}")

    def timed(phase: str, call: Callable[[], Any], name: str) -> None:
        started = time.perf_counter()
        try:
            result = call()
        except Exception as exc:
            errors.append(f"{phase} {name}: {type(exc).__name__}: {str(exc)[:300]}")
            return
        latencies[phase].append(time.perf_counter() - started)
        outcome[name] = status_of(result)

    barrier.wait(BARRIER_TIMEOUT)  # everyone is ready: the clock starts
    for phase, indexes in (("request", (0,)), ("sign L1", (1, 2)), ("sign L2", (3,))):
        for name, version in versions.items() if people else ():
            for index in indexes:
                timed(phase, steps(people, name, version)[index], name)
        barrier.wait(BARRIER_TIMEOUT)
    results.put({"latencies": latencies, "errors": errors, "outcome": outcome})


def load(mode: str, uri: str, processes: int, per_process: int, tag: str) -> dict[str, Any]:
    """Run the processes; return the phases' wall times and what the processes reported."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    names = [
        [f"fraud-tp-{tag}-{mode}-{p}-{i}" for i in range(per_process)] for p in range(processes)
    ]
    procs = [
        ctx.Process(target=worker, args=(mode, uri, names[p], barrier, results))
        for p in range(processes)
    ]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(BARRIER_TIMEOUT)
        marks = [time.perf_counter()]
        for _ in PHASES:
            barrier.wait(BARRIER_TIMEOUT)
            marks.append(time.perf_counter())
        reports = [results.get(timeout=120) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    walls = {phase: marks[i + 1] - marks[i] for i, phase in enumerate(PHASES)}
    return {
        "walls": walls,
        "names": [n for group in names for n in group],
        "latencies": {p: [x for r in reports for x in r["latencies"][p]] for p in PHASES},
        "errors": [e for r in reports for e in r["errors"]],
        "outcome": {k: v for r in reports for k, v in r["outcome"].items()},
    }


# ----------------------------------------------------------------------------- 3. checks --
def check(mode: str, uri: str, names: list[str], outcome: dict[str, str]) -> list[str]:
    """What is wrong after the run: a request not applied, a version not in Production, an
    audit log that does not verify."""
    from mlflow import MlflowClient

    from mlflow_approvals import ApprovalClient

    problems = [
        f"{n}: {outcome.get(n, 'no outcome')}" for n in names if outcome.get(n) != "applied"
    ]
    with credentials(registrar(mode)):
        plain = MlflowClient(uri, uri)
        reader = ApprovalClient(
            uri,
            uri,
            policy=EXAMPLE_POLICY,
            actor="alice",
            server_auth=("alice", PASSWORD) if mode == "approvals" else None,
        )
        for name in names:
            stage = plain.get_model_version(name, "1").current_stage
            if stage != "Production":
                problems.append(f"{name} v1 is in {stage}")
            report = reader.verify_audit(name)
            if not report.ok or report.total < 5:
                problems.append(
                    f"{name}: audit {report.valid}/{report.total} valid {report.counts}"
                )
    return problems


# ----------------------------------------------------------------------------- output --
def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_trips(trips: dict[str, list[list[str]]]) -> None:
    print("\n1. ROUND TRIPS per step (steady: second cycle in this process)")
    head = f"  {'step':<{W}}" + "".join(f"{m:>12}" for m in MODES) + f"{'ratio':>9}"
    print(head)
    print("  " + "-" * (len(head) - 2))
    for i, (label, actor, what) in enumerate(STEPS):
        counts = [len(trips[m][i]) for m in MODES]
        print(
            f"  {label + ' ' + actor + ' (' + what + ')':<{W}}"
            + "".join(f"{c:>12}" for c in counts)
            + f"{counts[0] / counts[1]:>8.2f}x"
        )
    totals = [sum(len(s) for s in trips[m]) for m in MODES]
    print("  " + "-" * (len(head) - 2))
    print(
        f"  {'full cycle':<{W}}"
        + "".join(f"{t:>12}" for t in totals)
        + f"{totals[0] / totals[1]:>8.2f}x"
    )
    print("  ratio: approvals / plain (client-gated). Not counted: the probe per process and user.")
    for (label, actor, _), calls in zip(STEPS, trips["approvals"], strict=True):
        print(f"  approvals, {label} {actor}: {', '.join(calls)}")


def print_load(loads: dict[str, dict[str, Any]], processes: int, per_process: int) -> None:
    print(
        f"\n2. THROUGHPUT: {processes} processes x {per_process} models, one request each,"
        " three phases between barriers"
    )
    head = f"  {'':<{W}}" + "".join(f"{m:>14}" for m in MODES) + f"{'ratio':>9}"
    print(head)
    print("  " + "-" * (len(head) - 2))

    def row(label: str, values: list[float], unit: str, digits: int = 1) -> None:
        cells = "".join(f"{v:>{14 - len(unit)}.{digits}f}{unit}" for v in values)
        print(f"  {label:<{W}}{cells}{values[0] / values[1]:>8.2f}x")

    n = processes * per_process
    for phase, count, what in (
        ("request", n, "requests filed / s"),
        ("sign L1", 2 * n, "level-1 sign-offs / s"),
        ("sign L2", n, "level-2 sign-offs (each applies) / s"),
    ):
        row(what, [count / loads[m]["walls"][phase] for m in MODES], "/s")
    both = [3 * n / (loads[m]["walls"]["sign L1"] + loads[m]["walls"]["sign L2"]) for m in MODES]
    row("all sign-offs / s (both phases)", both, "/s")
    for phase in PHASES:
        row(f"{phase}: phase wall time", [loads[m]["walls"][phase] for m in MODES], " s")
    for phase in PHASES:
        for q, label in ((0.5, "median"), (0.95, "p95")):
            values = [pct(loads[m]["latencies"][phase], q) * 1000 for m in MODES]
            row(f"{phase}: {label} latency of one step", values, " ms", 0)
    print("  ratio: approvals / plain (client-gated)")


# ----------------------------------------------------------------------------- main --
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=8, help="client processes (default 8)")
    parser.add_argument("--per-process", type=int, default=5, help="models each (default 5)")
    parser.add_argument("--workers", type=int, default=4, help="server workers (default 4)")
    args = parser.parse_args(argv)
    if min(args.processes, args.per_process, args.workers) < 1:
        parser.error("--processes, --per-process and --workers must be at least 1")

    problem = postgres_problem()
    if problem is not None:
        print(f"throughput.py needs PostgreSQL: {problem}", file=sys.stderr)
        return 2
    quiet_process()
    import mlflow

    quiet_process()  # after MLflow's import, which sets up its loggers
    began = time.monotonic()
    tag = uuid.uuid4().hex[:8]
    prefix = f"bench_{tag}"
    root = Path(tempfile.mkdtemp(prefix="mlflow-approvals-bench-throughput-"))
    rt = RoundTripCounter()
    rt.install()
    try:
        print("mlflow-approvals benchmark: sign-off throughput on PostgreSQL")
        print(f"  date      {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
        print(f"  machine   {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}")
        print(f"  python    {platform.python_version()}   mlflow {mlflow.__version__}")
        print(f"  load      {' '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min)")
        with (
            databases([f"{prefix}_appr", f"{prefix}_auth", f"{prefix}_plain"]),
            two_servers(root, prefix, args.workers) as servers,
        ):
            for mode in MODES:
                server = servers[mode]
                print(f"  {mode:<9} {server.uri}  (ready after {server.ready_after:.1f} s)")
            print(
                f"  each      PostgreSQL database {prefix}_<mode>, {args.workers} workers,"
                " artifacts proxied; approvals: basic-auth (users in PostgreSQL, cache 300 s)"
            )
            create_users(servers["approvals"].uri)
            trips = {m: round_trips(rt, m, servers[m].uri, tag) for m in MODES}
            print_trips(trips)
            loads: dict[str, dict[str, Any]] = {}
            for mode in MODES:
                loads[mode] = load(mode, servers[mode].uri, args.processes, args.per_process, tag)
            print_load(loads, args.processes, args.per_process)
            print("\n3. CHECKS")
            failed = False
            for mode in MODES:
                problems = loads[mode]["errors"] + check(
                    mode, servers[mode].uri, loads[mode]["names"], loads[mode]["outcome"]
                )
                count = len(loads[mode]["names"])
                if problems:
                    failed = True
                    print(f"  {mode}: {len(problems)} problems")
                    for problem in problems[:20]:
                        print(f"    {problem}")
                else:
                    print(
                        f"  {mode}: all {count} requests applied, every version in Production,"
                        f" all {count} audit logs verify"
                    )
    finally:
        rt.uninstall()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n(whole run {time.monotonic() - began:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
