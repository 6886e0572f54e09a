"""``visionops sweep``: arguments and the results table; the work is in ``orchestrate/sweep``."""

from __future__ import annotations

import argparse
import sys

from visionops.cli.tables import table

HELP = "queue a grid / random search from a search-space file on DVC's experiment queue"
DESCRIPTION = (
    HELP + ". Each point becomes `dvc exp run --queue -n <name> -S key=value ...`; --run runs "
    "the queue and prints the results best first by register.metric. Promote the winner with "
    "`dvc exp apply <name>`, `git commit`, `dvc repro` (docs/ORCHESTRATION.md, 'Sweeps')."
)


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help=HELP, description=DESCRIPTION)
    p.add_argument(
        "space", nargs="?", default="sweep.yaml", help="search-space file (default: sweep.yaml)"
    )
    p.add_argument("--project", default=".", help="the git + DVC project folder (default: .)")
    p.add_argument("--n", type=int, default=None, help="random points (replaces the file's n:)")
    p.add_argument("--seed", type=int, default=None, help="random seed (replaces the file's)")
    p.add_argument(
        "--name", default=None, help="experiment name prefix (default: sweep-<4 hex digits>)"
    )
    p.add_argument(
        "--run", action="store_true", help="run the queue now (dvc exp run --run-all) and wait"
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        help="queue workers with --run (default 1: one training already uses every core)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check the file and list the points; queue nothing"
    )
    p.add_argument(
        "--show", metavar="PREFIX", default=None, help="print the table of an earlier sweep"
    )
    p.set_defaults(func=call)


def _param(value: object) -> object:
    """Swept values as written (0.000299, not 0.0003); the table rounds other floats."""
    return f"{value:g}" if isinstance(value, float) else value


def render(result) -> str:
    """Experiments best first: swept params, test and validation scores, training seconds."""
    metric = result.metric
    other = "accuracy" if metric == "macro_f1" else "macro_f1"
    leaves = [k.rsplit(".", 1)[-1] for k in result.keys]
    pairs = zip(result.keys, leaves, strict=True)
    labels = [leaf if leaves.count(leaf) == 1 else k for k, leaf in pairs]
    headers = ["experiment", *labels, f"test {metric}", f"test {other}"]
    headers += [f"val {metric}", "train s", "status"]
    rows = [
        [
            r.name,
            *(_param(r.params.get(k)) for k in result.keys),
            r.test.get(metric),
            r.test.get(other),
            r.val.get(f"val_{metric}"),
            None if r.val.get("seconds") is None else f"{r.val['seconds']:.0f}",
            r.status,
        ]
        for r in result.rows
    ]
    numeric = range(1 + len(labels), len(headers) - 1)
    return table(headers, rows, numeric=numeric)


def call(args: argparse.Namespace) -> int:
    from visionops.orchestrate.sweep import run_sweep, show_sweep

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.show:
        result = show_sweep(args.project, args.show)
    else:
        result = run_sweep(
            args.project,
            args.space,
            n=args.n,
            seed=args.seed,
            prefix=args.name,
            run=args.run,
            jobs=args.jobs,
            dry_run=args.dry_run,
            on_line=progress,
        )
    print(render(result))
    if args.dry_run:
        print(f"\n{len(result.rows)} point(s); nothing queued (--dry-run)")
        return 0
    if not result.ran:
        print(
            f"\n{len(result.names)} experiment(s) queued. Run them: dvc queue start -j {args.jobs} "
            f"(then dvc queue status), or again with --run; the table: visionops sweep --show "
            f"{result.prefix}"
        )
        return 0
    print(f"\ncompare: {result.sort_by}")
    print(f"MLflow:  runs with tags.experiment LIKE '{result.prefix}-%'")
    best = next((r for r in result.rows if r.test.get(result.metric) is not None), None)
    if best is not None:
        print(
            f"promote: dvc exp apply {best.name} && git add params.yaml dvc.lock && "
            f"git commit -m '{best.name}' && dvc repro"
        )
    if result.failed:
        print(f"failed: {', '.join(result.failed)} (dvc queue logs <name>)", file=sys.stderr)
        return 1
    return 0
