"""The CI examples of docs/ci.md, run as written against the session's real `mlflow server`.

The GitHub Actions workflow's `run:` steps and the GitLab job's `script:` lines are taken from
the fenced YAML block after their `<!-- tested: ... -->` marker and run with bash, the way the
CI systems run them. Only the parts that belong to a user's project are stood in for: the
`pip install` step (the package is installed in this session), `train.py` (it reports a
version the test has just registered) and `deploy.sh` (it records what it would deploy). The
job's secrets and variables come from the test: the real server's URI, a model name no other
test uses, and a one-second poll interval. Meanwhile the test signs off (or rejects) as the
approvers would, from another thread.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from conftest import POLICY, Server, register_versions, unique_name
from mlflow_approvals.client import ApprovalClient
from mlflow_approvals.errors import RequestNotFound

DOC = Path(__file__).resolve().parents[1] / "docs" / "ci.md"
BIN = str(Path(sys.executable).parent)

TRAIN_PY = """\
import os, sys
version = os.environ["TEST_REGISTERED_VERSION"]
if os.environ.get("GITHUB_ENV"):
    with open(os.environ["GITHUB_ENV"], "a") as env:
        env.write(f"MODEL_VERSION={version}\\n")
print(version)
"""
DEPLOY_SH = '#!/usr/bin/env bash\nset -eu\necho "$1" > deployed.txt\n'


def documented_yaml(marker: str) -> Any:
    """The YAML block that follows `<!-- tested: MARKER ... -->` in docs/ci.md."""
    text = DOC.read_text()
    found = re.search(
        rf"<!-- tested: {re.escape(marker)}\b.*?-->\s*```yaml\n(.*?)```", text, flags=re.S
    )
    assert found, f"docs/ci.md has no ```yaml block after <!-- tested: {marker} -->"
    return yaml.safe_load(found.group(1))


@dataclass
class Run:
    """What happened when the pipeline ran: each step's exit code and output."""

    codes: dict[str, int] = field(default_factory=dict)
    log: str = ""

    @property
    def failed(self) -> tuple[str, int] | None:
        return next(((name, code) for name, code in self.codes.items() if code != 0), None)


def _workspace(tmp_path: Path, policy_path: str) -> Path:
    work = tmp_path / "checkout"
    work.mkdir()
    (work / "train.py").write_text(TRAIN_PY)
    (work / "deploy.sh").write_text(DEPLOY_SH)
    (work / "deploy.sh").chmod(0o755)
    (work / policy_path).parent.mkdir(parents=True, exist_ok=True)
    (work / policy_path).write_text(yaml.safe_dump(POLICY))
    return work


