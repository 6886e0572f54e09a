"""Prefect flow ``training-pipeline``: the dvc.yaml stages as tasks, watched in the Prefect UI.

Every stage task runs ``dvc repro --single-item <stage>`` (:mod:`visionops.orchestrate.stages`), so
this flow and a plain ``dvc repro`` do exactly the same work and skip exactly the same stages;
``dvc.lock`` and the DVC cache stay the single record of what is up to date. Logic lives in the
library; this file only wires it to Prefect (tasks, retries, logs, artifacts).

Each task waits for the one before it (``wait_for``), so the flow-run graph in the UI is the
chain apply-params -> version-data -> validate -> ... -> register [-> dvc-push -> commit-lineage];
task runs are named like their tasks (no random suffix). The report and the per-class table are
created in the flow body, so they belong to the flow run, not to a task run.

Run once, now (local temporary Prefect server unless ``PREFECT_API_URL`` is set)::

    python flows/pipeline.py [--force] [--push] [--commit] [--set train.head_epochs=1]
                             [--project DIR]

Scheduled: ``flows/serve_deployment.py`` (``make deploy``). Guide: ``docs/ORCHESTRATION.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

from visionops.config import load_config
from visionops.offline import apply_offline_env
from visionops.orchestrate import stages as orchestrate
from visionops.orchestrate import version_data as data_versioning
from visionops.orchestrate.commit_lineage import LineageCommit, commit_lineage
from visionops.orchestrate.override_params import ParamChange, override_params
from visionops.orchestrate.remote_sync import run_synced_stage
from visionops.orchestrate.run_report import PipelineRun, build_report, per_class_rows
from visionops.orchestrate.stages import PIPELINE_STAGES, StageResult
from visionops.orchestrate.version_data import DataVersion
from visionops.paths import stage_paths

PROJECT = Path(__file__).resolve().parents[1]
LOCK_TIMEOUT_S = 6 * 3600  # a second run waits this long for the first before failing
REPORT_KEY = "visionops-pipeline-report"
TABLE_KEY = "visionops-per-class-metrics"


def _transient_only(task, task_run, state) -> bool:
    """Retry DVC lock contention and remote hiccups, never a deterministic stage failure."""
    exc = state.data
    if not isinstance(exc, BaseException):
        try:
            state.result(raise_on_failure=True)
        except Exception as raised:  # noqa: BLE001 - we only classify it
            exc = raised
    return isinstance(exc, orchestrate.Transient)


_RETRY = {"retries": 3, "retry_delay_seconds": [10, 30, 90], "retry_condition_fn": _transient_only}


@task(name="apply-params", task_run_name="apply-params", cache_policy=NO_CACHE)
def apply_params(project: str, params: dict[str, Any]) -> list[ParamChange]:
    changes = override_params(Path(project) / "params.yaml", params)
    logger = get_run_logger()
    for change in changes:
        logger.info("params.yaml %s", change)
    if params and not changes:
        logger.info("params.yaml already holds every override: nothing written")
    return changes


@task(name="version-data", task_run_name="version-data", cache_policy=NO_CACHE, **_RETRY)
def version_data(project: str) -> DataVersion:
    logger = get_run_logger()
    cfg = load_config(Path(project) / "params.yaml")
    result = data_versioning.version_data(project, cfg.base.data_dir, on_line=logger.info)
    logger.info(result.summary())
    return result


@task(cache_policy=NO_CACHE, **_RETRY)
def dvc_stage(
    project: str,
    stage: str,
    force: bool,
    experiment: str | None = None,
    dvc_remote: str | None = None,
) -> StageResult:
    logger = get_run_logger()
    result = run_synced_stage(
        project, stage, dvc_remote, force=force, on_line=logger.info, experiment=experiment
    )
    logger.info(result.summary())
    return result


STAGE_TASKS = {s: dvc_stage.with_options(name=s, task_run_name=s) for s in PIPELINE_STAGES}


@flow(
    name="visionops-stage",
    description="One dvc.yaml stage (dvc repro --single-item), for a stage routed to its own "
    "work pool (train on the GPU pool); the training-pipeline flow starts it as a subflow run.",
    persist_result=True,  # the caller reads the StageResult back (docs/DEPLOY.md: result storage)
    result_serializer="json",
)
def stage_flow(
    project: str,
    stage: str,
    force: bool = False,
    experiment: str | None = None,
    dvc_remote: str | None = None,
) -> dict[str, Any]:
    """Run one stage on whichever worker picked this flow run; returns the StageResult dict."""
    apply_offline_env()
    root = str(Path(project).resolve())
    result = STAGE_TASKS[stage](root, stage, force, experiment, dvc_remote)
    return result.to_dict()


def run_routed_stage(
    deployment: str,
    project: str,
    stage: str,
    force: bool,
    experiment: str | None,
    dvc_remote: str | None,
) -> StageResult:
    """Run ``stage`` as a subflow run of ``deployment`` (on its own work pool) and wait for it.

    ``run_deployment`` called in a flow links the new flow run to this one (the UI shows it as
    a subflow); only a worker of the deployment's pool can execute it."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    logger.info("stage '%s': submitting to deployment %s", stage, deployment)
    child = run_deployment(
        name=deployment,
        parameters={
            "project": project,
            "stage": stage,
            "force": force,
            "experiment": experiment,
            "dvc_remote": dvc_remote,
        },
        flow_run_name=stage,
        timeout=None,
        poll_interval=2,
        as_subflow=True,
    )
    state = child.state
    where = f"flow run {child.name} on work pool {child.work_pool_name}"
    if state is None or not state.is_completed():
        name = state.name if state else "unknown"
        message = (state.message if state else "") or "see its logs in the Prefect UI"
        raise orchestrate.StageFailed(stage, f"{where} ended {name}: {message}")
    logger.info("stage '%s': %s completed", stage, where)
    try:
        return StageResult(**state.result())
    except Exception as exc:  # noqa: BLE001 - the stage completed; only its summary is missing
        logger.warning("stage '%s': result unreadable (%s); reported as ran", stage, exc)
        return StageResult(stage, "ran", 0.0, f"{deployment} ({where})")


