"""The route table of the ``approvals`` server gate: which HTTP writes are doors.

The gate must refuse every direct HTTP write that could promote a gated model version or forge
approval state. This module answers the one question the gate asks of each request, "which
door is this?", from data alone: it derives MLflow's own route list, names every route, and maps
the dangerous ones to a :data:`Door`. It performs no I/O and imports nothing from MLflow when the
module is imported; MLflow is imported only inside the functions that read its routes.

Route names (the values of a route table, and the keys of :data:`DOORS` and :data:`ALLOWED`)
---------------------------------------------------------------------------------------------
* A protobuf route is named by its request message's full name without the ``mlflow.`` package:
  ``TransitionModelVersionStage``, ``SetRegisteredModelAlias``, ... The artifacts service lives
  in package ``mlflow.artifacts``, so its requests are ``artifacts.UploadArtifact`` and so on.
  (Bare class names are not unique: ``ListArtifacts`` is both ``mlflow.ListArtifacts`` and
  ``mlflow.artifacts.ListArtifacts``.)
* A Flask route served by a plain view function is ``handler:<function name>``, for example
  ``handler:_graphql`` or ``handler:serve_upload_artifact``.
* A native FastAPI route is ``native:<route name>``, for example ``native:upload_artifact``.

Where the routes come from
--------------------------
1. ``mlflow.server.handlers.get_endpoints(get_handler)``, the list MLflow registers on its Flask
   app and basic-auth keys its validators by. We pass a ``get_handler`` that returns a marker
   carrying the request class, so each protobuf route is named by its class, with no hard-coded
   URL. Routes it lists with a real view function (``/graphql``, the demo, jobs, gateway and
   scorer helpers) are named by that function.
2. Routes that ``mlflow/server/__init__.py`` adds with ``@app.route`` and that are *not* in
   ``get_endpoints()``. One of them writes: ``POST /ajax-api/2.0/mlflow/upload-artifact``
   (a run artifact of up to 10 MB). They are read from ``mlflow.server.app.url_map`` and
   re-prefixed to the current static prefix.
3. MLflow 3's native FastAPI routers (``mlflow.server.fastapi_app.create_fastapi_app``): otel,
   jobs, gateway, assistant, artifacts, MCP servers, server-info. Their keys keep Starlette's
   ``{param}`` / ``{param:path}`` syntax, so they never collide with the Flask key of the same URL
   (``PUT .../mlflow-artifacts/artifacts/...`` is served natively under uvicorn and by Flask under
   gunicorn or waitress; both must be doors).

Static prefix: ``mlflow server --static-prefix`` sets ``_MLFLOW_STATIC_PREFIX``
(``mlflow.server.STATIC_PREFIX_ENV_VAR``), and MLflow prepends it (minus a trailing ``/``) to
every route when ``get_endpoints()`` runs. :func:`route_table` reads it at the same moment, so
build the table after the variable is set, as the server does. The native artifact router is the
exception: MLflow 3.17 mounts it *without* the prefix, so ``PUT /api/2.0/mlflow-artifacts/...``
stays reachable under any prefix, and the table says so.

Registry-changing routes (the coverage check)
---------------------------------------------
A route counts as registry-changing when its method is not GET/HEAD/OPTIONS and

* its request belongs to ``ModelRegistryService`` (every registry write), ``WebhookService``
  (registry event hooks) or ``MlflowArtifactsService`` (where the audit log and model files
  live), derived from the services' protobuf descriptors; or
* its path or name mentions the registry or its neighbours (registered models, model versions,
  prompts, webhooks, artifacts, ``/graphql``, the demo), so a new route elsewhere is caught too.

Every such route must be named in :data:`DOORS` or :data:`ALLOWED`; :func:`uncovered` lists the
ones that are not, and :func:`stale_entries` lists entries that no longer match any route. A POST
that only reads (``GetLatestVersions``) still counts: reads by POST are allowed by name, not by
guessing from the verb in the name.

Known gaps (what a route table cannot close)
--------------------------------------------
* Native FastAPI routes never reach Flask's ``before_request`` under uvicorn (the default). The
  gate must also call :func:`door_for` from an ASGI middleware with the routed ASGI path, as
  basic-auth's ``add_fastapi_permission_middleware`` does; a Flask hook alone misses
  ``native:upload_artifact`` and ``native:submit_job``.
* Server-side writers that bypass HTTP: a prompt-optimisation job (``optimize_prompts``)
  registers a new prompt version straight into the backend store, and the demo generator sets
  aliases on and deletes the ``mlflow-demo.prompts.*`` prompts in-process. Their doors are the
  requests that start them (``server_job``, ``demo_data``); what they do afterwards is not seen.
* The MLflow Assistant (``/ajax-api/3.0/mlflow/assistant/*``, localhost-only unless remote mode
  is enabled) runs an agent with a shell tool on the host; no route table can gate that.
* The audit run itself: ``DeleteRun``, ``UpdateRun``, run tags, ``DeleteExperiment``,
  ``UpdateExperiment`` and experiment tags are doors (``audit_run``), refused when they target
  the audit experiment or one of its runs. ``RestoreRun``/``RestoreExperiment`` are not (they
  can only bring the log back).
* ``DeleteWorkspace`` with ``mode=CASCADE`` deletes, and ``mode=SET_DEFAULT`` moves, every
  registered model and experiment of the workspace (MLflow's ``_WORKSPACE_ROOT_MODELS``).
* There is no ``CopyModelVersion`` endpoint: ``MlflowClient.copy_model_version`` is a
  ``CreateModelVersion`` carrying the source version's tags, so the ``create_version`` door
  must inspect the request's tags.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Final, Literal, TypeAlias

__all__ = [
    "ALLOWED",
    "DOORS",
    "GRAPHQL_MUTATIONS_REVIEWED",
    "Door",
    "ExtraRoute",
    "GetEndpoints",
    "RouteTable",
    "door_for",
    "extra_routes",
    "registry_changing",
    "route_table",
    "stale_entries",
    "uncovered",
]

Door = Literal[
    "transition_stage",  # moves a version to Staging/Production/Archived (archive_existing too)
    "set_alias",  # points an alias (champion, ...) at a version: the modern promotion
    "delete_alias",  # takes an alias away
    "set_version_tag",  # can write our reserved tags on a version: forged approval state
    "delete_version_tag",  # can erase a sign-off, a request or the audit head hashes
    "set_model_tag",  # can write reserved tags on the registered model
    "delete_model_tag",  # can erase them
    "create_model",  # a registered model created with tags (reserved ones included)
    "create_version",  # a version created with tags: copy_model_version copies all tags
    "update_model",  # description only: audited, not gated
    "update_version",  # description only: audited, not gated
    "rename_model",  # moves every version, alias and tag to a name the policy may not match
    "delete_model",  # drops every version, alias and tag
    "delete_version",  # drops the version and, silently, its aliases
    "write_artifacts",  # artifact writes/deletes: the audit log, or a gated version's files
    "delete_workspace",  # CASCADE deletes, SET_DEFAULT moves, all models of a workspace
    "demo_data",  # the demo sets aliases on and deletes mlflow-demo.prompts.* in-process
    "server_job",  # a server-side job (optimize_prompts) registers a prompt version directly
    "audit_run",  # deletes, renames or retags a run or experiment: the audit log's own, maybe
]

RouteTable: TypeAlias = dict[tuple[str, str], str]
"""(path, HTTP method) -> route name."""

GetEndpoints: TypeAlias = Callable[[Callable[[Any], Any]], Iterable[tuple[str, Any, Sequence[str]]]]
"""The shape of ``mlflow.server.handlers.get_endpoints``: ``get_handler -> [(path, handler,
methods)]``."""

ExtraRoute: TypeAlias = tuple[str, str, Sequence[str]]
"""(path, route name, methods) of a route that ``get_endpoints()`` does not list."""

DOORS: Final[dict[str, Door]] = {
    # ModelRegistryService: every write.
    "TransitionModelVersionStage": "transition_stage",
    "SetRegisteredModelAlias": "set_alias",
    "DeleteRegisteredModelAlias": "delete_alias",
    "SetModelVersionTag": "set_version_tag",
    "DeleteModelVersionTag": "delete_version_tag",
    "SetRegisteredModelTag": "set_model_tag",
    "DeleteRegisteredModelTag": "delete_model_tag",
    "CreateRegisteredModel": "create_model",
    "CreateModelVersion": "create_version",
    "UpdateRegisteredModel": "update_model",
    "UpdateModelVersion": "update_version",
    "RenameRegisteredModel": "rename_model",
    "DeleteRegisteredModel": "delete_model",
    "DeleteModelVersion": "delete_version",
    # Artifact writes: the mlflow-artifacts proxy (Flask and native), the UI's upload route and
    # presigned uploads straight to cloud storage.
    "artifacts.UploadArtifact": "write_artifacts",
    "artifacts.DeleteArtifact": "write_artifacts",
    "artifacts.CreateMultipartUpload": "write_artifacts",
    "artifacts.CompleteMultipartUpload": "write_artifacts",
    "artifacts.AbortMultipartUpload": "write_artifacts",
    "native:upload_artifact": "write_artifacts",
    "handler:serve_upload_artifact": "write_artifacts",
    "CreatePresignedUploadUrl": "write_artifacts",
    # Writes that reach the registry without a registry request.
    "DeleteWorkspace": "delete_workspace",
    "handler:_generate_demo": "demo_data",
    "handler:_delete_demo": "demo_data",
    "CreatePromptOptimizationJob": "server_job",
    "native:submit_job": "server_job",
    # The tracking writes that could hide or relabel the audit log (its run and experiment).
    "DeleteRun": "audit_run",
    "UpdateRun": "audit_run",
    "SetTag": "audit_run",
    "DeleteTag": "audit_run",
    "DeleteExperiment": "audit_run",
    "UpdateExperiment": "audit_run",
    "SetExperimentTag": "audit_run",
    "DeleteExperimentTag": "audit_run",
}
"""Route name -> the door it opens. The gate refuses or audits by door."""

ALLOWED: Final[dict[str, str]] = {
    "GetLatestVersions": "a read: the POST form of get-latest-versions changes nothing",
    "CreateWebhook": "webhooks only notify of registry events; no stage, alias, version or tag",
    "UpdateWebhook": "webhooks only notify of registry events; no stage, alias, version or tag",
    "DeleteWebhook": "webhooks only notify of registry events; no stage, alias, version or tag",
    "TestWebhook": "sends a test payload to the webhook's URL; writes nothing",
    "handler:_graphql": "MLflow's GraphQL schema is read-only (see GRAPHQL_MUTATIONS_REVIEWED)",
    "CreatePresignedDownloadUrl": "a read: returns a download URL for an artifact",
    "LinkPromptsToTrace": "writes trace/prompt links in the tracking store, not the registry",
    "SearchPromptOptimizationJobs": "a read: the POST form of the job search",
    "CancelPromptOptimizationJob": "stops a job and its run; a cancelled job registers nothing",
    "DeletePromptOptimizationJob": "deletes a job record and its run; no registry row changes",
    "handler:serve_create_promptlab_run": "creates a Prompt Lab run and its artifacts; no registry",
}
"""Registry-adjacent writes deliberately left ungated, each with the reason."""

GRAPHQL_MUTATIONS_REVIEWED: Final[frozenset[str]] = frozenset(
    {"mlflowSearchDatasets", "mlflowSearchRuns", "testMutation"}
)
"""The GraphQL mutation fields reviewed as read-only (two searches and an echo). The coverage
test fails when MLflow's schema gains another, since ``/graphql`` is allowed on this ground."""

