"""Listing pending requests at scale: 100 pending among 100 versions, and among 10,000.

Usage::

    .venv/bin/python benchmarks/listing.py [--versions N] [--pending N] [--reps N]

Two registries are built, each a ``sqlite:///`` database in its own temporary folder:

* ``small``: ``--pending`` models (default 100) named ``fraud-list-<i>``, one version each,
  backed by a run artifact (:func:`~mlflow_approvals.testing.register_versions`), and one
  request for Production filed on each with ``ApprovalClient`` (as alice, under
  ``EXAMPLE_POLICY``), so every version carries a pending request;
* ``large``: a copy of ``small`` to which plain ``MlflowClient.create_model_version`` adds
  versions without artifacts, spread evenly over the same models, until the registry holds
  ``--versions`` (default 10,000). The same requests are pending; the added versions carry two
  ordinary tags each (``team``, ``dataset``) and no approval tags, like most versions of a real
  registry.

Each registry is then served by a real ``mlflow server`` (sqlite backend, one worker,
artifacts proxied, job execution off) and, unless ``--no-approvals-server``, by a real
``mlflow server --app-name approvals`` on its own copy of the database (without
authentication: listing is a read). On each server, and on the database directly:

1. the HTTP round trips of ``ApprovalClient.list_requests()`` and of one plain
   ``MlflowClient.search_model_versions`` with the filter ``list_requests`` sends (the index
   tag equal to ``pending``), counted with :class:`~mlflow_approvals.testing.RoundTripCounter`
   after a warm-up (``ApprovalClient``'s one probe of the server is made then);
2. the median time of each over ``--reps`` interleaved rounds, and their ratio;

and, across the two registries, the ratios large / small of the round trips and of the times.
Every listing is checked to find exactly the ``--pending`` pending requests.
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

DB = "registry.db"
PREFIX = "fraud-list"
W = 30  # width of the first column


# ----------------------------------------------------------------------------- registries --
def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder / DB}"


def build_small(folder: Path, pending: int) -> float:
    """``pending`` models of one version each, each with a pending request; returns seconds."""
    from mlflow_approvals import ApprovalClient

    started = time.perf_counter()
    folder.mkdir(parents=True)
    uri = sqlite_uri(folder)
    alice = ApprovalClient(uri, uri, policy=EXAMPLE_POLICY, actor="alice")
    for i in range(pending):
        name = f"{PREFIX}-{i:04d}"
        (version,) = register_versions(uri, name)
        alice.request_transition(name, version, "Production")
    return time.perf_counter() - started


def grow(folder: Path, models: int, total: int) -> float:
    """Add plain versions (no artifacts, two ordinary tags each) round-robin over the models
    up to ``total``."""
    from mlflow import MlflowClient

    started = time.perf_counter()
    uri = sqlite_uri(folder)
    client = MlflowClient(uri, uri)
    for i in range(total - models):
        name = f"{PREFIX}-{i % models:04d}"
        client.create_model_version(
            name, f"{folder}/no-artifacts/{name}/{i}", tags={"team": "fraud", "dataset": str(i)}
        )
    return time.perf_counter() - started


def count_versions(uri: str) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(uri, uri)
    total, token = 0, None
    while True:
        page = client.search_model_versions(max_results=10_000, page_token=token)
        total += len(page)
        token = page.token
        if not token:
            return total


@contextlib.contextmanager
def servers_for(
    registries: dict[str, Path], root: Path, approvals: bool
) -> Iterator[dict[tuple[str, str], MlflowServer]]:
    """A plain server (and an approvals server) per registry, each on its own copy of the
    registry's folder, all started side by side."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    policy = root / "policy.yaml"
    policy.write_text(yaml.safe_dump(EXAMPLE_POLICY))
    noauth = {
        "MLFLOW_APPROVALS_POLICY": str(policy),
        "MLFLOW_APPROVALS_AUTH": "none",
        "MLFLOW_APPROVALS_ALLOW_ANONYMOUS": "true",
    }
    kinds = {"plain": None, **({"approvals": "approvals"} if approvals else {})}
    managers: dict[tuple[str, str], Any] = {}
    for reg, folder in registries.items():
        for kind, app in kinds.items():
            copy = root / f"{reg}-{kind}"
            shutil.copytree(folder, copy)
            managers[(reg, kind)] = mlflow_server(
                copy,
                backend_store_uri=sqlite_uri(copy),
                app_name=app,
                env=noauth if app else None,
            )
    with started_together(managers) as servers:
        yield servers