@task(name="dvc-push", task_run_name="dvc-push", cache_policy=NO_CACHE, **_RETRY)
def push_data(project: str) -> str:
    data_versioning.push(project, on_line=get_run_logger().info)
    return f"dvc push from {project}: done"  # a fresh object: what the next task waits for


@task(name="commit-lineage", task_run_name="commit-lineage", cache_policy=NO_CACHE)
def commit_run_lineage(project: str) -> LineageCommit:
    """git-commit data.dvc, dvc.lock and params.yaml; point the version's git_commit tag at it."""
    logger = get_run_logger()
    cfg = load_config(Path(project) / "params.yaml")
    result = commit_lineage(cfg, flow_run=str(flow_run.get_name() or ""), on_line=logger.info)
    logger.info(result.summary())
    return result


@task(name="record-in-mlflow", task_run_name="record-in-mlflow", cache_policy=NO_CACHE)
def record_in_mlflow(project: str, overrides: list[ParamChange]) -> str | None:
    """Tag the training run with this flow run and the overrides it applied."""
    cfg = load_config(Path(project) / "params.yaml")
    tags = {
        "prefect.flow_run_id": str(flow_run.get_id()),
        "prefect.flow_run_name": str(flow_run.get_name()),
    }
    if overrides:
        tags["visionops.param_overrides"] = json.dumps({c.key: c.new for c in overrides})
    run_id = orchestrate.tag_training_run(project, stage_paths(cfg).train_run, tags)
    get_run_logger().info("MLflow run %s tagged: %s", run_id, ", ".join(tags))
    return run_id


def publish_report(project: str, run: PipelineRun) -> str:
    """The report and the per-class table as artifacts of the flow run (called in the flow body:
    created inside a task, they would belong to that task run and show "Flow run: None")."""
    cfg = load_config(Path(project) / "params.yaml")
    markdown = build_report(cfg, run)
    create_markdown_artifact(
        markdown,
        key=REPORT_KEY,
        description="data version, counts, validation warnings, test metrics, champion decision",
    )
    rows = per_class_rows(cfg) if "evaluate" in run.succeeded else []
    if rows:
        create_table_artifact(rows, key=TABLE_KEY, description="test-set metrics per class")
    return markdown


