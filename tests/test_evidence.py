"""Evidence: the exact bytes of a model version, hashed file by file and bound into one digest.

Against real MLflow: a fresh ``sqlite:///`` registry (artifacts in a local folder, read in place)
and the session's ``mlflow server`` (artifacts proxied, downloaded one file at a time), and, in
process, the server's own stores and ``--artifacts-destination`` (``server_model_files``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import register_versions, unique_name
from mlflow_approvals.evidence import (
    CHUNK,
    ArtifactFiles,
    Evidence,
    collect,
    digest_of,
    manifest,
)
from mlflow_approvals.testing import MlflowServer

FILES: dict[str, bytes] = {
    "MLmodel": b"artifact_path: model\nflavors: {}\n",
    "conda.yaml": b"name: fraud\n",
    "data/weights.bin": bytes(range(256)) * 40,
    "data/nested/deeper/table.csv": b"a,b\n1,2\n",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def client_for(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(uri, uri)


def write_tree(folder: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = folder.joinpath(*rel.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def model_experiment(uri: str) -> str:
    """The id of the test models' experiment (made by register_versions; its artifacts beside a
    sqlite database, or proxied by the server)."""
    client = client_for(uri)
    if (exp := client.get_experiment_by_name("approvals-test-models")) is None:
        register_versions(uri, unique_name("bootstrap"))
        exp = client.get_experiment_by_name("approvals-test-models")
    return str(exp.experiment_id)


def logged_run(uri: str, tmp: Path, files: dict[str, bytes], folder: str = "model") -> str:
    """A finished run that logged ``files`` under ``folder``; returns its id."""
    client = client_for(uri)
    run_id = str(client.create_run(model_experiment(uri)).info.run_id)
    if files:
        client.log_artifacts(run_id, str(write_tree(tmp / f"up-{run_id}", files)), folder)
    client.set_terminated(run_id)
    return run_id


def register(uri: str, tmp: Path, files: dict[str, bytes]) -> tuple[str, str, str]:
    """A version created from ``runs:/<run>/model`` whose model folder holds ``files``;
    returns (name, version, run id)."""
    client = client_for(uri)
    run_id = logged_run(uri, tmp, files)
    name = unique_name()
    client.create_registered_model(name)
    mv = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
    return name, str(mv.version), run_id


def version_files(uri: str, name: str, version: str) -> tuple[str, ArtifactFiles]:
    download = client_for(uri).get_model_version_download_uri(name, version)
    return download, ArtifactFiles.from_uri(download, uri)


def logged_model(uri: str, tmp: Path, files: dict[str, bytes], run_id: str | None) -> Any:
    """An MLflow 3 logged model named ``model`` holding ``files`` (of run ``run_id``)."""
    client = client_for(uri)
    model = client.create_logged_model(model_experiment(uri), name="model", source_run_id=run_id)
    client.log_model_artifacts(model.model_id, str(write_tree(tmp / model.model_id, files)))
    return model


@pytest.fixture
def global_uri(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``tracking_uri``, also as MLflow's current one: a sqlite registry looks logged models up
    through it when a version is created from ``models:/<id>``."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    return tracking_uri


# -- the manifest ----------------------------------------------------------------------------
def test_manifest_lists_exactly_the_model_files(tracking_uri: str, tmp_path: Path) -> None:
    """The manifest of a registered version is its files (nested ones too), each with its hash."""
    name, version, run_id = register(tracking_uri, tmp_path, FILES)
    download, files = version_files(tracking_uri, name, version)

    assert download == f"runs:/{run_id}/model"  # as measured, on sqlite and through a server
    assert files.paths() == sorted(FILES)
    assert manifest(files) == {path: sha(data) for path, data in FILES.items()}


@pytest.mark.rest
def test_local_files_are_read_in_place_remote_ones_one_at_a_time(
    tracking_uri: str, tmp_path: Path
) -> None:
    """A local store's file is opened where it is; a server's is downloaded alone, then deleted."""
    name, version, _ = register(tracking_uri, tmp_path, FILES)
    _, files = version_files(tracking_uri, name, version)

    opened = []
    for path in files.paths():
        with files.open(path) as f:
            local = Path(f.name)
            assert f.read() == FILES[path]
            opened.append(local)
            if files.local_dir is None:
                assert [p.name for p in local.parent.rglob("*")] == [local.name]  # that one file
    if files.local_dir is None:  # through the server: every copy is gone again
        assert not any(p.exists() for p in opened)
        assert not any(p.parent.exists() for p in opened)
    else:
        assert all(p.exists() and str(p).startswith(files.local_dir) for p in opened)


@pytest.mark.rest
def test_file_larger_than_a_chunk_is_hashed_whole(tracking_uri: str, tmp_path: Path) -> None:
    """A file of several 1 MiB chunks plus a few bytes hashes to the SHA-256 of all its bytes."""
    big = os.urandom(2 * CHUNK + CHUNK // 2 + 3)
    name, version, _ = register(tracking_uri, tmp_path, {"MLmodel": b"x", "weights/big.bin": big})
    _, files = version_files(tracking_uri, name, version)

    assert manifest(files)["weights/big.bin"] == sha(big)


def test_read_text_present_absent_and_too_large(tracking_uri: str, tmp_path: Path) -> None:
    """read_text returns a file's text, None for a missing file or folder, and refuses a big one."""
    from mlflow_approvals.errors import InvalidRequest

    name, version, _ = register(tracking_uri, tmp_path, FILES)
    _, files = version_files(tracking_uri, name, version)

    assert files.read_text("MLmodel") == FILES["MLmodel"].decode()
    assert files.read_text("data/nested/deeper/table.csv") == "a,b\n1,2\n"
    assert files.read_text("README.md") is None
    assert files.read_text("nowhere/README.md") is None
    assert files.read_text("data") is None  # a folder is no file
    with pytest.raises(InvalidRequest, match="larger than 10 bytes"):
        files.read_text("MLmodel", limit=10)