# ----------------------------------------------------------------------------- measuring --
def pending_filter() -> str:
    """The filter ``list_requests`` sends: the index tag equal to ``pending``."""
    from mlflow_approvals import tags
    from mlflow_approvals.ports import search_filter, tag_field

    return search_filter({tag_field(tags.INDEX_KEY): tags.INDEX_PENDING})


def measure(
    rt: RoundTripCounter, uri: str, enforcing: bool, pending: int, reps: int
) -> dict[str, Any]:
    """Round trips and median times of ``list_requests()`` and of one plain search."""
    from mlflow import MlflowClient

    from mlflow_approvals import ApprovalClient

    # On the approvals server (no authentication) the caller is "anonymous": claim no name.
    lister = ApprovalClient(uri, uri, policy=EXAMPLE_POLICY, actor=None if enforcing else "alice")
    plain = MlflowClient(uri, uri)
    flt = pending_filter()
    calls: dict[str, Callable[[], Any]] = {
        "list": lambda: lister.list_requests(),
        "search": lambda: plain.search_model_versions(flt),
    }
    for call in calls.values():  # warm-up: the client's probe, connections, caches
        call()
    if lister.enforcing_server != enforcing:
        raise RuntimeError(f"{uri}: ApprovalClient.enforcing_server is {not enforcing}")
    netloc = urlsplit(uri).netloc if uri.startswith("http") else None
    result: dict[str, Any] = {}
    for what, call in calls.items():
        with rt.count() as sent:
            found = call()
        result[f"{what}_trips"] = sum(1 for c in sent if c.host == netloc)
        result[f"{what}_paths"] = sorted({c.path for c in sent if c.host == netloc})
        result[f"{what}_found"] = len(found)
    listed = lister.list_requests()
    if len(listed) != pending or any(str(r.status.value) != "pending" for r in listed):
        raise RuntimeError(f"{uri}: listed {len(listed)} requests, expected {pending} pending")
    samples: dict[str, list[float]] = {what: [] for what in calls}
    for _ in range(reps):
        for what, call in calls.items():
            started = time.perf_counter()
            call()
            samples[what].append(time.perf_counter() - started)
    for what in calls:
        result[f"{what}_ms"] = statistics.median(samples[what]) * 1000
    return result