def _bash(script: str, env: dict[str, str], cwd: Path, timeout: float = 180) -> tuple[int, str]:
    """Run a step as GitHub and GitLab do: `bash --noprofile --norc -eo pipefail`."""
    path = cwd / ".step.sh"
    path.write_text(script)
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(path)],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def _base_env(variables: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GITHUB_", "CI_"))}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    for key, value in variables.items():
        env[key] = str(value)
    env.update(overrides)
    unresolved = {k: v for k, v in env.items() if "${{" in v}
    assert not unresolved, f"the test must supply these secrets: {sorted(unresolved)}"
    return env


def run_github(workflow: Any, work: Path, overrides: dict[str, str]) -> Run:
    """Run the workflow's `run:` steps in order, stopping at the first that fails."""
    (job,) = workflow["jobs"].values()
    env = _base_env(job.get("env", {}), overrides)
    github_env = work / ".github_env"
    github_env.touch()
    env.update(GITHUB_ENV=str(github_env), GITHUB_SHA="0123abc", GITHUB_RUN_ID="42")
    run = Run()
    for step in job["steps"]:
        if "run" not in step:
            continue  # `uses:` steps (checkout, setup-python) are GitHub's own actions
        if step.get("id") == "install":
            continue  # the package under test is installed in this session already
        code, output = _bash(step["run"], env, work)
        run.codes[step["name"]] = code
        run.log += f"--- {step['name']} (exit {code})\n{output}"
        for line in github_env.read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        if code != 0:
            break
    return run


def run_gitlab(pipeline: Any, work: Path, overrides: dict[str, str]) -> Run:
    """Run the job's `script:` lines in one shell, stopping at the first that fails."""
    (job,) = (v for k, v in pipeline.items() if isinstance(v, dict) and "script" in v)
    env = _base_env(job.get("variables", {}), overrides)
    env.update(CI_COMMIT_SHA="0123abc", CI_PIPELINE_ID="42")
    # before_script only installs the package, which this session has already.
    code, output = _bash("\n".join(job["script"]) + "\n", env, work)
    return Run(codes={"script": code}, log=output)


class Approvers(threading.Thread):
    """The approvers, in another thread: they sign (or reject) once the pipeline has filed."""

    def __init__(self, uri: str, policy: str, name: str, version: str, decision: str) -> None:
        super().__init__(daemon=True)
        self.args_ = (uri, policy, name, version, decision)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            _sign_when_filed(*self.args_)
        except BaseException as exc:  # surfaced by the test after join()
            self.error = exc

    def finish(self) -> None:
        self.join(timeout=60)
        if self.error is not None:
            raise self.error


def _sign_when_filed(uri: str, policy: str, name: str, version: str, decision: str) -> None:
    """As the approvers: wait for the pipeline's request, then sign it off or reject it."""
    deadline = time.monotonic() + 90
    reader = ApprovalClient(uri, uri, policy=policy, actor="bob")
    while time.monotonic() < deadline:
        try:
            if reader.get_request(name, version).status.value == "pending":
                break
        except RequestNotFound:
            pass
        time.sleep(0.3)
    if decision == "reject":
        ApprovalClient(uri, uri, policy=policy, actor="erin").reject(name, version, "drift")
        return
    for actor in ("bob", "carol", "dave"):
        ApprovalClient(uri, uri, policy=policy, actor=actor).approve(name, version)


@pytest.fixture
def pipeline_setup(
    mlflow_server: Server, tmp_path: Path
) -> tuple[str, str, dict[str, str], Path, str]:
    """A freshly registered version on the real server, and the job's secrets and variables."""
    name = unique_name("fraud-model")
    (version,) = register_versions(mlflow_server.uri, name, 1)
    policy_path = "deploy/approvals-policy.yaml"
    work = _workspace(tmp_path, policy_path)
    overrides = {
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "MLFLOW_TRACKING_USERNAME": "ci-bot",
        "MLFLOW_TRACKING_PASSWORD": "unused-without-auth",
        "MODEL_NAME": name,
        "MLFLOW_APPROVALS_WAIT_INTERVAL": "1s",
        "MLFLOW_APPROVALS_WAIT_TIMEOUT": "90s",
        "TEST_REGISTERED_VERSION": version,
    }
    return name, version, overrides, work, str(work / policy_path)


@pytest.mark.server
@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_github_workflow_deploys_only_after_signoff(
    pipeline_setup: tuple[str, str, dict[str, str], Path, str], mlflow_server: Server, decision: str
) -> None:
    """The documented GitHub workflow deploys after sign-off, and fails with exit 4 on rejection."""
    name, version, overrides, work, policy = pipeline_setup
    signer = Approvers(mlflow_server.uri, policy, name, version, decision)
    signer.start()
    run = run_github(documented_yaml("github-actions"), work, overrides)
    signer.finish()

    mv = MlflowClient(mlflow_server.uri, mlflow_server.uri).get_model_version(name, version)
    if decision == "approve":
        assert run.failed is None, run.log
        assert list(run.codes) == [
            "Train and register a new version", "Request Production", "Wait for sign-off", "Deploy"
        ]  # fmt: skip
        assert (work / "deployed.txt").read_text().strip() == f"models:/{name}/{version}"
        assert mv.current_stage == "Production"
        assert "pending at level 2 of 2" in run.log or "applied by dave" in run.log
    else:
        assert run.failed == ("Wait for sign-off", 4), run.log
        assert not (work / "deployed.txt").exists()
        assert mv.current_stage == "None"
        assert "rejected by erin" in run.log


@pytest.mark.server
def test_gitlab_job_deploys_after_signoff(
    pipeline_setup: tuple[str, str, dict[str, str], Path, str], mlflow_server: Server
) -> None:
    """The documented GitLab CI job waits for sign-off, then deploys the promoted version."""
    name, version, overrides, work, policy = pipeline_setup
    signer = Approvers(mlflow_server.uri, policy, name, version, "approve")
    signer.start()
    run = run_gitlab(documented_yaml("gitlab-ci"), work, overrides)
    signer.finish()
    assert run.failed is None, run.log
    assert (work / "deployed.txt").read_text().strip() == f"models:/{name}/{version}"
    mv = MlflowClient(mlflow_server.uri, mlflow_server.uri).get_model_version(name, version)
    assert mv.current_stage == "Production"
