"""``visionops`` command line: parses arguments and calls the library; no stage logic here."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any

import yaml

from visionops.errors import ConfigError, VisionOpsError
from visionops.offline import apply_offline_env

log = logging.getLogger("visionops")

STAGES = {
    "validate": "scan data/ into a manifest, check it with great-expectations, report problems",
    "split": "assign every usable image to train/val/test (stratified, hash-stable)",
    "train": "transfer-learn a classifier from the split; tracked in MLflow",
    "evaluate": "test-set metrics, confusion matrix, top-loss gallery",
    "export": "export the best checkpoint to ONNX and check parity with PyTorch",
    "register": "register the ONNX model in MLflow; move @champion only if it is better",
}

# Where each command's ``run(config)`` lives (imported only when the command runs).
STAGE_MODULES = {
    "validate": "data.validate",
    "split": "data.split",
    "train": "train",
    "lr_find": "train.lr_find",
    "evaluate": "evaluate.stage",
    "export": "export.stage",
    "register": "registry.register",
}

MODEL_HELP = "a .onnx file, models:/<name>@<alias> or models:/<name>/<version>"
TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the store in params.yaml)"
PRECISION_HELP = (
    "auto: the int8 model when the model has one that passed export's agreement gate, else "
    "fp32 (default); fp32 or int8 to force one (an error when there is no int8 model)"
)


def add_precision(p: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|int8`` (issue 12), passed on as ``Predictor(precision=...)``."""
    p.add_argument(
        "--precision", choices=("auto", "fp32", "int8"), default="auto", help=PRECISION_HELP
    )


def _version() -> str:
    import visionops

    return visionops.__version__


def _parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML (``16``, ``true``, ``[a, b]``); ConfigError if not."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.batch_size=16")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        where = f" at column {mark.column + 1}" if mark is not None else ""
        as_string = shlex.quote(f'{key}="{value}"')
        raise ConfigError(
            f"--set {key}: {value!r} is not valid YAML ({problem}{where}); fix the value, or "
            f"quote it to pass it as a string: --set {as_string}"
        ) from None


def _config(args: argparse.Namespace):
    from visionops.config import load_config

    overrides = dict(_parse_override(s) for s in getattr(args, "set", None) or [])
    return load_config(args.params, overrides=overrides)


def _run_stage(module: str, **kwargs: Any) -> Callable[[argparse.Namespace], Any]:
    def call(args: argparse.Namespace) -> Any:
        config = _config(args)  # a params/--set mistake fails before the stage's heavy imports
        stage = import_module(f"visionops.{STAGE_MODULES[module]}")
        return stage.run(config, **{k: getattr(args, v) for k, v in kwargs.items()})

    return call


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a param for this run, e.g. --set train.head_epochs=1 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visionops",
        description=(
            "Labeled images in, a versioned, validated, trained, evaluated, ONNX-exported and "
            "registered classifier out. Pipeline stages (run in order by `dvc repro`):\n"
            + "\n".join(f"  {name:<10} {text}" for name, text in STAGES.items())
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version"
    )
    # Not required: a bare `visionops` prints this help and exits 0 (see main()).
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", help="run `visionops COMMAND -h` for its options"
    )

    for name, text in STAGES.items():
        p = sub.add_parser(name, help=text, description=text)
        _add_common(p)
        if name == "train":
            p.add_argument(
                "--overfit-batch",
                action="store_true",
                help="drive one batch to ~100%% train accuracy (proves the setup learns)",
            )
            p.set_defaults(func=_run_stage("train", overfit_batch="overfit_batch"))
        else:
            p.set_defaults(func=_run_stage(name))

    text = "sweep the learning rate; write a loss-vs-LR plot and a suggestion"
    p = sub.add_parser("lr-find", help=text, description=text)
    _add_common(p)
    p.set_defaults(func=_run_stage("lr_find"))

    _add_inference_commands(sub)
    _add_champion_commands(sub)
    _add_reproduce_command(sub)
    import_module("visionops.cli.sweep").add_command(sub)
    import_module("visionops.cli.curate").add_commands(sub, _add_common)
    import_module("visionops.cli.stack").add_command(sub)
    return parser