@pytest.mark.parametrize("path", ["../secret", "data/../../secret", "/etc/passwd", ""])
def test_paths_outside_the_model_are_refused(sqlite_uri: str, tmp_path: Path, path: str) -> None:
    """open and read_text refuse absolute paths and '..' segments before touching any store."""
    from mlflow_approvals.errors import InvalidRequest

    files = ArtifactFiles.from_uri(str(write_tree(tmp_path / "m", FILES)))
    with pytest.raises(InvalidRequest, match="relative"), files.open(path):
        pass
    with pytest.raises(InvalidRequest, match="relative"):
        files.read_text(path)


# -- the digest ------------------------------------------------------------------------------
def test_digest_is_stable_and_changes_with_every_byte_file_source_and_run(tmp_path: Path) -> None:
    """The digest is the same for the same files, source and run, and differs if any one changes."""
    folder = write_tree(tmp_path / "model", FILES)
    files = ArtifactFiles.from_uri(str(folder))
    source, run = "runs:/abc/model", "abc"
    base = collect(files, source, run)

    assert base.digest.startswith("sha256:") and len(base.digest) == 7 + 64
    assert collect(ArtifactFiles.from_uri(str(folder)), source, run) == base  # stable
    assert base.digest == digest_of(base.manifest, source, run)

    weights = folder / "data" / "weights.bin"
    changed = bytearray(FILES["data/weights.bin"])
    changed[5000] ^= 0x01  # one bit of one byte
    weights.write_bytes(bytes(changed))
    one_byte = collect(files, source, run)
    assert one_byte.digest != base.digest
    assert {p for p in FILES if one_byte.manifest[p] != base.manifest[p]} == {"data/weights.bin"}
    weights.write_bytes(FILES["data/weights.bin"])
    assert collect(files, source, run).digest == base.digest  # back to the same bytes

    (folder / "data" / "extra.txt").write_bytes(b"")
    assert collect(files, source, run).digest != base.digest  # an added (even empty) file
    (folder / "data" / "extra.txt").unlink()
    (folder / "conda.yaml").unlink()
    removed = collect(files, source, run)
    assert removed.digest != base.digest and "conda.yaml" not in removed.manifest
    (folder / "conda.yaml").write_bytes(FILES["conda.yaml"])
    (folder / "data" / "empty-folder").mkdir()
    assert collect(files, source, run).digest == base.digest  # an empty folder holds no bytes

    assert collect(files, "runs:/abd/model", run).digest != base.digest
    assert collect(files, None, run).digest != base.digest
    assert collect(files, source, "abd").digest != base.digest
    assert collect(files, source, None).digest != base.digest


