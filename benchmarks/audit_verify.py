"""How long verifying an audit log takes (10,000 events by default), and its round trips.

Usage::

    .venv/bin/python benchmarks/audit_verify.py [--events N] [--tracking-uri URI] [--no-server]

1. Verify. On a local ``sqlite:///`` registry in a temporary folder, a model with 200 versions
   gets ``--events`` events (default 10,000): on each version, requests of five events each
   (request, three sign-offs, the apply), with the parents and the fact tags a real run writes
   (every event anchored in its fact, every event naming the version's anchored hashes it
   would have seen). Going through ``ApprovalClient`` would spend minutes on 10,000 tag writes,
   so the event files are written straight into the audit run's artifact folder and the fact
   tags inserted into the registry's tag table in one transaction; what is timed is the read
   side. Timed: ``verify_events`` on the bytes (the pure checks), and
   ``ApprovalClient.verify_audit`` end to end (the registry search, copying the files out of the
   artifact store, the checks). Best of three.
2. Round trips. Through a real ``mlflow server`` (started on a free loopback port unless
   ``--tracking-uri`` names one), one full two-level cycle under the test policy (alice
   requests Production; bob and carol sign level 1; dave signs level 2, which applies it) is
   counted by wrapping ``requests.adapters.HTTPAdapter.send``. Requests are classified by URL:
   artifact uploads and downloads (``/mlflow-artifacts/``) and experiment/run calls are the
   audit log's; model-version and registered-model calls are the registry's. Counted twice:
   cold (four new clients, first events of a new model) and warm (the same clients, the next
   version). ``verify_audit`` of that model is counted too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import tempfile
import time
import uuid
import warnings
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from mlflow_approvals.testing import (
    EXAMPLE_POLICY,
    RoundTripCounter,
    mlflow_server,
    register_versions,
)

SERVER_VERSIONS = 200  # the versions the --server-events spread over
VERSIONS = 200  # the default; --versions sets it (a version's history grows its events' parents)
SIGNERS = (("bob", "data-scientist", 1), ("carol", "ml-engineer", 1), ("dave", "business-owner", 2))


def quiet() -> None:
    warnings.simplefilter("ignore")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no run links
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)


# -- 1. verifying 10,000 events ----------------------------------------------------------------
class LogWriter:
    """Writes events of one model straight into its audit run's artifact folder."""

    def __init__(self, name: str, root: Path, policy_hash: str) -> None:
        self.name, self.root, self.policy_hash = name, root, policy_hash
        self.clock = datetime(2025, 1, 1, tzinfo=timezone.utc)
        self.written = 0

    def emit(
        self, version: str, rid: str, parents: list[str], kind: str, actor: str, **kw: Any
    ) -> tuple[str, datetime]:
        """Write one event as the client would; return its hash and time."""
        from mlflow_approvals.audit import canonical, event_hash, event_path, make_event

        self.clock += timedelta(milliseconds=7)
        event = make_event(
            type=kind,
            name=self.name,
            version=version,
            actor=actor,
            request_id=rid,
            policy_hash=self.policy_hash,
            rule="production",
            run_id=None,
            source="s3://bench/model",
            parents=parents,
            time=self.clock,
            **kw,
        )
        digest = event_hash(event)
        path = self.root / event_path(event, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(canonical(event))
        self.written += 1
        return digest, self.clock


def build_log(
    uri: str,
    db: Path,
    events: int,
    tracking: str | None = None,
    artifacts: Path | None = None,
    versions: int | None = None,
) -> tuple[str, int]:
    """Register a model and write ``events`` audit events plus their anchors; return its name."""
    from mlflow import MlflowClient

    from mlflow_approvals import tags as T
    from mlflow_approvals.audit import AuditStore, deterministic_id
    from mlflow_approvals.lifecycle import Ending, RequestRecord, Requirement, SignOff, Target
    from mlflow_approvals.policy import load_policy

    client = MlflowClient(tracking or uri, tracking or uri)
    name = f"fraud-bench-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(name)
    versions = versions or VERSIONS
    for _ in range(versions):
        client.create_model_version(name, "s3://bench/model", run_id=None)
    run_id = AuditStore(client).run_ids(name)[0]
    artifact_uri = client.get_run(run_id).info.artifact_uri
    if artifacts is not None:  # a server's proxied artifacts: write under its destination
        root = artifacts / artifact_uri.split("mlflow-artifacts:/", 1)[1].lstrip("/")
    else:
        root = Path(artifact_uri.removeprefix("file://"))
    policy_hash = load_policy(EXAMPLE_POLICY).content_hash
    log = LogWriter(name, root, policy_hash)
    levels = (
        (Requirement("data-scientist", 1), Requirement("ml-engineer", 1)),
        (Requirement("business-owner", 1),),
    )
    target = Target("stage", "Production", "set")
    stages = {"before": {"stage": "None"}, "after": {"stage": "Production"}}
    tags: list[tuple[str, str, str, int]] = []
    anchored: dict[str, list[str]] = {}  # version -> the hashes its fact tags hold
    for i in range(max(1, events // 5)):
        version = str(i % versions + 1)
        seen = anchored.setdefault(version, [])
        rid = uuid.uuid4().hex[:12]
        change = {k: {**v, "version": version} for k, v in stages.items()}
        h, t = log.emit(version, rid, seen, "request.created", "alice", comment="go", **change)
        record = RequestRecord(
            rid,
            name,
            version,
            target,
            "alice",
            t,
            "go",
            "production",
            levels,
            True,
            None,
            policy_hash,
            h,
        )
        rows = [(T.request_key(rid), T.encode_request(record))]
        seen.append(h)
        for actor, role, level in SIGNERS:
            extra = {"role": role, "level": level}
            h, t = log.emit(version, rid, seen, "signoff.approved", actor, extra=extra)
            signoff = SignOff(actor, "approve", role, level, None, t, actor, h)
            rows.append((T.signoff_key(rid, actor), T.encode_signoff(signoff)))
            seen.append(h)
        applied = deterministic_id(rid, "applied")
        h, t = log.emit(
            version, rid, seen, "stage.transitioned", "dave", event_id=applied, **change
        )
        rows.append((T.applied_key(rid), T.encode_ending(Ending("dave", t, None, h))))
        seen.append(h)
        tags += [(k, v, name, int(version)) for k, v in rows]
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO model_version_tags (key, value, name, version) VALUES (?, ?, ?, ?)",
            tags,
        )
    return name, log.written


def bench_verify(events: int) -> dict[str, Any]:
    from mlflow_approvals import ApprovalClient
    from mlflow_approvals.audit import canonical
    from mlflow_approvals.auditlog import read_log
    from mlflow_approvals.verify import verify_events

    with tempfile.TemporaryDirectory(prefix="audit-verify-bench-") as tmp:
        db = Path(tmp) / "registry.db"
        uri = f"sqlite:///{db}"
        t0 = time.perf_counter()
        name, written = build_log(uri, db, events)
        built = time.perf_counter() - t0
        client = ApprovalClient(uri, uri, policy=EXAMPLE_POLICY, actor="auditor")
        log = read_log(client.engine, name)
        files, anchors, live = log.files, log.anchors, log.live_versions
        pure, full, canon = [], [], []
        for _ in range(3):
            t0 = time.process_time()
            report = verify_events(files, anchors, live_versions=live)
            pure.append(time.process_time() - t0)
            t0 = time.process_time()
            for _, raw in files:  # what canonicalising every event (the check before) costs
                canonical(json.loads(raw))
            canon.append(time.process_time() - t0)
            t0 = time.perf_counter()
            end_to_end = client.verify_audit(name)
            full.append(time.perf_counter() - t0)
        return {
            "events": written,
            "anchors": len(anchors),
            "build_s": built,
            "pure_s": min(pure),
            "canon_s": min(canon),
            "full_s": min(full),
            "summary": end_to_end.summary,
            "ok": report.ok and end_to_end.ok,
        }


# -- 2. round trips through a real server ------------------------------------------------------
def kind_of(path: str) -> str:
    """``audit`` (artifacts, experiments, runs), ``registry`` (models, versions) or ``other``."""
    if "/mlflow-artifacts/" in path or "/mlflow/experiments/" in path or "/mlflow/runs/" in path:
        return "audit"
    if "/registered-models/" in path or "/model-versions/" in path:
        return "registry"
    return "other"


def register(uri: str, count: int) -> tuple[str, list[str]]:
    name = f"fraud-bench-{uuid.uuid4().hex[:6]}"
    return name, register_versions(uri, name, count)


def bench_round_trips(uri: str) -> dict[str, Counter[str]]:
    from mlflow_approvals import ApprovalClient

    name, (v1, v2) = register(uri, 2)
    rec = RoundTripCounter()
    results: dict[str, Counter[str]] = {}
    clients = {
        a: ApprovalClient(uri, uri, policy=EXAMPLE_POLICY, actor=a)
        for a in ("alice", "bob", "carol", "dave")
    }
    for label, version in (("cold", v1), ("warm", v2)):
        with rec.count() as calls:
            clients["alice"].request_transition(name, version, "Production")
            for actor in ("bob", "carol", "dave"):
                clients[actor].approve(name, version)
        assert clients["alice"].get_request(name, version).status.value == "applied"
        results[label] = Counter(kind_of(path) for _, _, path in calls)
    auditor = ApprovalClient(uri, uri, policy=EXAMPLE_POLICY, actor="auditor")
    with rec.count() as calls:
        report = auditor.verify_audit(name)
    assert report.ok, report
    results["verify"] = Counter(kind_of(path) for _, _, path in calls)
    results["verify"]["events"] = report.total
    return results


def bench_sealed(server: Any, events: int) -> dict[str, Any]:
    """Verify ``events`` events through ``server`` before and after sealing: requests counted."""
    from mlflow_approvals import ApprovalClient

    uri, db = server.uri, Path(server.backend_store_uri.removeprefix("sqlite:///"))
    name, written = build_log(
        uri, db, events, tracking=uri, artifacts=server.root / "artifacts", versions=SERVER_VERSIONS
    )
    auditor = ApprovalClient(uri, uri, policy=EXAMPLE_POLICY, actor="auditor")
    rec = RoundTripCounter()
    out: dict[str, Any] = {"events": written}
    for label in ("loose", "seal", "sealed"):
        t0 = time.perf_counter()
        with rec.count() as calls:
            if label == "seal":
                out["segments"] = len(auditor.audit.seal(name))
            else:
                report = auditor.verify_audit(name)
                assert report.ok and report.total == written, report.summary
        out[label] = (len(calls), time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--tracking-uri", help="an existing mlflow server (else one is started)")
    parser.add_argument("--no-server", action="store_true", help="skip the round-trip count")
    parser.add_argument(
        "--server-events", type=int, default=2_000, help="events verified through a server"
    )
    parser.add_argument(
        "--versions",
        type=int,
        default=None,
        help="versions the events spread over (default: 200, or one per 50 events if more), so "
        "that a version's history, and the parents each event names, stays the same size",
    )
    args = parser.parse_args()
    quiet()
    global VERSIONS
    VERSIONS = args.versions or max(VERSIONS, args.events // 50)

    v = bench_verify(args.events)
    print(
        f"verify: {v['events']:,} events on {VERSIONS} versions, {v['anchors']:,} anchors "
        f"(built in {v['build_s']:.1f} s)"
    )
    print(
        f"  checks only (verify_events):        {v['pure_s']:6.2f} s  "
        f"({v['pure_s'] / v['events'] * 1e6:.0f} us/event)"
    )
    print(
        f"  canonicalising every event (the check before, for comparison): "
        f"{v['canon_s']:6.2f} s  ({v['canon_s'] / v['events'] * 1e6:.0f} us/event); "
        f"checks now {v['events'] / v['pure_s']:,.0f} events/s, "
        f"{v['pure_s'] / (v['pure_s'] + v['canon_s']):.2f}x the checks with it"
    )
    print(f"  end to end (verify_audit, sqlite):  {v['full_s']:6.2f} s  -> {v['summary']}")
    if not v["ok"]:
        raise SystemExit("the generated log did not verify")
    if args.no_server:
        return

    def report(uri: str) -> None:
        r = bench_round_trips(uri)
        print(f"round trips through a real mlflow server ({uri}):")
        for label in ("cold", "warm"):
            c = r[label]
            total = sum(c.values())
            print(
                f"  one two-level cycle, {label}: {total} requests, audit {c['audit']} "
                f"({c['audit'] / total:.0%}), registry {c['registry']}, other {c['other']}"
            )
        c = r["verify"]
        print(
            f"  verify_audit of that model ({c['events']} events): "
            f"{c['audit'] + c['registry'] + c['other']} requests "
            f"(audit {c['audit']}, registry {c['registry']})"
        )

    if args.tracking_uri:
        report(args.tracking_uri)
    else:
        with mlflow_server() as server:
            report(server.uri)
            s = bench_sealed(server, args.server_events)
            n = s["events"]
            print(
                f"verify through a real mlflow server, {n:,} events on {SERVER_VERSIONS} versions:"
            )
            for label in ("loose", "seal", "sealed"):
                count, took = s[label]
                what = {
                    "loose": "verify, loose files",
                    "seal": f"seal ({s['segments']} segment(s))",
                    "sealed": "verify, sealed",
                }[label]
                print(
                    f"  {what:<24} {count:>7,} requests ({count / n * 100:.2f} per 100 events), "
                    f"{took:6.1f} s"
                )


if __name__ == "__main__":
    main()