_READS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_REGISTRY_SERVICES: Final = (
    ("mlflow.protos.model_registry_pb2", "ModelRegistryService"),
    ("mlflow.protos.webhooks_pb2", "WebhookService"),
    ("mlflow.protos.mlflow_artifacts_pb2", "MlflowArtifactsService"),
)
_PATH_WATCH: Final = re.compile(
    r"registered-models|model-versions|artifact|webhook|prompt|/graphql|/demo/", re.IGNORECASE
)
_NAME_WATCH: Final = re.compile(
    r"registered_?model|model_?version|artifact|webhook|prompt", re.IGNORECASE
)
# MLflow 3.17 ``create_fastapi_app``: (module, router, prefix kind). "static" routers get the
# static prefix, "none" none, "mcp" each of ``get_mcp_server_api_route_prefixes()``.
_NATIVE_ROUTERS: Final = (
    ("mlflow.server.otel_api", "otel_router", "static"),
    ("mlflow.server.job_api", "job_api_router", "static"),
    ("mlflow.server.gateway_api", "gateway_router", "static"),
    ("mlflow.server.assistant.api", "assistant_router", "static"),
    ("mlflow.server.artifact_router", "artifact_router", "none"),
    ("mlflow.server.mcp_server_api", "mcp_server_router", "mcp"),
    ("mlflow.server.server_info_api", "server_info_router", "static"),
)
_PARAM: Final = re.compile(
    r"<(?:(?P<wconv>\w+)(?:\([^)]*\))?:)?(?P<wname>\w+)>"  # Werkzeug: <name>, <path:name>
    r"|\{(?P<sname>\w+)(?::(?P<sconv>\w+))?\}"  # Starlette: {name}, {name:path}
)
_SLASHES: Final = re.compile(r"/{2,}")


