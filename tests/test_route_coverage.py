"""The server gate's route table against the installed MLflow (pure: no server is started).

In the style of MLflow's ``tests/server/auth/test_authorization_coverage.py``: a new MLflow route
that can change registry state fails here, named, until it is given a door or a reason.
"""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mlflow_approvals.server import routes
from mlflow_approvals.server.routes import ALLOWED, DOORS, RouteTable

PREFIX_VAR = "_MLFLOW_STATIC_PREFIX"
TRANSITION = "/mlflow/model-versions/transition-stage"
UPLOAD = "/mlflow-artifacts/artifacts/1/0123abcd/artifacts/approvals/audit/event.json"


@pytest.fixture(scope="module")
def table() -> Iterator[RouteTable]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(PREFIX_VAR, raising=False)
        yield routes.route_table()


def _describe(table: RouteTable, names: list[str]) -> str:
    return "\n".join(
        f"{method:6} {path}  ->  {name}"
        for (path, method), name in sorted(table.items(), key=lambda kv: (kv[1], kv[0]))
        if name in names
    )


def _concrete(path: str) -> str:
    """A request path that the route pattern ``path`` (Werkzeug or Starlette syntax) serves."""
    path = re.sub(r"\{\w+:path\}|<path:\w+>", "a/b.txt", path)
    return re.sub(r"\{\w+\}|<(?:\w+:)?\w+>", "x1", path)


def test_every_registry_changing_route_has_a_door_or_a_reason(table: RouteTable) -> None:
    """Pins: every registry-changing route of the installed MLflow is in DOORS or ALLOWED."""
    missing = routes.uncovered(table)
    assert not missing, (
        "Routes that can change model-registry state have no door and no reason. Add them to "
        "DOORS (the gate refuses or audits them) or ALLOWED (with why not) in "
        "mlflow_approvals/server/routes.py:\n" + _describe(table, missing)
    )


def test_no_door_or_allowance_is_stale(table: RouteTable) -> None:
    """Pins: every DOORS and ALLOWED entry still names a route MLflow serves."""
    stale = routes.stale_entries(table)
    assert not stale, f"Entries that match no MLflow route (renamed or removed?): {stale}"


def test_doors_and_allowances_are_consistent() -> None:
    """Pins: no name is both a door and allowed, every Door is used, every reason is one line."""
    assert not set(DOORS) & set(ALLOWED)
    assert set(DOORS.values()) == set(typing.get_args(routes.Door))
    assert all(reason.strip() and "\n" not in reason for reason in ALLOWED.values())


