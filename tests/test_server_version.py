"""The approvals server app refuses an MLflow older than the line it is tested on."""

from __future__ import annotations

import pytest

from mlflow_approvals.server import MINIMUM_MLFLOW, check_mlflow_version


@pytest.mark.parametrize("version", ["2.22.5", "3.16.1", "1.30.0"])
def test_older_mlflow_is_refused_with_what_to_install(version: str) -> None:
    """An MLflow older than the minimum stops the server with the version and the fix."""
    with pytest.raises(SystemExit) as stopped:
        check_mlflow_version(version)
    message = str(stopped.value)
    assert version in message and "mlflow-approvals[server]" in message
    assert ".".join(map(str, MINIMUM_MLFLOW)) in message


@pytest.mark.parametrize("version", ["3.17.2", "3.18.0", "4.0.0", "3.17.2.dev0", "dev"])
def test_supported_or_development_mlflow_starts(version: str) -> None:
    """The minimum and anything newer (or a development build) passes the check."""
    check_mlflow_version(version)


def test_running_mlflow_is_checked_by_create_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """create_app reads the MLflow it runs in: an old one stops it before anything is built."""
    import mlflow

    from mlflow_approvals.server import create_app

    monkeypatch.setattr(mlflow, "__version__", "2.22.5")
    with pytest.raises(SystemExit, match=r"MLflow 2\.22\.5"):
        create_app(object())