def test_renamed_file_changes_the_digest(tmp_path: Path) -> None:
    """Moving a file to another path, bytes unchanged, changes the digest."""
    folder = write_tree(tmp_path / "model", FILES)
    files = ArtifactFiles.from_uri(str(folder))
    before = collect(files, None, None)
    (folder / "conda.yaml").rename(folder / "data" / "conda.yaml")
    assert collect(files, None, None).digest != before.digest


def test_digest_through_the_server_sees_a_changed_byte(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """A byte rewritten in a version's run artifacts changes the digest seen through HTTP."""
    uri = mlflow_server.uri
    name, version, run_id = register(uri, tmp_path, FILES)
    _, files = version_files(uri, name, version)
    mv = client_for(uri).get_model_version(name, version)
    before = collect(files, mv.source, mv.run_id)
    assert collect(files, mv.source, mv.run_id) == before

    client_for(uri).log_text(run_id, "name: fraue\n", "model/conda.yaml")  # artifacts overwrite
    after = collect(files, mv.source, mv.run_id)
    assert after.digest != before.digest
    assert after.manifest["conda.yaml"] == sha(b"name: fraue\n")


def test_canonical_json_is_what_is_hashed() -> None:
    """The digest is SHA-256 of the RFC 8785 JSON of {files, source, run_id}: sorted, no spaces."""
    files = {"b/x": "0" * 64, "a": "1" * 64}
    text = '{"files":{"a":"' + "1" * 64 + '","b/x":"' + "0" * 64 + '"},"run_id":null,"source":"s"}'
    assert digest_of(files, "s", None) == "sha256:" + sha(text.encode())


def test_evidence_round_trips_and_refuses_tampering(tmp_path: Path) -> None:
    """to_dict/from_dict round-trip; a dict whose digest does not match its contents is refused."""
    evidence = collect(ArtifactFiles.from_uri(str(write_tree(tmp_path, FILES))), "src", "run")
    data = evidence.to_dict()
    assert list(data["manifest"]) == sorted(FILES)
    assert Evidence.from_dict(data) == evidence

    for key, value in [
        ("source", "other"),
        ("run_id", None),
        ("manifest", {**data["manifest"], "MLmodel": "0" * 64}),
        ("digest", "sha256:" + "0" * 64),
    ]:
        with pytest.raises(ValueError, match="not the hash of its contents"):
            Evidence.from_dict({**data, key: value})
    with pytest.raises(ValueError, match="exactly"):
        Evidence.from_dict({**data, "extra": 1})
    with pytest.raises(ValueError, match="SHA-256 hex"):
        Evidence.from_dict({**data, "manifest": {"MLmodel": "not-a-hash"}})
    with pytest.raises(ValueError, match="string or null"):
        Evidence.from_dict({**data, "run_id": 7})


def test_collect_refuses_a_model_without_files(tmp_path: Path) -> None:
    """Evidence of no files is refused: it would sign off a wrong URI."""
    from mlflow_approvals.errors import InvalidRequest

    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidRequest, match="No files"):
        collect(ArtifactFiles.from_uri(str(tmp_path / "empty")), None, None)


