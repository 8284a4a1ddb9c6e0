"""The story `make demo` tells: a model is requested for Production and signed level by level.

It runs on a temporary ``sqlite:///`` registry (or the tracking URI given), with real MLflow
calls throughout, and checks each step as it goes: the return value is 0 only if every step
came out as the story says.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow_approvals.testing import EXAMPLE_POLICY

DEMO_POLICY: dict[str, Any] = copy.deepcopy(EXAMPLE_POLICY)
DEMO_POLICY["rules"][0]["checks"] = [
    {"metric": "val_auc", "min": 0.9},
    {"artifact": "README.md"},
]


class _Story:
    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.failures: list[str] = []
        self.step = 0

    def chapter(self, text: str) -> None:
        self.step += 1
        self.echo("")
        self.echo(f"{self.step}. {text}")

    def say(self, text: str) -> None:
        self.echo(f"   {text}")

    def check(self, ok: bool, what: str) -> None:
        self.say(("ok: " if ok else "UNEXPECTED: ") + what)
        if not ok:
            self.failures.append(what)


def _register(client: Any, root: Path, name: str) -> str:
    exp_id = client.create_experiment("demo-models", artifact_location=str(root / "models"))
    run = client.create_run(exp_id, run_name="train-fraud-model")
    client.log_metric(run.info.run_id, "val_auc", 0.94)
    client.log_text(run.info.run_id, "artifact_path: model\nflavors: {}\n", "model/MLmodel")
    client.log_text(run.info.run_id, "# fraud-model\nmodel card\n", "model/README.md")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    mv = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    return str(mv.version)


def run_demo(echo: Callable[[str], None] = print, tracking_uri: str | None = None) -> int:
    """Tell the story; return 0 when every step behaved as described, else 1."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    from mlflow_approvals.client import ApprovalClient
    from mlflow_approvals.errors import ApprovalPending, NotAuthorized

    # after the import: MLflow configures its own logger (INFO) when it is first imported
    logging.getLogger("mlflow").setLevel(logging.ERROR)

    root = Path(tempfile.mkdtemp(prefix="mlflow-approvals-demo-"))
    uri = tracking_uri or f"sqlite:///{root / 'registry.db'}"
    story = _Story(echo)
    name = "fraud-model"

    def as_(actor: str) -> ApprovalClient:
        return ApprovalClient(uri, uri, policy=DEMO_POLICY, actor=actor)

    echo("mlflow-approvals demo")
    echo(f"registry: {uri}")
    echo("policy: promoting fraud-* to Production (or @champion) needs, in order,")
    echo("        level 1: one data-scientist and one ml-engineer; level 2: one business-owner")
    echo("        checks first: val_auc >= 0.9 on the source run, and a README.md model card")
    echo("        people: alice, bob (data-scientist); carol, erin (ml-engineer);")
    echo("                dave, frank (business-owner); root (admin: may cancel any request)")

    story.chapter("A data scientist registers a new version of fraud-model.")
    version = _register(as_("alice"), root, name)
    story.say(f"registered {name} version {version}")

    story.chapter("A CI job runs the policy's checks before anyone is asked to sign.")
    checked = as_("alice").check(name, version, stage="Production")
    for line in checked.lines():
        story.say(line)
    story.check(checked.passed, "every check passes (`mlflow-approvals check` exits 0)")

    story.chapter("Alice asks MLflow to move it to Production, as she always has.")
    try:
        as_("alice").transition_model_version_stage(
            name, version, "Production", archive_existing_versions=True
        )
        story.check(False, "the transition should have waited for sign-off")
        return 1
    except ApprovalPending as pending:
        request = pending.request
        story.say(f"ApprovalPending: {request.describe()}")
        story.say(f"signatures will be bound to the model files: {request.digest}")
    stage = as_("alice").get_model_version(name, version).current_stage
    story.check(stage == "None", f"nothing changed yet: the version is still in stage {stage}")

    story.chapter("Alice tries to approve her own request.")
    try:
        as_("alice").approve(name, version)
        story.check(False, "a self-approval should be refused")
    except NotAuthorized as exc:
        story.check(True, f"refused: {exc.message}")

    story.chapter("Dave, the business owner, tries to sign before the engineers have.")
    try:
        as_("dave").approve(name, version)
        story.check(False, "an out-of-turn sign-off should be refused")
    except NotAuthorized as exc:
        story.check(True, f"refused: {exc.message}")

    story.chapter("Bob (data scientist) and Carol (ML engineer) review and sign level 1.")
    after = as_("bob").approve(name, version, comment="metrics reviewed: AUC 0.94 on holdout")
    story.say(f"bob signed: {after.describe()}")
    after = as_("carol").approve(name, version, comment="latency and drift checks pass")
    story.say(f"carol signed: {after.describe()}")
    story.check(after.open_level == 2, "level 1 is complete and level 2 is open")

    story.chapter("Dave signs level 2: the sign-off that completes the policy applies it.")
    after = as_("dave").approve(name, version, comment="business impact accepted")
    story.say(after.describe())
    stage = as_("dave").get_model_version(name, version).current_stage
    story.check(
        after.status.value == "applied" and stage == "Production",
        f"{name} v{version} is now in stage {stage}",
    )

    story.chapter("The sign-off history, as an auditor reads it (21 CFR Part 11 §11.50).")
    for s in after.signoffs:
        when = s.time.strftime("%Y-%m-%d %H:%M:%S UTC")
        story.say(f"{s.display_name or s.actor:<8} {when}  {s.meaning}: {s.comment or ''}")

    verify = getattr(as_("auditor"), "verify_audit", None)
    story.chapter("An auditor verifies the tamper-evident audit log, offline.")
    try:
        report = verify(name) if verify is not None else None
    except ImportError:
        report = None
    if report is None:
        story.say("(audit verification is not available in this build)")
    else:
        for line in report.lines[-8:]:
            story.say(line)
        story.check(bool(report.ok), report.summary)

    echo("")
    if story.failures:
        echo(f"demo FAILED at: {'; '.join(story.failures)}")
        return 1
    echo("demo finished: every step behaved as the policy says.")
    echo(f"(the registry and its audit log are in {root})")
    return 0


def main() -> None:  # pragma: no cover - `python -m mlflow_approvals.demo`
    raise SystemExit(run_demo())


if __name__ == "__main__":  # pragma: no cover
    main()
