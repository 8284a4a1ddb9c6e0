"""The approvals server: round trips of a cycle through its endpoints, and the gate's cost.

Usage::

    .venv/bin/python benchmarks/server.py [--reps N] [--auth-reps N] [--cycles N]

Four real ``mlflow server`` processes are started side by side in the same run, each on a free
loopback port with a sqlite backend in its own temporary folder, one worker, job execution off:

* ``plain``: ``mlflow server``;
* ``basic-auth``: ``mlflow server --app-name basic-auth``, configured exactly like the next one
  (an auth ini with default permission EDIT, the same admin password and secret key), so that
  authentication's cost is not counted as the gate's;
* ``approvals``: ``mlflow server --app-name approvals`` (basic-auth identity, enforcing,
  ``EXAMPLE_POLICY``), configured as the test suite's ``approvals_server`` fixture;
* ``appr-noauth``: the same approvals app with ``MLFLOW_APPROVALS_AUTH=none`` (and
  ``MLFLOW_APPROVALS_ALLOW_ANONYMOUS=true``): the gate and its audit without authentication, so
  its cost can be read against ``plain`` without the password check basic-auth makes on every
  request (hundreds of milliseconds on a small machine with basic-auth's default settings).

Users alice, bob, carol and dave are created on the two basic-auth servers.

What is measured:

1. Round trips of one two-level cycle (alice requests Production; bob and carol sign level 1;
   dave signs level 2, which applies it), counted with
   :class:`~mlflow_approvals.testing.RoundTripCounter`: through the approval endpoints with
   ``RemoteLifecycle``, and with ``ApprovalClient`` (which detects the server with one probe per
   process and user, then sends each step to the same endpoints), against the client-gated
   cycle of ``ApprovalClient`` on the plain server (steady clients, as in
   ``benchmarks/cycle.py``). Each column's first cycle is a warm-up; the median time of the
   others is printed too.
2. Median latency of ungated calls made with a plain ``MlflowClient`` as alice:
   ``get_model_version``, ``search_model_versions`` (by name), ``set_model_version_tag`` (a key
   outside the reserved prefix) and a transition to Staging (no rule gates it), on each server.
   The calls are interleaved, call by call and server by server, so load on the machine
   affects every server alike; the two basic-auth servers, whose calls take hundreds of
   milliseconds, are sampled on ``--auth-reps`` of the ``--reps`` rounds. Printed as ratios:
   ``approvals / basic-auth`` and ``appr-noauth / plain`` are the gate's cost (with and without
   authentication around it), ``basic-auth / plain`` is authentication's. The approvals app
   writes an audit event before every registry write it lets through (intent before effect),
   so the tag write and the transition cost one artifact write more there.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from _common import quiet_process, started_together

from mlflow_approvals.testing import (
    EXAMPLE_POLICY,
    MlflowServer,
    RoundTripCounter,
    mlflow_server,
    register_versions,
)

ADMIN = "admin"
PASSWORD = "approvals-bench-password"  # every user's (basic-auth wants >= 12 characters)
USERS = ("alice", "bob", "carol", "dave")
SERVERS = ("plain", "basic-auth", "approvals", "appr-noauth")
AUTHENTICATING = ("basic-auth", "approvals")
CYCLE = (
    ("alice", "request Production"),
    ("bob", "sign level 1 (data-scientist)"),
    ("carol", "sign level 1 (ml-engineer)"),
    ("dave", "sign level 2 (business-owner), applies"),
)
W = 44  # width of the first column


# ----------------------------------------------------------------------------- servers --
def auth_env(folder: Path, policy: Path) -> dict[str, str]:
    """basic-auth's settings (as tests/conftest.py::approvals_server sets them) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ini = folder / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = EDIT\n"
        f"database_uri = sqlite:///{folder / 'auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return {
        "MLFLOW_APPROVALS_POLICY": str(policy),
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "approvals-bench-secret",
    }


@contextlib.contextmanager
def four_servers(root: Path) -> Iterator[dict[str, MlflowServer]]:
    """The four servers, started side by side (each takes 10-20 s to become ready)."""
    policy = root / "policy.yaml"
    policy.write_text(yaml.safe_dump(EXAMPLE_POLICY))
    noauth = {
        "MLFLOW_APPROVALS_POLICY": str(policy),
        "MLFLOW_APPROVALS_AUTH": "none",
        "MLFLOW_APPROVALS_ALLOW_ANONYMOUS": "true",
    }
    managers = {
        "plain": mlflow_server(root / "plain"),
        "basic-auth": mlflow_server(
            root / "basic-auth", app_name="basic-auth", env=auth_env(root / "ba-auth", policy)
        ),
        "approvals": mlflow_server(
            root / "approvals", app_name="approvals", env=auth_env(root / "appr-auth", policy)
        ),
        "appr-noauth": mlflow_server(root / "appr-noauth", app_name="approvals", env=noauth),
    }
    with started_together(managers) as servers:
        yield servers