class _Marker:
    """What our ``get_handler`` returns: the request class, in place of MLflow's handler."""

    __slots__ = ("request_class",)

    def __init__(self, request_class: object) -> None:
        self.request_class = request_class


def _request_name(request_class: object) -> str:
    full_name = getattr(getattr(request_class, "DESCRIPTOR", None), "full_name", None)
    if isinstance(full_name, str) and full_name:
        return full_name.removeprefix("mlflow.")
    return str(getattr(request_class, "__name__", request_class))


def _handler_name(handler: object) -> str:
    if isinstance(handler, _Marker):
        return _request_name(handler.request_class)
    return f"handler:{getattr(handler, '__name__', type(handler).__name__)}"


def _static_prefix() -> str:
    """The static prefix exactly as MLflow's ``_add_static_prefix`` applies it."""
    server: Any = importlib.import_module("mlflow.server")
    return (os.environ.get(server.STATIC_PREFIX_ENV_VAR) or "").rstrip("/")


def _module_routes(prefix: str) -> list[ExtraRoute]:
    """Routes ``mlflow/server/__init__.py`` adds with ``@app.route`` (not in get_endpoints)."""
    server: Any = importlib.import_module("mlflow.server")
    app = server.app
    rules = list(app.url_map.iter_rules())
    # The rules carry the prefix of the moment mlflow.server was imported; /health tells which.
    health = next((r.rule for r in rules if r.endpoint == "health"), "/health")
    imported_prefix = health.removesuffix("/health")
    routes: list[ExtraRoute] = []
    for rule in rules:
        view = app.view_functions.get(rule.endpoint)
        if getattr(view, "__module__", None) != "mlflow.server":
            continue  # get_endpoints() routes, Flask's own static route, other apps' hooks
        path = str(rule.rule).removeprefix(imported_prefix)
        methods = sorted(m for m in rule.methods or () if m not in {"HEAD", "OPTIONS"})
        routes.append((prefix + path, f"handler:{view.__name__}", methods))
    return routes