# ----------------------------------------------------------------------------- output --
def report(results: dict[tuple[str, str], dict[str, Any]], sizes: dict[str, int]) -> None:
    where = {
        "direct": "sqlite:/// directly",
        "plain": "mlflow server",
        "approvals": "approvals app",
    }
    print("\n1. PER REGISTRY: list_requests() against one plain search_model_versions, same filter")
    head = (
        f"  {'registry / through':<{W}}{'versions':>9}{'listed':>8}"
        f"{'trips list':>12}{'trips search':>14}{'list':>11}{'search':>11}{'list/search':>13}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for (reg, kind), r in results.items():
        trips = (
            (f"{r['list_trips']:>12}", f"{r['search_trips']:>14}")
            if kind != "direct"
            else (f"{'-':>12}", f"{'-':>14}")
        )
        print(
            f"  {reg + ' / ' + where[kind]:<{W}}{sizes[reg]:>9,}{r['list_found']:>8}"
            f"{trips[0]}{trips[1]}{r['list_ms']:>8.1f} ms{r['search_ms']:>8.1f} ms"
            f"{r['list_ms'] / r['search_ms']:>12.2f}x"
        )
    print("\n  endpoints of one listing (through a server)")
    for (reg, kind), r in results.items():
        if kind != "direct":
            print(f"  {reg + ' / ' + where[kind]:<{W}}list: {', '.join(r['list_paths'])}")
            print(f"  {'':<{W}}search: {', '.join(r['search_paths'])}")

    factor = sizes["large"] / sizes["small"]
    print(f"\n2. LARGE / SMALL: what {factor:g}x the versions costs")
    head = f"  {'through':<{W}}{'trips list':>12}{'time list':>12}{'time search':>13}"
    print(head)
    print("  " + "-" * (len(head) - 2))
    for kind in dict.fromkeys(k for _, k in results):
        small, large = results[("small", kind)], results[("large", kind)]
        ratio = f"{large['list_trips']} / {small['list_trips']}" if kind != "direct" else "-"
        print(
            f"  {where[kind]:<{W}}{ratio:>12}"
            f"{large['list_ms'] / small['list_ms']:>11.2f}x"
            f"{large['search_ms'] / small['search_ms']:>12.2f}x"
        )


# ----------------------------------------------------------------------------- main --
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=10_000, help="large registry's versions")
    parser.add_argument("--pending", type=int, default=100, help="pending requests (default 100)")
    parser.add_argument("--reps", type=int, default=20, help="timed rounds (default 20)")
    parser.add_argument(
        "--no-approvals-server", action="store_true", help="only the plain mlflow server"
    )
    args = parser.parse_args(argv)
    if args.pending < 1 or args.reps < 1 or args.versions <= args.pending:
        parser.error("--pending and --reps must be at least 1, --versions above --pending")

    quiet_process()
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)

    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="mlflow-approvals-bench-listing-"))
    rt = RoundTripCounter()
    rt.install()  # in place for the whole run, so timed and counted calls take the same path
    try:
        print(
            "mlflow-approvals benchmark: listing pending requests in a small and a large registry"
        )
        print(f"  date      {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
        print(f"  machine   {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}")
        print(f"  python    {platform.python_version()}   mlflow {mlflow.__version__}")
        print(f"  load      {' '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min)")
        registries = {"small": root / "small", "large": root / "large"}
        took = build_small(registries["small"], args.pending)
        print(f"  small     {args.pending} versions, {args.pending} requests filed ({took:.0f} s)")
        shutil.copytree(registries["small"], registries["large"])
        took = grow(registries["large"], args.pending, args.versions)
        print(f"  large     + {args.versions - args.pending:,} plain versions ({took:.0f} s)")
        sizes = {reg: count_versions(sqlite_uri(folder)) for reg, folder in registries.items()}
        if sizes != {"small": args.pending, "large": args.versions}:
            raise RuntimeError(f"the registries hold {sizes} versions")

        results: dict[tuple[str, str], dict[str, Any]] = {}
        for reg, folder in registries.items():
            results[(reg, "direct")] = measure(
                rt, sqlite_uri(folder), False, args.pending, args.reps
            )
        with servers_for(registries, root / "servers", not args.no_approvals_server) as servers:
            for (reg, kind), server in servers.items():
                print(
                    f"  server    {reg} / {kind}: {server.uri} (ready {server.ready_after:.0f} s)"
                )
            print("            each: sqlite backend, 1 worker, artifacts proxied")
            for kind in ("plain", "approvals"):
                for reg in registries:
                    if (reg, kind) in servers:
                        uri = servers[(reg, kind)].uri
                        results[(reg, kind)] = measure(
                            rt, uri, kind == "approvals", args.pending, args.reps
                        )
        order = [(r, k) for k in ("direct", "plain", "approvals") for r in registries]
        report({key: results[key] for key in order if key in results}, sizes)
        print(
            f"\n  median of {args.reps} interleaved rounds each; 'trips' are HTTP requests to the"
            "\n  server, counted after a warm-up (ApprovalClient probes the server once per process"
            "\n  and user, on its first step). On the approvals app list_requests() is one request"
            "\n  to its list endpoint, which runs the same search inside the server."
        )
    finally:
        rt.uninstall()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n(whole run {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