def create_users(uri: str) -> None:
    from mlflow.server.auth.client import AuthServiceClient

    with credentials(ADMIN):
        admin = AuthServiceClient(uri)
        for user in USERS:
            admin.create_user(user, PASSWORD)


@contextlib.contextmanager
def credentials(user: str) -> Iterator[None]:
    """MLflow's client sends ``user``'s credentials inside the block."""
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, PASSWORD
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def new_model(uri: str, count: int) -> tuple[str, list[str]]:
    """A new ``fraud-...`` model (gated by the policy's production rule) with ``count`` versions."""
    name = f"fraud-bench-{uuid.uuid4().hex[:10]}"
    return name, register_versions(uri, name, count)


Models = dict[str, tuple[str, list[str]]]


def prepare(servers: dict[str, MlflowServer], cycles: int) -> Models:
    """Users on the basic-auth servers, then one model per server, registered as alice, all
    servers at once: every request to a basic-auth server checks the password several times.

    The last version of each model is the one part 2 times; the others are for part 1:
    ``cycles`` + 1 endpoint cycles and one ``ApprovalClient`` cycle on the approvals server,
    ``cycles`` + 1 client-gated cycles on the plain server.
    """
    counts = {"plain": cycles + 2, "basic-auth": 1, "approvals": cycles + 3, "appr-noauth": 1}
    with ThreadPoolExecutor(len(AUTHENTICATING)) as pool:
        for done in [pool.submit(create_users, servers[s].uri) for s in AUTHENTICATING]:
            done.result()
    with credentials("alice"), ThreadPoolExecutor(len(SERVERS)) as pool:
        futures = {s: pool.submit(new_model, servers[s].uri, counts[s]) for s in SERVERS}
        return {s: future.result() for s, future in futures.items()}


def status_of(result: Any) -> str:
    return str(getattr(result.status, "value", result.status))


# ----------------------------------------------------------------------------- 1. cycle --
Steps = list[Callable[[], Any]]


def endpoint_cycle(uri: str, name: str, version: str) -> Steps:
    """The cycle's steps through the approval endpoints, each as its user."""
    from mlflow_approvals.lifecycle import Target
    from mlflow_approvals.remote import RemoteLifecycle, probe

    people = {u: RemoteLifecycle(uri, probe(uri, (u, PASSWORD)), (u, PASSWORD)) for u in USERS}
    production = Target("stage", "Production", "set", False)
    return [
        lambda: people["alice"].file(name, version, production, None),
        lambda: people["bob"].sign(name, version, "approve", None, None),
        lambda: people["carol"].sign(name, version, "approve", None, None),
        lambda: people["dave"].sign(name, version, "approve", None, None),
    ]


def client_cycle(clients: dict[str, Any], name: str, version: str) -> Steps:
    """The cycle's steps through ``ApprovalClient``."""
    return [
        lambda: clients["alice"].request_transition(name, version, "Production"),
        lambda: clients["bob"].approve(name, version),
        lambda: clients["carol"].approve(name, version),
        lambda: clients["dave"].approve(name, version),
    ]


def approval_clients(uri: str, enforcing: bool) -> dict[str, Any]:
    from mlflow_approvals import ApprovalClient

    return {
        user: ApprovalClient(
            uri,
            uri,
            policy=EXAMPLE_POLICY,
            actor=user,
            server_auth=(user, PASSWORD) if enforcing else None,
        )
        for user in USERS
    }


def run_cycles(
    rt: RoundTripCounter,
    uri: str,
    steps_for: Callable[[str], Steps],
    versions: list[str],
    warmup: bool = True,
) -> tuple[list[int], list[float]]:
    """One cycle per version: the round trips of each step (of the last cycle), and the time
    of each cycle (but the first, a warm-up, when ``warmup``)."""
    netloc = urlsplit(uri).netloc
    counts: list[int] = []
    times: list[float] = []
    for index, version in enumerate(versions):
        steps = steps_for(version)  # clients and probes are made before the clock starts
        counts = []
        result = None
        started = time.perf_counter()
        for step in steps:
            with rt.count() as calls:
                result = step()
            counts.append(sum(1 for c in calls if c.host == netloc))
        elapsed = time.perf_counter() - started
        if result is None or status_of(result) != "applied":
            raise RuntimeError(f"v{version}: the cycle ended {status_of(result)}, not applied")
        if index or not warmup:
            times.append(elapsed)
    return counts, times