# -- download URIs in each setup ---------------------------------------------------------------
@pytest.mark.rest
def test_logged_model_version(global_uri: str, tmp_path: Path) -> None:
    """A version made from an MLflow 3 logged model reports its storage location; its files."""
    client = client_for(global_uri)
    model = logged_model(global_uri, tmp_path, FILES, None)
    name = unique_name()
    client.create_registered_model(name)
    mv = client.create_model_version(name, f"models:/{model.model_id}", model_id=model.model_id)
    download, files = version_files(global_uri, name, str(mv.version))

    if global_uri.startswith("sqlite"):
        assert download == model.artifact_location  # a local folder
        assert files.local_dir is not None
    else:
        exp_id = model_experiment(global_uri)
        assert download == f"mlflow-artifacts:/{exp_id}/models/{model.model_id}/artifacts"
    assert manifest(files) == {p: sha(d) for p, d in FILES.items()}
    for uri in (f"models:/{model.model_id}", f"models:/{name}/{mv.version}"):
        assert manifest(ArtifactFiles.from_uri(uri, global_uri)) == manifest(files)


def test_alias_uri_and_moving_uris(tracking_uri: str, tmp_path: Path) -> None:
    """models:/<name>@<alias> is resolved; a stage or 'latest' (which move) is refused."""
    from mlflow_approvals.errors import InvalidRequest

    name, version, _ = register(tracking_uri, tmp_path, FILES)
    client_for(tracking_uri).set_registered_model_alias(name, "champion", version)
    files = ArtifactFiles.from_uri(f"models:/{name}@champion", tracking_uri)
    assert files.paths() == sorted(FILES)
    for moving in (f"models:/{name}/Production", f"models:/{name}/latest"):
        with pytest.raises(InvalidRequest, match="does not name one model"):
            ArtifactFiles.from_uri(moving, tracking_uri)


@pytest.mark.rest
def test_runs_uri_over_a_logged_model(tracking_uri: str, tmp_path: Path) -> None:
    """runs:/<run>/model of a run whose model was logged with MLflow 3 names that logged model."""
    client = client_for(tracking_uri)
    run_id = logged_run(tracking_uri, tmp_path, {})  # no run artifacts under model/
    logged_model(tracking_uri, tmp_path, FILES, run_id)
    name = unique_name()
    client.create_registered_model(name)
    mv = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
    download, files = version_files(tracking_uri, name, str(mv.version))

    assert download == f"runs:/{run_id}/model"
    assert files.paths() == sorted(FILES)  # not MLflow's own listing, which prefixes "model/"
    assert manifest(files) == {p: sha(d) for p, d in FILES.items()}


def test_runs_uri_with_run_files_and_a_logged_model_is_refused(
    tracking_uri: str, tmp_path: Path
) -> None:
    """When a run has files under <path> and a logged model named <path>, the URI is refused."""
    from mlflow_approvals.errors import InvalidRequest

    run_id = logged_run(tracking_uri, tmp_path, FILES)
    model = logged_model(tracking_uri, tmp_path, {"MLmodel": b"other"}, run_id)
    with pytest.raises(InvalidRequest, match=f"ambiguous.*models:/{model.model_id}"):
        ArtifactFiles.from_uri(f"runs:/{run_id}/model", tracking_uri)
    other = ArtifactFiles.from_uri(f"runs:/{run_id}/elsewhere", tracking_uri)
    assert other.paths() == []  # another path: no logged model of that name, no files


def test_importing_evidence_does_not_import_mlflow() -> None:
    """Importing the module loads no MLflow (it takes seconds)."""
    code = "import sys, mlflow_approvals.evidence; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- in the server process -----------------------------------------------------------------------
