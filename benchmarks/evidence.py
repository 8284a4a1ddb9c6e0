"""How long collecting a model version's evidence (``mlflow_approvals.evidence.collect``) takes.

Usage::

    .venv/bin/python benchmarks/evidence.py [--no-server] [--server-small-files N] [--reps N]

1. Local. A model folder in a temporary directory holds one file of 1 MB, 10 MB, 100 MB or
   1 GB (1 MB = 10^6 bytes; one random 1 MiB block repeated: SHA-256 costs the same for any
   bytes), or 1,000 files of 1 KB in 10 sub-folders. ``collect`` over
   ``ArtifactFiles.from_uri(folder)`` reads each file in place in 1 MiB chunks. Timed against the
   floor: ``hashlib.sha256`` over the same file read the same way, without listing or
   canonical JSON. The files were just written, so they are read from the page cache: this is
   the hashing cost, not the disk's (a cold read adds the disk's own throughput).
2. Through a real ``mlflow server`` (started on a free loopback port, sqlite backend, artifacts
   proxied to a local ``--artifacts-destination``). A version created from ``runs:/<run>/model``
   whose model folder holds one 100 MB file, and one holding ``--server-small-files`` files of
   1 KB (default 1,000; 0 skips it). ``collect`` over ``ArtifactFiles.from_uri(download URI,
   server URI)`` downloads each file alone into a temporary folder, hashes it and deletes it;
   every HTTP request is counted. Then the same versions in process, as the approvals server
   would read them: ``server_model_files`` with this process set up like a server worker (the
   server's backend store and ``--artifacts-destination``), which reads the files in place.

Best of ``--reps`` (default 3; 2 for 1 GB). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

MB = 1_000_000
BLOCK = os.urandom(1 << 20)


def quiet() -> None:
    warnings.simplefilter("ignore")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no run links
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow  # noqa: F401  (it sets its own loggers' levels when imported)

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)


def write_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(BLOCK[: min(left, len(BLOCK))])
            left -= len(BLOCK)


def write_small_files(folder: Path, count: int, size: int = 1000) -> None:
    for i in range(count):
        path = folder / f"part-{i % 10}" / f"file-{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(BLOCK[i : i + size])


def best(fn: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def floor_hash(folder: Path) -> None:
    """hashlib over every file, read in 1 MiB chunks: what collect cannot go below."""
    from mlflow_approvals.evidence import CHUNK

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)


def collect_local(folder: Path) -> Any:
    from mlflow_approvals.evidence import ArtifactFiles, collect

    return collect(ArtifactFiles.from_uri(str(folder)), "runs:/bench/model", "bench")


# -- 1. local --------------------------------------------------------------------------------
def bench_local(reps: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="evidence-bench-") as tmp:
        cases: list[tuple[str, int, int]] = [
            ("1 MB, 1 file", 1 * MB, 1),
            ("10 MB, 1 file", 10 * MB, 1),
            ("100 MB, 1 file", 100 * MB, 1),
            ("1 GB, 1 file", 1000 * MB, 1),
            ("1 MB, 1,000 files of 1 KB", 1000 * 1000, 1000),
        ]
        for label, size, count in cases:
            folder = Path(tmp) / f"model-{size}-{count}"
            if count == 1:
                write_file(folder / "weights.bin", size)
            else:
                write_small_files(folder, count)
            (folder / "MLmodel").write_text("artifact_path: model\n")  # a real model has one
            n = reps if size < 1000 * MB else max(1, min(reps, 2))
            collect_local(folder)  # warm: imports, page cache
            rows.append(
                {
                    "label": label,
                    "bytes": size,
                    "files": count + 1,
                    "collect_s": best(lambda f=folder: collect_local(f), n),
                    "floor_s": best(lambda f=folder: floor_hash(f), n),
                }
            )
            for p in sorted(folder.rglob("*"), reverse=True):  # free the disk as we go
                p.unlink() if p.is_file() else p.rmdir()
    return rows


# -- 2. through a real server ------------------------------------------------------------------
def register_folder(uri: str, folder: Path) -> tuple[str, str]:
    """A version created from runs:/<run>/model holding ``folder``; returns (download URI, name)."""
    import uuid

    from mlflow import MlflowClient

    client = MlflowClient(uri, uri)
    name = f"evidence-bench-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(name)
    exp = client.get_experiment_by_name("evidence-bench")
    exp_id = exp.experiment_id if exp else client.create_experiment("evidence-bench")
    run_id = client.create_run(exp_id).info.run_id
    client.log_artifacts(run_id, str(folder), "model")
    client.set_terminated(run_id)
    mv = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
    return client.get_model_version_download_uri(name, mv.version), name


def collect_remote(download: str, uri: str) -> Any:
    from mlflow_approvals.evidence import ArtifactFiles, collect

    return collect(ArtifactFiles.from_uri(download, uri), download, None)


def collect_in_process(download: str) -> Any:
    from mlflow_approvals.evidence import collect
    from mlflow_approvals.server.sink import server_model_files

    return collect(server_model_files(download), download, None)


def act_as_worker(backend_uri: str, destination: Path) -> None:
    """Set the variables `mlflow server` exports to its workers, in this process."""
    import mlflow.server  # before the variables: it decides at import whether it is a server

    os.environ.update(
        {
            mlflow.server.BACKEND_STORE_URI_ENV_VAR: backend_uri,
            mlflow.server.ARTIFACT_ROOT_ENV_VAR: "mlflow-artifacts:/",
            mlflow.server.ARTIFACTS_DESTINATION_ENV_VAR: str(destination),
            mlflow.server.SERVE_ARTIFACTS_ENV_VAR: "true",
        }
    )


def bench_server(reps: int, small: int) -> list[dict[str, Any]]:
    from mlflow_approvals.testing import RoundTripCounter, mlflow_server

    rows = []
    with tempfile.TemporaryDirectory(prefix="evidence-bench-") as tmp, mlflow_server() as server:
        cases = [("100 MB, 1 file", 100 * MB, 1)]
        if small:
            cases.append((f"{small * 1000 // MB} MB, {small:,} files of 1 KB", small * 1000, small))
        versions = []
        for label, size, count in cases:
            folder = Path(tmp) / f"up-{count}"
            if count == 1:
                write_file(folder / "weights.bin", size)
            else:
                write_small_files(folder, count)
            (folder / "MLmodel").write_text("artifact_path: model\n")
            t0 = time.perf_counter()
            download, _ = register_folder(server.uri, folder)
            upload = time.perf_counter() - t0
            with RoundTripCounter().count() as calls:
                evidence = collect_remote(download, server.uri)
            kinds: dict[str, int] = {}
            for c in calls:
                kind = "file GET" if "/mlflow-artifacts/artifacts/" in c.path else c.path
                kind = "list" if c.path.endswith("/mlflow-artifacts/artifacts") else kind
                kinds[kind] = kinds.get(kind, 0) + 1
            rows.append(
                {
                    "label": label,
                    "bytes": size,
                    "files": count + 1,
                    "download": download,
                    "upload_s": upload,
                    "http_s": best(lambda d=download: collect_remote(d, server.uri), reps),
                    "requests": len(calls),
                    "kinds": kinds,
                }
            )
            versions.append((download, evidence.digest))
        act_as_worker(server.backend_store_uri, server.root / "artifacts")
        for row, (download, digest) in zip(rows, versions, strict=True):
            assert collect_in_process(download).digest == digest  # the same bytes, in place
            row["in_process_s"] = best(lambda d=download: collect_in_process(d), reps)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-server", action="store_true", help="skip the server part")
    parser.add_argument("--server-small-files", type=int, default=1000, metavar="N")
    args = parser.parse_args()
    quiet()

    print("collect() on a local folder (read in place, page cache warm):")
    print(f"  {'model':<28}{'collect':>11}{'MB/s':>9}{'hashlib floor':>15}{'overhead':>10}")
    local = bench_local(args.reps)
    for r in local:
        mbps = r["bytes"] / MB / r["collect_s"]
        print(
            f"  {r['label']:<28}{r['collect_s'] * 1e3:>8.1f} ms{mbps:>9.0f}"
            f"{r['floor_s'] * 1e3:>12.1f} ms{r['collect_s'] / r['floor_s']:>9.2f}x"
        )
    big = [r for r in local if r["files"] == 2]
    per_mb = (big[-1]["collect_s"] - big[0]["collect_s"]) / (
        (big[-1]["bytes"] - big[0]["bytes"]) / MB
    )
    many = next(r for r in local if r["files"] > 2)
    per_file = (many["collect_s"] - big[0]["collect_s"]) / (many["files"] - big[0]["files"])
    print(
        f"  cost ~ {per_mb * 1e3:.2f} ms per MB (1 MB -> 1 GB slope, {1 / per_mb:.0f} MB/s) "
        f"+ {per_file * 1e6:.0f} us per file (1,000 x 1 KB against 1 x 1 MB)"
    )
    if args.no_server:
        return

    print("through a real mlflow server (proxied artifacts, loopback):")
    for r in bench_server(args.reps, args.server_small_files):
        mb = r["bytes"] / MB
        print(f"  {r['label']}  download URI {r['download']}")
        print(
            f"    over HTTP (from_uri + collect): {r['http_s']:.2f} s "
            f"({mb / r['http_s']:.1f} MB/s, {r['http_s'] / r['files'] * 1e3:.1f} ms/file), "
            f"{r['requests']} requests {dict(sorted(r['kinds'].items()))}"
        )
        print(
            f"    in process (server_model_files + collect): {r['in_process_s'] * 1e3:.0f} ms "
            f"({mb / r['in_process_s']:.1f} MB/s, "
            f"{r['in_process_s'] / r['files'] * 1e6:.0f} us/file); "
            f"upload for set-up {r['upload_s']:.1f} s"
        )


if __name__ == "__main__":
    main()
