"""The public surface: what `mlflow_approvals` exports, and that importing it is instant."""

from __future__ import annotations

import subprocess
import sys

import mlflow_approvals


def test_all_names_resolve():
    """Every name in __all__ can be imported from the package."""
    for name in mlflow_approvals.__all__:
        assert getattr(mlflow_approvals, name) is not None, name


def test_all_matches_the_lazy_table():
    """__all__ and the lazy import table list the same names, so they cannot drift apart."""
    lazy = set(mlflow_approvals._LAZY) | {"__version__"}
    assert set(mlflow_approvals.__all__) == lazy


def test_unknown_attribute_is_an_attribute_error():
    """A name the package does not export raises AttributeError."""
    try:
        mlflow_approvals.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_import_does_not_load_mlflow():
    """`import mlflow_approvals` does no work at import time: MLflow is not imported."""
    code = "import sys, mlflow_approvals; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_error_class_is_exported():
    """Each class of the error tree can be imported from the package itself."""
    from mlflow_approvals import errors

    assert set(errors.__all__) <= set(mlflow_approvals.__all__)