@flow(
    name="training-pipeline",
    description="VisionOps: version data/, then validate, split, train, evaluate, export and "
    "register through `dvc repro` (unchanged stages are skipped).",
)
def training_pipeline(
    force: bool = False,
    params: dict[str, Any] | None = None,
    push: bool = False,
    project: str | None = None,
    commit: bool = False,
    train_deployment: str | None = None,
    dvc_remote: str | None = None,
) -> dict[str, str]:
    """Run the whole pipeline once; returns ``{stage: ran|skipped|restored}``.

    Args:
        force: rerun every stage even when DVC finds it up to date (``dvc repro --force``).
        params: dotted overrides, e.g. ``{"train.head_epochs": 1}``; written to params.yaml first
            (so a later ``dvc repro`` reproduces this run) and tagged on the MLflow training run.
        push: ``dvc push`` data and outputs to the default DVC remote after a successful run.
        project: the project folder (default: the one holding this ``flows/`` folder).
        commit: after a fully successful run, ``git commit`` data.dvc, dvc.lock and params.yaml
            (only those, only if changed) and move the registered version's ``git_commit`` tag
            to that commit, so the version can be checked out (``visionops reproduce``).
        train_deployment: run ``train`` as a subflow run of this deployment of the
            ``visionops-stage`` flow (e.g. ``visionops-stage/visionops-gpu``, on a GPU work pool)
            instead of in this flow run; ``visionops stack up`` sets it.
        dvc_remote: a DVC remote shared by the workers: each stage pulls its inputs from it and
            pushes its outputs to it, so stages need no shared folder.
    """
    apply_offline_env()
    root = str(Path(project).resolve() if project else PROJECT)
    logger = get_run_logger()
    run = PipelineRun(name=str(flow_run.get_name() or ""))
    with orchestrate.pipeline_lock(root, timeout_s=LOCK_TIMEOUT_S, on_wait=logger.info):
        finished = False
        try:
            run.overrides = apply_params(root, params or {})
            # A run that changed params is an experiment: register tags its version and moves
            # no alias unless register.promote_experiments is true (docs/REGISTRY.md).
            experiment = f"prefect-{run.name}" if run.overrides else None
            run.data = version_data(root, wait_for=[run.overrides])
            # Each task waits for the previous one: the graph shows the chain, in order.
            upstream: Any = run.data
            for stage, stage_task in STAGE_TASKS.items():
                run.failed_stage = stage
                if stage == "train" and train_deployment:
                    upstream = run_routed_stage(
                        train_deployment, root, stage, force, experiment, dvc_remote
                    )
                else:
                    upstream = stage_task(
                        root, stage, force, experiment, dvc_remote, wait_for=[upstream]
                    )
                run.stages.append(upstream)
            run.failed_stage = None
            if push:
                upstream = push_data(root, wait_for=[upstream])
                run.pushed = True
            if commit:
                commit_run_lineage(root, wait_for=[upstream])
            finished = True
        except Exception as exc:
            run.failure = str(exc)
            raise
        finally:
            if not finished and run.failure is None:
                run.failure = "interrupted (cancelled or the process was stopped)"
            _finish(root, run, logger)
    return run.statuses()


def _finish(root: str, run: PipelineRun, logger) -> None:
    """Report and MLflow tags, also after a failed stage; their own failure never hides it."""
    try:
        if "train" in run.succeeded and (run.overrides or run.statuses()["train"] == "ran"):
            record_in_mlflow(root, run.overrides, wait_for=run.stages[-1:])
    except Exception as exc:  # noqa: BLE001
        logger.warning("could not tag the MLflow run: %s", exc)
    try:
        publish_report(root, run)
    except Exception as exc:  # noqa: BLE001
        logger.warning("could not publish the run report: %s", exc)


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. train.head_epochs=1")
    return key.strip(), yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the training-pipeline flow once, now.")
    parser.add_argument("--force", action="store_true", help="rerun every stage")
    parser.add_argument("--push", action="store_true", help="dvc push after success")
    parser.add_argument(
        "--commit",
        action="store_true",
        help="git commit data.dvc, dvc.lock, params.yaml after success (clean lineage)",
    )
    parser.add_argument(
        "--set",
        action="append",
        type=_override,
        default=[],
        metavar="KEY=VALUE",
        help="param override written to params.yaml (repeatable)",
    )
    parser.add_argument("--project", default=None, help=f"project folder (default {PROJECT})")
    args = parser.parse_args(argv)
    apply_offline_env()
    # Without PREFECT_API_URL a temporary server starts first; on a busy machine it needs > 20 s.
    timeout = max(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), 120)
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: timeout}):
        state = training_pipeline(
            force=args.force,
            params=dict(args.set) or None,
            push=args.push,
            project=args.project,
            commit=args.commit,
            return_state=True,
        )
    if not state.is_completed():
        print(f"error: {state.message}", file=sys.stderr)
        return 1
    run_id = state.state_details.flow_run_id
    print(json.dumps({"flow_run_id": str(run_id), "stages": state.result()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