def _native_routes(prefix: str) -> list[ExtraRoute]:
    """MLflow 3's native FastAPI routes; none on MLflow 2, which has no such routers."""
    routes: list[ExtraRoute] = []
    for module_name, router_name, kind in _NATIVE_ROUTERS:
        try:
            module: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        router = getattr(module, router_name, None)
        if router is None:
            continue
        if kind == "mcp":
            prefixes = [p.rstrip("/") for p in module.get_mcp_server_api_route_prefixes()]
        else:
            prefixes = [prefix if kind == "static" else ""]
        for route in router.routes:
            methods = sorted(m for m in getattr(route, "methods", None) or () if m != "HEAD")
            for route_prefix in prefixes:
                routes.append((route_prefix + route.path, f"native:{route.name}", methods))
    return routes


def extra_routes() -> list[ExtraRoute]:
    """The installed MLflow's routes that ``get_endpoints()`` does not list (sources 2 and 3)."""
    prefix = _static_prefix()
    return [*_module_routes(prefix), *_native_routes(prefix)]


def route_table(
    get_endpoints: GetEndpoints | None = None,
    *,
    extra: Iterable[ExtraRoute] | None = None,
) -> RouteTable:
    """(path, method) -> route name for every route MLflow serves.

    ``get_endpoints`` defaults to ``mlflow.server.handlers.get_endpoints`` (pass another to test
    the coverage check); ``extra`` defaults to :func:`extra_routes`. The static prefix is read
    from the environment now, as MLflow reads it. When two routes share a key, the first wins, as
    in Flask.
    """
    endpoints: GetEndpoints
    if get_endpoints is None:
        handlers: Any = importlib.import_module("mlflow.server.handlers")
        endpoints = handlers.get_endpoints
    else:
        endpoints = get_endpoints
    table: RouteTable = {}
    for path, handler, methods in endpoints(_Marker):
        name = _handler_name(handler)
        for method in methods:
            table.setdefault((path, method.upper()), name)
    for path, name, methods in extra_routes() if extra is None else extra:
        for method in methods:
            table.setdefault((path, method.upper()), name)
    return table


