"""Deploy ``training-pipeline`` as ``training-pipeline/scheduled`` on the cron in ``params.yaml``
(``schedule.cron``, ``schedule.timezone``), against the Prefect server at ``PREFECT_API_URL``.

Two modes (guide: docs/ORCHESTRATION.md):

* serve (default, ``make deploy``): this process registers the deployment and its schedule, then
  executes the scheduled runs and those started from the UI or ``prefect deployment run``. Stop it
  (before the server) and the deployment is paused (runs would only sit in "Late" without it).
* ``--pool NAME``: register the deployment on a work pool (process, Docker, Kubernetes) and exit;
  a ``prefect worker start --pool NAME`` executes the runs, pulling the code from ``--source``
  (a git URL or a folder the worker can read; default: this project folder).

    python flows/serve_deployment.py [--name scheduled] [--project DIR] [--commit]
    python flows/serve_deployment.py --pool visionops [--source URL] [--image IMAGE]
    python flows/serve_deployment.py --pool visionops --train-pool visionops-gpu \
        [--concurrency-limit 1] [--create-pools] [--dvc-remote NAME]   # visionops stack up

``--commit`` makes ``commit: true`` the deployment's default parameter: every scheduled run then
git-commits ``data.dvc``, ``dvc.lock`` and ``params.yaml`` after success, so the versions it
registers point at a commit that can be checked out. Without it the default is ``commit: false``
(a run from the UI can still set it).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from pipeline import PROJECT, stage_flow, training_pipeline
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

from visionops.config import load_config
from visionops.offline import apply_offline_env

DEPLOYMENT = "scheduled"
ENTRYPOINT = "flows/pipeline.py:training_pipeline"
STAGE_ENTRYPOINT = "flows/pipeline.py:stage_flow"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", default=DEPLOYMENT, help=f"deployment (default {DEPLOYMENT})")
    parser.add_argument("--project", default=None, help=f"project folder (default {PROJECT})")
    parser.add_argument("--pool", default=None, help="deploy to this work pool instead of serving")
    parser.add_argument("--source", default=None, help="with --pool: git URL or folder of the code")
    parser.add_argument("--image", default=None, help="with --pool: Docker/Kubernetes image")
    parser.add_argument(
        "--commit",
        action="store_true",
        help="runs git-commit data.dvc, dvc.lock, params.yaml after success (default: off)",
    )
    parser.add_argument(
        "--train-pool",
        default=None,
        help="with --pool: run the train stage on this work pool (deployment "
        "visionops-stage/<pool>), e.g. visionops-gpu with train.device=cuda on its workers",
    )
    parser.add_argument(
        "--concurrency-limit",
        type=int,
        default=None,
        help="with --pool: at most this many runs of the deployment at once (the stack: 1)",
    )
    parser.add_argument(
        "--create-pools",
        action="store_true",
        help="with --pool: create the work pool(s) (process type) when absent",
    )
    parser.add_argument(
        "--crash-zombies-after",
        type=int,
        default=None,
        metavar="SECONDS",
        help="create the automation that marks a flow run Crashed when its heartbeats stop this "
        "long (a worker machine died); workers need PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30",
    )
    parser.add_argument(
        "--dvc-remote",
        default=None,
        help="stages pull their inputs from / push their outputs to this DVC remote",
    )
    return parser


def ensure_process_pool(name: str) -> None:
    """Create a process work pool with Prefect's default job template unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(
                WorkPoolCreate(name=name, type="process", base_job_template=template)
            )


def prefect_command(*args: str) -> str:
    """A ``prefect`` command line that works as typed in any terminal and folder: the ``prefect``
    beside this interpreter by absolute path (no activated venv needed) and the API URL set on
    the line itself (``make deploy`` sets it for its own process only)."""
    beside = Path(sys.executable).parent / "prefect"
    exe = str(beside) if beside.exists() else "prefect"
    api = PREFECT_API_URL.value()
    env = f"PREFECT_API_URL={shlex.quote(api)} " if api else ""
    return env + shlex.join([exe, *args])


