"""``visionops review`` and ``visionops label``: arguments only; the pages live in ``curate/``."""

from __future__ import annotations

import argparse
from importlib import import_module
from pathlib import Path

REVIEW_HELP = (
    "walk label issues, outliers and near-duplicates in a local page; save to curation.csv"
)
LABEL_HELP = "label a folder of new images in a local page (Photo-Rater); finish copies into data/"
HOST_HELP = "address to listen on (default: 127.0.0.1, this machine only)"


def add_commands(sub: argparse._SubParsersAction, add_common) -> None:
    """``add_common`` adds --params/--set (from ``cli.main``)."""
    p = sub.add_parser(
        "review",
        help=REVIEW_HELP,
        description=REVIEW_HELP + ". Needs `dvc repro split` (near-duplicates) and a trained "
        "model (label issues, outliers); the next `dvc repro` applies the decisions "
        "(docs/CURATE.md).",
    )
    add_common(p)
    p.add_argument("--host", default="127.0.0.1", help=HOST_HELP)
    p.add_argument("--port", type=int, default=8011, help="TCP port (default: 8011)")
    p.set_defaults(func=_review)

    p = sub.add_parser(
        "label",
        help=LABEL_HELP,
        description=LABEL_HELP + ". ← / → pick between two classes, 1-9 among more, S skips, U "
        "undoes; decisions are saved as they are made (docs/CURATE.md).",
    )
    add_common(p)
    p.add_argument("folder", type=Path, help="a folder of unlabeled images (searched recursively)")
    p.add_argument("--classes", nargs="+", required=True, help="the class names, e.g. like dislike")
    p.add_argument(
        "--model",
        default=None,
        help="model that puts the most uncertain images first (default: serve.model, the "
        "champion, when it exists; 'none' for file order)",
    )
    p.add_argument(
        "--state", type=Path, default=None, help="decisions file (default: .visionops/labels/)"
    )
    p.add_argument("--host", default="127.0.0.1", help=HOST_HELP)
    p.add_argument("--port", type=int, default=8012, help="TCP port (default: 8012)")
    p.set_defaults(func=_label)


def _config(args: argparse.Namespace):
    return import_module("visionops.cli.main")._config(args)


def _review(args: argparse.Namespace) -> int:
    config = _config(args)
    import_module("visionops.curate.review_app").run(config, host=args.host, port=args.port)
    return 0


def _label(args: argparse.Namespace) -> int:
    config = _config(args)
    import_module("visionops.curate.label_app").run(
        config, args.folder, args.classes, args.model, args.state, args.host, args.port
    )
    return 0
