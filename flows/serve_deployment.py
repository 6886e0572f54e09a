"""Deploy ``training-pipeline`` as ``training-pipeline/scheduled`` on the cron in ``params.yaml``
(``schedule.cron``, ``schedule.timezone``), against the Prefect server at ``PREFECT_API_URL``.

Two modes (guide: docs/ORCHESTRATION.md):

* serve (default, ``make deploy``): this process registers the deployment and its schedule, then
  executes the scheduled runs and those started from the UI or ``prefect deployment run``. Stop it
  (before the server) and the deployment is paused (runs would only sit in "Late" without it).
* ``--pool NAME``: register the deployment on a work pool (process, Docker, Kubernetes) and exit;
  a ``prefect worker start --pool NAME`` executes the runs, pulling the code from ``--source``
  (a git URL or a folder the worker can read; default: this project folder).

    python flows/serve_deployment.py [--name scheduled] [--project DIR]
    python flows/serve_deployment.py --pool visionops [--source URL] [--image IMAGE]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline import PROJECT, training_pipeline
from prefect.schedules import Cron

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
    return parser


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
    options = {
        "name": args.name,
        "schedules": [Cron(cfg.schedule.cron, timezone=cfg.schedule.timezone)],
        "parameters": {"project": str(project)} if args.project else {},
        "tags": ["visionops"],
        "description": f"VisionOps pipeline, cron '{cfg.schedule.cron}' ({cfg.schedule.timezone})"
        " from params.yaml schedule.cron",
    }
    if args.pool is None:
        # limit=1: one run at a time from this process (the pipeline lock guards the rest).
        training_pipeline.serve(**options, limit=1)
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
        f"start a worker: prefect worker start --pool {args.pool}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
