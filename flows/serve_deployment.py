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

from pipeline import PROJECT, training_pipeline
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

from visionops.config import load_config
from visionops.offline import apply_offline_env

DEPLOYMENT = "scheduled"
ENTRYPOINT = "flows/pipeline.py:training_pipeline"


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
    return parser


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
    deployment_id = training_pipeline.from_source(source=source, entrypoint=ENTRYPOINT).deploy(
        **options,
        work_pool_name=args.pool,
        image=args.image,
        build=False,  # images are built by your CI (docs/ORCHESTRATION.md), not here
        push=False,
    )
    print(
        f"deployment training-pipeline/{args.name} ({deployment_id}) on work pool {args.pool}; "
        f"start a worker: {prefect_command('worker', 'start', '--pool', args.pool)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