def part_cycle(
    rt: RoundTripCounter, servers: dict[str, MlflowServer], models: Models, cycles: int
) -> None:
    """Print the round trips and times of the cycle."""
    from mlflow import MlflowClient

    from mlflow_approvals.remote import probe

    approvals, plain = servers["approvals"].uri, servers["plain"].uri
    a_name, a_versions = models["approvals"][0], models["approvals"][1][:-1]
    p_name, p_versions = models["plain"][0], models["plain"][1][:-1]

    with rt.count() as probe_calls:
        info = probe(approvals, ("alice", PASSWORD), refresh=True)
    if info is None:
        raise RuntimeError("the approvals server did not answer the probe as one")

    columns: dict[str, tuple[list[int], list[float]]] = {}
    columns["endpoints (RemoteLifecycle)"] = run_cycles(
        rt, approvals, lambda v: endpoint_cycle(approvals, a_name, v), a_versions[: cycles + 1]
    )
    enforcing = approval_clients(approvals, enforcing=True)
    for client in enforcing.values():  # each client probes (once per process and user)
        if not client.enforcing_server:
            raise RuntimeError("ApprovalClient did not detect the approvals server")
    columns["ApprovalClient -> approvals"] = run_cycles(
        rt,
        approvals,
        lambda v: client_cycle(enforcing, a_name, v),
        a_versions[cycles + 1 :],
        warmup=False,
    )
    with credentials("alice"):
        local = approval_clients(plain, enforcing=False)
        for client in local.values():
            if client.enforcing_server:
                raise RuntimeError("ApprovalClient took the plain server for an approvals server")
        columns["client-gated on plain"] = run_cycles(
            rt, plain, lambda v: client_cycle(local, p_name, v), p_versions
        )
        applied = MlflowClient(approvals, approvals).get_model_version(a_name, a_versions[-1])
    if applied.current_stage != "Production":
        raise RuntimeError(f"{a_name} v{a_versions[-1]} is in {applied.current_stage}")

    names = list(columns)
    col = 30
    print("\n1. ROUND TRIPS of one two-level cycle (request + 3 sign-offs)")
    head = f"  {'step':<{W}}" + "".join(f"{n:>{col}}" for n in names)
    rule = "  " + "-" * (len(head) - 2)
    print(head)
    print(rule)
    for i, (user, what) in enumerate(CYCLE):
        cells = "".join(f"{columns[n][0][i]:>{col}}" for n in names)
        print(f"  {user + ': ' + what:<{W}}{cells}")
    print(rule)
    totals = {n: sum(columns[n][0]) for n in names}
    base = totals["client-gated on plain"]
    print(f"  {'full cycle':<{W}}" + "".join(f"{totals[n]:>{col}}" for n in names))
    print(f"  {'  x client-gated on plain':<{W}}", end="")
    print("".join(f"{totals[n] / base:>{col - 1}.2f}x" for n in names))
    medians = {n: statistics.median(columns[n][1]) for n in names}
    print(f"  {'time of a cycle (median)':<{W}}", end="")
    print("".join(f"{medians[n] * 1000:>{col - 3}.0f} ms" for n in names))
    print(f"  {'  cycles timed':<{W}}" + "".join(f"{len(columns[n][1]):>{col}}" for n in names))
    print(
        f"  Not counted above: the probe (GET .../mlflow-approvals/info), {len(probe_calls)} "
        "request once per process\n  and user before the first step. The ApprovalClient column "
        "has one cycle, warmed by the\n  endpoint cycles before it. Every request to the "
        "approvals server is authenticated by\n  basic-auth, which checks the password several "
        "times per request with its default\n  settings: that, not the round trips, is most of "
        "the endpoint cycle's time (see part 2)."
    )


# ----------------------------------------------------------------------------- 2. latency --
OPERATIONS = ("get_model_version", "search_model_versions", "set_model_version_tag", "transition")
LABELS = {
    "get_model_version": "get_model_version",
    "search_model_versions": "search_model_versions (by name)",
    "set_model_version_tag": "set_model_version_tag (not reserved)",
    "transition": "transition to Staging (ungated)",
}
RATIOS = (("approvals", "basic-auth"), ("appr-noauth", "plain"), ("basic-auth", "plain"))


def operations(client: Any, name: str, version: str) -> dict[str, Callable[[int], Any]]:
    return {
        "get_model_version": lambda i: client.get_model_version(name, version),
        "search_model_versions": lambda i: client.search_model_versions(f"name = '{name}'"),
        "set_model_version_tag": lambda i: client.set_model_version_tag(
            name, version, "bench.note", str(i)
        ),
        "transition": lambda i: client.transition_model_version_stage(name, version, "Staging"),
    }