def test_removing_a_door_is_caught(table: RouteTable, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins: the coverage check fails when a door is dropped (the guard can fail)."""
    monkeypatch.delitem(DOORS, "SetRegisteredModelAlias")
    assert routes.uncovered(table) == ["SetRegisteredModelAlias"]


def test_a_stale_entry_is_caught(table: RouteTable, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins: an entry naming no route is reported by stale_entries."""
    monkeypatch.setitem(ALLOWED, "PromoteModelVersion", "gone from MLflow")
    assert routes.stale_entries(table) == ["PromoteModelVersion"]


def test_a_new_registry_route_is_reported_as_uncovered() -> None:
    """Pins: routes MLflow might add (a registry write, a prompt handler) show up in uncovered."""
    from mlflow.server.handlers import get_endpoints

    class PromoteModelVersion:
        """Stands in for a protobuf request class of a future registry endpoint."""

    def _set_prompt_alias() -> None:
        """Stands in for a plain Flask view that writes prompt aliases."""

    def with_new_routes(get_handler: Callable[[Any], Any]) -> list[tuple[str, Any, list[str]]]:
        return [
            *get_endpoints(get_handler),
            ("/api/2.0/mlflow/model-versions/promote", get_handler(PromoteModelVersion), ["POST"]),
            ("/ajax-api/3.0/mlflow/prompts/alias", _set_prompt_alias, ["POST"]),
            ("/ajax-api/3.0/mlflow/prompts/alias", _set_prompt_alias, ["GET"]),
        ]

    table = routes.route_table(with_new_routes)
    assert table[("/api/2.0/mlflow/model-versions/promote", "POST")] == "PromoteModelVersion"
    assert routes.uncovered(table) == ["PromoteModelVersion", "handler:_set_prompt_alias"]


def test_registry_service_writes_are_watched_whatever_their_path() -> None:
    """Pins: a ModelRegistryService/WebhookService/artifacts write counts even on a plain path."""
    from mlflow.protos.mlflow_artifacts_pb2 import DeleteArtifact
    from mlflow.protos.model_registry_pb2 import GetLatestVersions
    from mlflow.protos.webhooks_pb2 import TestWebhook

    def plain_paths(get_handler: Callable[[Any], Any]) -> list[tuple[str, Any, list[str]]]:
        classes = (GetLatestVersions, TestWebhook, DeleteArtifact)
        return [(f"/api/2.0/mlflow/x{i}", get_handler(c), ["POST"]) for i, c in enumerate(classes)]

    table = routes.route_table(plain_paths, extra=[])
    expected = {"GetLatestVersions", "TestWebhook", "artifacts.DeleteArtifact"}
    assert set(routes.registry_changing(table).values()) == expected


@pytest.mark.parametrize("api", ["/api/2.0", "/ajax-api/2.0"])
def test_transition_stage_door_on_rest_and_ajax_paths(table: RouteTable, api: str) -> None:
    """Pins: the transition-stage door is found on both the REST and the UI (ajax) path."""
    expected = ("TransitionModelVersionStage", "transition_stage")
    assert routes.door_for(api + TRANSITION, "POST", table) == expected
    assert routes.door_for(api + TRANSITION, "post", table) == expected
    assert routes.door_for(api.replace("/", "//") + TRANSITION, "POST", table) == expected


def test_doors_follow_the_static_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins: under --static-prefix the doors move with MLflow's routes; native artifacts don't."""
    monkeypatch.setenv(PREFIX_VAR, "/mlflow-ui/")  # MLflow strips the trailing slash
    table = routes.route_table()
    transition = ("TransitionModelVersionStage", "transition_stage")
    assert routes.door_for("/mlflow-ui/api/2.0" + TRANSITION, "POST", table) == transition
    assert routes.door_for("/mlflow-ui/ajax-api/2.0" + TRANSITION, "POST", table) == transition
    assert routes.door_for("/api/2.0" + TRANSITION, "POST", table) is None  # Flask: 404
    upload = "/mlflow-ui/ajax-api/2.0/mlflow/upload-artifact"
    assert routes.door_for(upload, "POST", table) == (
        "handler:serve_upload_artifact",
        "write_artifacts",
    )
    # MLflow 3.17 mounts the native artifact router without the prefix: still reachable.
    assert routes.door_for("/api/2.0" + UPLOAD, "PUT", table) == (
        "native:upload_artifact",
        "write_artifacts",
    )
    assert routes.door_for("/mlflow-ui/api/2.0" + UPLOAD, "PUT", table) == (
        "artifacts.UploadArtifact",
        "write_artifacts",
    )
    assert routes.uncovered(table) == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/2.0/mlflow/model-versions/get"),
        ("GET", "/ajax-api/2.0/mlflow/model-versions/search"),
        ("GET", "/api/2.0/mlflow/registered-models/search"),
        ("GET", "/api/2.0/mlflow/registered-models/alias"),  # POST here sets an alias
        ("POST", "/api/2.0/mlflow/registered-models/get-latest-versions"),
        ("GET", "/api/2.0" + UPLOAD),
        ("POST", "/graphql"),
        ("POST", "/api/2.0/mlflow/runs/create"),
    ],
)
def test_reads_and_unrelated_writes_have_no_door(table: RouteTable, method: str, path: str) -> None:
    """Pins: read routes (get, search, alias lookup, downloads) and non-registry writes pass."""
    assert routes.door_for(path, method, table) is None


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("POST", "/api/2.0/mlflow/registered-models/alias", "SetRegisteredModelAlias"),
        ("DELETE", "/api/2.0/mlflow/model-versions/delete-tag", "DeleteModelVersionTag"),
        ("PUT", "/ajax-api/2.0" + UPLOAD, "artifacts.UploadArtifact"),
        ("DELETE", "/api/2.0" + UPLOAD, "artifacts.DeleteArtifact"),
        (
            "POST",
            "/api/2.0/mlflow-artifacts/mpu/complete/1/r/artifacts/m",
            "artifacts.CompleteMultipartUpload",
        ),
        ("POST", "/ajax-api/3.0/jobs/", "native:submit_job"),
    ],
)
def test_writes_map_to_their_door(table: RouteTable, method: str, path: str, name: str) -> None:
    """Pins: exact and parameterised (artifact path) write routes resolve to their door."""
    assert routes.door_for(path, method, table) == (name, DOORS[name])


def test_table_holds_every_flask_rule_of_mlflow(table: RouteTable) -> None:
    """Pins: route_table misses no route of MLflow's Flask app (get_endpoints and @app.route)."""
    import mlflow.server

    rules = list(mlflow.server.app.url_map.iter_rules())
    imported = next(r.rule for r in rules if r.endpoint == "health").removesuffix("/health")
    missing = [
        f"{method} {rule.rule}"
        for rule in rules
        if getattr(mlflow.server.app.view_functions[rule.endpoint], "__module__", "")
        in ("mlflow.server", "mlflow.server.handlers")
        for method in sorted(rule.methods or ())
        if method not in ("HEAD", "OPTIONS")
        and (rule.rule.removeprefix(imported), method) not in table
    ]
    assert not missing


@pytest.mark.parametrize("prefix", ["", "/mlflow-ui"])
def test_native_route_keys_are_what_fastapi_serves(
    monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    """Pins: the native routers and their prefixes mirror MLflow's create_fastapi_app."""
    monkeypatch.setenv(PREFIX_VAR, prefix)
    import mlflow.server.fastapi_app as fastapi_app
    from starlette.routing import Match, Mount

    mirrored = {router for _, router, _ in routes._NATIVE_ROUTERS}
    assert {n for n in vars(fastapi_app) if n.endswith("_router")} == mirrored
    app = fastapi_app.create_fastapi_app()
    native = [r for r in app.routes if not isinstance(r, Mount)]
    keys = [(p, m) for (p, m), n in routes.route_table().items() if n.startswith("native:")]
    assert keys
    unserved = []
    for path, method in keys:
        scope: dict[str, Any] = {"type": "http", "path": _concrete(path), "method": method}
        scope |= {"root_path": "", "headers": [], "query_string": b""}
        if not any(r.matches(scope)[0] == Match.FULL for r in native):
            unserved.append(f"{method} {path}")
    assert not unserved


def test_graphql_mutations_are_the_reviewed_read_only_ones() -> None:
    """Pins: /graphql stays allowed only while its mutations are the reviewed read-only set."""
    from mlflow.server.graphql.graphql_schema_extensions import schema

    mutations = set(schema.graphql_schema.mutation_type.fields)
    changed = sorted(mutations ^ routes.GRAPHQL_MUTATIONS_REVIEWED)
    assert not changed, (
        "MLflow's GraphQL mutations changed: review them, then door /graphql or update "
        f"GRAPHQL_MUTATIONS_REVIEWED: {changed}"
    )


def test_importing_routes_imports_no_mlflow() -> None:
    """Pins: the project rule "nothing at import time" for the route module."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('routes', {routes.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'flask')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
