"""What several benchmarks share: a quiet process, and servers started side by side."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mlflow_approvals.testing import MlflowServer

K = TypeVar("K")


def quiet_process() -> None:
    """No warnings MLflow cannot help, no telemetry or run links, no credentials from the
    caller's environment (each benchmark sets the ones it means)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*starlette.middleware.wsgi is deprecated.*")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no requests to other hosts
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no run links
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        os.environ.pop(var, None)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


@contextlib.contextmanager
def started_together(managers: Mapping[K, Any]) -> Iterator[dict[K, MlflowServer]]:
    """Enter every ``mlflow_server(...)`` manager at once (each start takes seconds); stop the
    ones that started when another fails, and all of them on the way out."""
    with contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(len(managers)) as pool:
            futures = {key: pool.submit(cm.__enter__) for key, cm in managers.items()}
        servers: dict[K, MlflowServer] = {}
        failed: BaseException | None = None
        for key, future in futures.items():
            try:
                servers[key] = future.result()
            except BaseException as exc:  # the others are stopped on the way out
                failed = failed or exc
            else:
                stack.push(managers[key].__exit__)
        if failed is not None:
            raise failed
        yield servers
