"""``visionops stack up|down|status``: arguments and printing; the work is in visionops.stack."""

from __future__ import annotations

import argparse
import json

HELP = "PostgreSQL + MLflow server + Prefect server and work pools on 127.0.0.1 (.stack/)"
DESCRIPTION = (
    HELP + ". `up` starts them detached and deploys the pipeline (train on its own pool), "
    "`status` prints every URL and whether it answers, `down` stops what `up` started "
    "(docs/DEPLOY.md)."
)


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help=HELP, description=DESCRIPTION)
    p.add_argument(
        "action",
        choices=("up", "down", "status"),
        help="up: start and deploy; status: URLs and health; down: stop what up started",
    )
    p.add_argument("--project", default=".", help="project folder holding .stack/ (default: .)")
    p.add_argument("--dvc-remote", default=None, help="up: DVC remote shared by the stages")
    for name in ("postgres", "mlflow", "prefect"):
        p.add_argument(
            f"--{name}-port", type=int, default=None, help="up: port (default: a free one)"
        )
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.set_defaults(func=call)


def call(args: argparse.Namespace) -> int:
    from visionops.stack import lifecycle

    if args.action == "up":
        ports = lifecycle.Ports(args.postgres_port, args.mlflow_port, args.prefect_port)
        lifecycle.up(args.project, ports=ports, dvc_remote=args.dvc_remote, on_line=_say)
        _print_status(args.project, as_json=False)
        print("Use it from a shell:")
        for line in lifecycle.env_lines(args.project):
            print(f"  {line}")
        return 0
    if args.action == "down":
        lifecycle.down(args.project, on_line=_say)
        return 0
    return _print_status(args.project, as_json=args.json)


def _say(line: str) -> None:
    print(line, flush=True)


def _print_status(project: str, as_json: bool) -> int:
    from visionops.stack import lifecycle

    rows = lifecycle.status(project)
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no stack recorded here: visionops stack up")
    for row in [] if as_json else rows:
        state = "running" if row["running"] else "STOPPED"
        if row["answering"] is not None:
            state += ", answering" if row["answering"] else ", NOT answering"
        print(f"{row['name']:<26} pid {row['pid']:<8} {state:<22} {row['url']}")
    return 0 if rows and all(r["running"] for r in rows) else 1