def part_latency(
    rt: RoundTripCounter,
    servers: dict[str, MlflowServer],
    models: Models,
    reps: int,
    auth_reps: int,
) -> None:
    from mlflow import MlflowClient

    ops: dict[str, dict[str, Callable[[int], Any]]] = {}
    trips: dict[str, dict[str, int]] = {s: {} for s in SERVERS}
    samples: dict[str, dict[str, list[float]]] = {s: {o: [] for o in OPERATIONS} for s in SERVERS}
    every = max(1, reps // auth_reps)
    with credentials("alice"):
        for server in SERVERS:
            uri = servers[server].uri
            name, version = models[server][0], models[server][1][-1]
            ops[server] = operations(MlflowClient(uri, uri), name, version)
            for op in OPERATIONS:  # a warm-up, which counts the round trips of each call
                with rt.count() as calls:
                    ops[server][op](0)
                trips[server][op] = len(calls)
        for i in range(reps):
            sampled = [
                s
                for s in SERVERS
                if s not in AUTHENTICATING or (i % every == 0 and i // every < auth_reps)
            ]
            for op in OPERATIONS:
                for server in sampled:
                    started = time.perf_counter()
                    ops[server][op](i + 1)
                    samples[server][op].append(time.perf_counter() - started)

    med = {s: {o: statistics.median(samples[s][o]) for o in OPERATIONS} for s in SERVERS}
    print("\n2. LATENCY of ungated calls, plain MlflowClient as alice (median)")
    head = f"  {'call':<{W}}{'trips':>6}" + "".join(f"{s:>13}" for s in SERVERS)
    rule = "  " + "-" * (len(head) - 2)
    print(head)
    print(rule)
    for op in OPERATIONS:
        counts = {trips[s][op] for s in SERVERS}
        count = "/".join(str(trips[s][op]) for s in SERVERS) if len(counts) > 1 else str(*counts)
        cells = "".join(f"{med[s][op] * 1000:>10.1f} ms" for s in SERVERS)
        print(f"  {LABELS[op]:<{W}}{count:>6}{cells}")
    print(rule)
    samples_row = "".join(f"{len(samples[s][OPERATIONS[0]]):>13}" for s in SERVERS)
    print(f"  {'samples per call':<{W}}{'':>6}{samples_row}")

    print("\n   ratios (and differences) of the medians")
    head = f"  {'call':<{W}}" + "".join(f"{f'{a} / {b}':>26}" for a, b in RATIOS)
    print(head)
    print("  " + "-" * (len(head) - 2))
    for op in OPERATIONS:
        cells = "".join(
            f"{med[a][op] / med[b][op]:>14.2f}x ({(med[a][op] - med[b][op]) * 1000:+5.1f} ms)"
            for a, b in RATIOS
        )
        print(f"  {LABELS[op]:<{W}}{cells}")
    print(
        "  trips: requests per call, the same on every server. approvals / basic-auth and\n"
        "  appr-noauth / plain are the gate's cost (with and without basic-auth around it);\n"
        "  basic-auth / plain is authentication's. The approvals app records every write it lets\n"
        "  through as an audit event (one artifact write) before MLflow's handler runs."
    )


# ----------------------------------------------------------------------------- main --
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=60, help="latency rounds (default 60)")
    parser.add_argument(
        "--auth-reps",
        type=int,
        default=6,
        help="of those, rounds that also time the two basic-auth servers (default 6)",
    )
    parser.add_argument("--cycles", type=int, default=2, help="timed cycles (default 2)")
    args = parser.parse_args(argv)
    if min(args.reps, args.auth_reps, args.cycles) < 1 or args.auth_reps > args.reps:
        parser.error("--reps, --auth-reps and --cycles must be at least 1, --auth-reps <= --reps")

    quiet_process()
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)

    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="mlflow-approvals-bench-server-"))
    rt = RoundTripCounter()
    rt.install()  # in place for the whole run, so timed and counted calls take the same path
    try:
        print("mlflow-approvals benchmark: the approvals server against plain and basic-auth")
        print(f"  date         {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
        print(f"  machine      {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}")
        print(f"  python       {platform.python_version()}   mlflow {mlflow.__version__}")
        with four_servers(root) as servers:
            for name in SERVERS:
                server = servers[name]
                print(f"  {name:<12} {server.uri}  (ready after {server.ready_after:.1f} s)")
            print("  every server: sqlite backend, 1 worker, artifacts proxied, started together")
            models = prepare(servers, args.cycles)
            part_cycle(rt, servers, models, args.cycles)
            part_latency(rt, servers, models, args.reps, args.auth_reps)
    finally:
        rt.uninstall()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n(whole run {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