def serving_message(deployment: str) -> str:
    """What ``make deploy`` prints once: how to trigger a run, where to watch it."""
    if not PREFECT_API_URL.value():
        return f"serving {deployment} on a temporary server (see the warning above)"
    lines = [
        f"Serving {deployment}: this process runs its scheduled and triggered runs "
        "(Ctrl-C stops it and pauses the schedule).",
        "Run it now, from any terminal:",
        f"  {prefect_command('deployment', 'run', deployment)}",
        "  (add --param force=true to rerun every stage, --watch to wait for the end)",
    ]
    if PREFECT_UI_URL.value():
        lines.append(f"Watch it: {PREFECT_UI_URL.value()}/deployments")
    return "\n".join(lines)


ZOMBIE_AUTOMATION = "visionops: crash flow runs whose heartbeats stopped"


def ensure_zombie_automation(within_s: int) -> None:
    """Prefect's recipe for zombie flow runs (docs: "Detect zombie flows"): after a heartbeat,
    expect another heartbeat or a final state within ``within_s``, else set the run Crashed, so
    a run whose worker died ends instead of staying Running and its parent flow run fails."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    try:
        Automation.read(name=ZOMBIE_AUTOMATION)
        return
    except ValueError:  # "Automation not found"
        pass
    Automation(
        name=ZOMBIE_AUTOMATION,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {within_s} s: its worker or machine died",
            )
        ],
    ).create()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    apply_offline_env()
    project = Path(args.project).resolve() if args.project else PROJECT
    cfg = load_config(project / "params.yaml")
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "warning: PREFECT_API_URL is not set, so the deployment lives in a temporary server "
            "no UI can see. Start `make ui` and `export PREFECT_API_URL=http://127.0.0.1:4200/api`"
            " (make deploy does this).",
            file=sys.stderr,
        )
    parameters = {"project": str(project)} if args.project else {}
    if args.commit:
        parameters["commit"] = True
    if args.dvc_remote:
        parameters["dvc_remote"] = args.dvc_remote
    options = {
        "name": args.name,
        "schedules": [Cron(cfg.schedule.cron, timezone=cfg.schedule.timezone)],
        "parameters": parameters,
        "tags": ["visionops"],
        "description": f"VisionOps pipeline, cron '{cfg.schedule.cron}' ({cfg.schedule.timezone})"
        " from params.yaml schedule.cron",
    }
    if args.pool is None:
        # Prefect's own starting message says `prefect deployment run ...`, which fails as typed
        # without an activated venv and PREFECT_API_URL in that terminal: print one that works.
        print(serving_message(f"{training_pipeline.name}/{args.name}"), flush=True)
        # limit=1: one run at a time from this process (the pipeline lock guards the rest).
        training_pipeline.serve(**options, limit=1, print_starting_message=False)
        return 0
    source = args.source or str(PROJECT)
    if args.create_pools:
        for pool in filter(None, (args.pool, args.train_pool)):
            ensure_process_pool(pool)
    if args.crash_zombies_after:
        ensure_zombie_automation(args.crash_zombies_after)
    if args.train_pool:
        # train on its own pool: a deployment of the one-stage flow that the pipeline calls
        # with run_deployment (a subflow run executed by that pool's workers).
        stage_id = stage_flow.from_source(source=source, entrypoint=STAGE_ENTRYPOINT).deploy(
            name=args.train_pool,
            work_pool_name=args.train_pool,
            image=args.image,
            build=False,
            push=False,
            tags=["visionops"],
            description=f"One VisionOps stage (train) on work pool {args.train_pool}",
            print_next_steps=False,
        )
        parameters["train_deployment"] = f"{stage_flow.name}/{args.train_pool}"
        print(f"deployment {stage_flow.name}/{args.train_pool} ({stage_id}) on {args.train_pool}")
    deployment_id = training_pipeline.from_source(source=source, entrypoint=ENTRYPOINT).deploy(
        **options,
        work_pool_name=args.pool,
        image=args.image,
        build=False,  # images are built by your CI (docs/ORCHESTRATION.md), not here
        push=False,
        concurrency_limit=args.concurrency_limit,
        print_next_steps=False,
    )
    print(
        f"deployment training-pipeline/{args.name} ({deployment_id}) on work pool {args.pool}; "
        f"start a worker: {prefect_command('worker', 'start', '--pool', args.pool)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