@lru_cache(maxsize=1024)
def _pattern(path: str) -> re.Pattern[str]:
    """A regex for a Werkzeug or Starlette route path. Converters other than ``path`` match one
    segment; matching more than the router only makes the gate stricter."""
    parts: list[str] = []
    end = 0
    for match in _PARAM.finditer(path):
        parts.append(re.escape(path[end : match.start()]))
        converter = match.group("wconv") or match.group("sconv")
        parts.append(".*" if converter == "path" else "[^/]+")
        end = match.end()
    parts.append(re.escape(path[end:]))
    return re.compile("".join(parts))


def door_for(
    path: str, method: str, table: Mapping[tuple[str, str], str]
) -> tuple[str, Door] | None:
    """The route name and door of a request, or None when the request opens no door.

    ``path`` is Flask's ``request.path`` (or the routed ASGI path in a FastAPI middleware), with
    the static prefix as received. An exact door key is looked up first; then the request is
    matched against every parameterised door route of its method (the artifact routes), even
    when it also matches a route that is no door: in doubt, the gate refuses.
    """
    method = method.upper()
    path = _SLASHES.sub("/", path)
    name = table.get((path, method))
    if name is not None and name in DOORS:
        return name, DOORS[name]
    for (route, route_method), route_name in table.items():
        if route_method != method or route_name not in DOORS:
            continue
        if ("<" in route or "{" in route) and _pattern(route).fullmatch(path):
            return route_name, DOORS[route_name]
    return None


@lru_cache(maxsize=1)
def _registry_service_requests() -> frozenset[str]:
    names: set[str] = set()
    for module_name, service_name in _REGISTRY_SERVICES:
        try:
            service: Any = getattr(importlib.import_module(module_name), service_name)
        except (ImportError, AttributeError):
            continue  # MLflow 2 has no webhooks
        names.update(
            m.input_type.full_name.removeprefix("mlflow.") for m in service.DESCRIPTOR.methods
        )
    return frozenset(names)


def registry_changing(table: Mapping[tuple[str, str], str]) -> RouteTable:
    """The routes of ``table`` that can change model-registry state (see the module doc)."""
    services = _registry_service_requests()
    return {
        (path, method): name
        for (path, method), name in table.items()
        if method not in _READS
        and (name in services or _PATH_WATCH.search(path) or _NAME_WATCH.search(name))
    }


def uncovered(table: Mapping[tuple[str, str], str]) -> list[str]:
    """Names of registry-changing routes that are in neither DOORS nor ALLOWED."""
    return sorted(
        {n for n in registry_changing(table).values() if n not in DOORS and n not in ALLOWED}
    )


def stale_entries(table: Mapping[tuple[str, str], str]) -> list[str]:
    """Names in DOORS or ALLOWED that match no route of ``table``."""
    served = set(table.values())
    return sorted({n for n in (*DOORS, *ALLOWED) if n not in served})