@contextlib.contextmanager
def as_server_worker(
    monkeypatch: pytest.MonkeyPatch, backend_uri: str, destination: Path
) -> Iterator[None]:
    """Set the variables `mlflow server` exports to its workers; reset MLflow's cached stores."""
    # Import before the variables are set: mlflow.server decides at import time whether it runs
    # as a server (see tests/test_server_sink.py).
    import mlflow.server
    from mlflow.server import handlers
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {
        mlflow.server.BACKEND_STORE_URI_ENV_VAR: backend_uri,
        mlflow.server.ARTIFACT_ROOT_ENV_VAR: "mlflow-artifacts:/",
        mlflow.server.ARTIFACTS_DESTINATION_ENV_VAR: str(destination),
        mlflow.server.SERVE_ARTIFACTS_ENV_VAR: "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_ENABLE_WORKSPACES"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    names = ("_tracking_store", "_model_registry_store", "_artifact_repo")
    for name in names:
        monkeypatch.setattr(handlers, name, None)
    try:
        yield
    finally:
        for name in names:
            setattr(handlers, name, None)  # monkeypatch then restores what was there before


def test_server_reads_versions_from_its_destination(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """server_model_files maps the session server's download URIs (runs:/ and mlflow-artifacts:)
    onto its --artifacts-destination in place, with the same manifest a client sees over HTTP."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    from mlflow_approvals.server.sink import server_model_files

    uri = mlflow_server.uri
    name, version, run_id = register(uri, tmp_path, FILES)
    model = logged_model(uri, tmp_path, {"MLmodel": b"logged\n", "a/b.txt": b"b"}, None)
    mv = client_for(uri).create_model_version(
        name, f"models:/{model.model_id}", model_id=model.model_id
    )
    empty_run = logged_run(uri, tmp_path, {})
    logged_model(uri, tmp_path, {"MLmodel": b"of a run\n"}, empty_run)
    over = client_for(uri).create_model_version(name, f"runs:/{empty_run}/model", run_id=empty_run)
    seen = {}
    for v in (version, str(mv.version), str(over.version)):
        download, files = version_files(uri, name, v)
        seen[download] = manifest(files)
    assert f"runs:/{run_id}/model" in seen
    assert f"mlflow-artifacts:/{model_experiment(uri)}/models/{model.model_id}/artifacts" in seen

    destination = (mlflow_server.root / "artifacts").resolve()
    with as_server_worker(monkeypatch, mlflow_server.backend_store_uri, destination):
        for download, expected in seen.items():
            files = server_model_files(download)
            assert isinstance(files.repo, LocalArtifactRepository)
            assert files.local_dir is not None
            assert Path(files.local_dir).is_relative_to(destination)
            assert manifest(files) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "mlflow-artifacts:/1/models/m-1/artifacts",
        "mlflow-artifacts://h:5000/1/models/m-1/artifacts",
    ],
)
def test_proxied_uri_maps_onto_a_local_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _sqlite_template: Path, uri: str
) -> None:
    """mlflow-artifacts:/<path> and mlflow-artifacts://host/<path> map to <destination>/<path>."""
    from mlflow_approvals.server.sink import server_model_files

    destination = tmp_path / "artifacts"
    model = write_tree(destination / "1" / "models" / "m-1" / "artifacts", FILES)
    write_tree(destination / "1" / "models" / "m-2" / "artifacts", {"other": b"not ours"})
    with as_server_worker(monkeypatch, f"sqlite:///{_sqlite_template}", destination):
        files = server_model_files(uri)
        assert files.local_dir == str(model)
        assert manifest(files) == {p: sha(d) for p, d in FILES.items()}


@pytest.mark.parametrize("uri", ["mlflow-artifacts:/../escape", "mlflow-artifacts://h/a/../../x"])
def test_proxied_uri_with_dotdot_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _sqlite_template: Path, uri: str
) -> None:
    """A proxied URI that would leave the destination is refused with a 4xx error code."""
    from mlflow.exceptions import MlflowException

    from mlflow_approvals.server.sink import server_model_files

    with as_server_worker(monkeypatch, f"sqlite:///{_sqlite_template}", tmp_path / "a"):
        with pytest.raises(MlflowException, match=r"\.\.") as err:
            server_model_files(uri)
        assert err.value.error_code == "INVALID_PARAMETER_VALUE"


def test_server_without_destination_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _sqlite_template: Path
) -> None:
    """Outside a server worker (no --artifacts-destination), a proxied URI is refused clearly."""
    from mlflow.exceptions import MlflowException

    from mlflow_approvals.server.sink import server_model_files

    with as_server_worker(monkeypatch, f"sqlite:///{_sqlite_template}", tmp_path / "a"):
        import mlflow.server

        monkeypatch.delenv(mlflow.server.ARTIFACTS_DESTINATION_ENV_VAR)
        with pytest.raises(MlflowException, match="artifacts-destination"):
            server_model_files("mlflow-artifacts:/1/models/m-1/artifacts")