def _add_inference_commands(sub: argparse._SubParsersAction) -> None:
    text = "classify images with an ONNX model (file or models:/ URI)"
    p = sub.add_parser("predict", help=text, description=text)
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--top-k", type=int, default=3, help="how many classes to list per image")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    add_precision(p)
    p.set_defaults(func=lambda a: import_module("visionops.cli.predict").predict(a))

    text = "accuracy and macro-F1 of a model on any labeled folder (ImageFolder)"
    p = sub.add_parser("evaluate-folder", help=text, description=text)
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("folder", help="a folder of <label>/<image> sub-folders (ImageFolder layout)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    add_precision(p)
    p.set_defaults(func=lambda a: import_module("visionops.cli.predict").evaluate_folder(a))

    text = "commit, data version, params, metrics and run of a model version"
    p = sub.add_parser("lineage", help=text, description=text)
    p.add_argument("model", help="models:/<name>@<alias> or models:/<name>/<version>")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    p.set_defaults(func=lambda a: import_module("visionops.cli.predict").lineage(a))

    text = "serve a model over HTTP (upload page at /)"
    p = sub.add_parser("serve", help=text, description=text)
    _add_common(p)
    p.add_argument("--model", default=None, help=MODEL_HELP + " (default: serve.model in params)")
    p.add_argument("--host", default=None, help="address to listen on (default: serve.host)")
    p.add_argument("--port", type=int, default=None, help="TCP port, 1-65535 (default: serve.port)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "int8"),
        default=None,
        help="auto: the int8 model when it passed export's gate, else fp32 (default: "
        "serve.precision)",
    )
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> None:
    config = _config(args)
    import_module("visionops.serve.server").main(args, config)


def _add_champion_commands(sub: argparse._SubParsersAction) -> None:
    def moved(record: dict) -> str:
        return (
            f"{record['model_name']}: @champion v{record['previous_champion'] or '-'} -> "
            f"v{record['version']} ({record['action']} by {record['by']} at {record['at']})"
        )

    p = sub.add_parser(
        "promote",
        help="give @champion to a registered version by hand (recorded: reason, user, time)",
    )
    p.add_argument("name", help="registered model name, e.g. visionops-classifier")
    p.add_argument("version", help="the version number to promote")
    p.add_argument("--reason", "-m", required=True, help="why (shown in the MLflow UI)")
    p.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)

    def promote(args: argparse.Namespace) -> int:
        from visionops.registry.champion import promote

        print(moved(promote(args.name, args.version, args.reason, args.tracking_uri)))
        return 0

    p.set_defaults(func=promote)

    p = sub.add_parser(
        "rollback", help="give @champion back to the version that held it before (recorded)"
    )
    p.add_argument("name", help="registered model name, e.g. visionops-classifier")
    p.add_argument("--reason", "-m", required=True, help="why (shown in the MLflow UI)")
    p.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)

    def rollback(args: argparse.Namespace) -> int:
        from visionops.registry.champion import rollback

        print(moved(rollback(args.name, args.reason, args.tracking_uri)))
        return 0

    p.set_defaults(func=rollback)


def _add_reproduce_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="rebuild a registered version from its commit + data in a temporary git worktree; "
        "compare split and test metric (exit 0 = reproduced)",
    )
    p.add_argument("model", help="models:/<name>@<alias> or models:/<name>/<version>")
    p.add_argument("--project", default=".", help="the project's git + DVC folder (default: .)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store holding the version")
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        help="rebuild a version registered from a dirty tree from its base commit",
    )
    p.add_argument("--tolerance", type=float, default=0.5, help="max |metric delta| in points")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def call(args: argparse.Namespace) -> int:
        from visionops.orchestrate.reproduce import reproduce

        result = reproduce(
            args.model,
            project=args.project,
            tracking_uri=args.tracking_uri,
            allow_dirty=args.allow_dirty,
            tolerance_pt=args.tolerance,
            on_line=lambda line: print(line, file=sys.stderr, flush=True),
        )
        print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
        return 0 if result.reproduced else 1

    p.set_defaults(func=call)


def main(argv: list[str] | None = None) -> int:
    apply_offline_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `visionops`: show what it can do (exit 0, not a usage error)
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    try:
        result = args.func(args)
    except VisionOpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if isinstance(result, int) and not isinstance(result, bool):
        return result  # a command's own exit code (e.g. predict: 1 when some file was unreadable)
    summary = getattr(result, "summary", None)
    if callable(summary):
        print(summary())
    elif isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
