"""``visionops`` command line: parses arguments and calls the library; no stage logic here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any

import yaml

from visionops.errors import VisionOpsError
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


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise VisionOpsError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.batch_size=16")
    return key.strip(), yaml.safe_load(value)


def _config(args: argparse.Namespace):
    from visionops.config import load_config

    overrides = dict(_parse_override(s) for s in getattr(args, "set", None) or [])
    return load_config(args.params, overrides=overrides)


def _run_stage(module: str, **kwargs: Any) -> Callable[[argparse.Namespace], Any]:
    def call(args: argparse.Namespace) -> Any:
        stage = import_module(f"visionops.{STAGE_MODULES[module]}")
        return stage.run(_config(args), **{k: getattr(args, v) for k, v in kwargs.items()})

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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

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

    p = sub.add_parser(
        "lr-find", help="sweep the learning rate; write a loss-vs-LR plot and a suggestion"
    )
    _add_common(p)
    p.set_defaults(func=_run_stage("lr_find"))

    _add_inference_commands(sub)
    return parser


def _add_inference_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images with an ONNX model (file or models:/ URI)")
    p.add_argument("model", help="a .onnx file, models:/<name>@<alias> or models:/<name>/<version>")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/ URIs")
    p.set_defaults(func=lambda a: import_module("visionops.cli.predict").predict(a))

    p = sub.add_parser(
        "evaluate-folder",
        help="accuracy and macro-F1 of a model on any labeled folder (ImageFolder)",
    )
    p.add_argument("model")
    p.add_argument("folder")
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=lambda a: import_module("visionops.cli.predict").evaluate_folder(a))

    p = sub.add_parser(
        "lineage", help="commit, data version, params, metrics and run of a model version"
    )
    p.add_argument("model", help="models:/<name>@<alias> or models:/<name>/<version>")
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=lambda a: import_module("visionops.cli.predict").lineage(a))

    p = sub.add_parser("serve", help="serve a model over HTTP (upload page at /)")
    _add_common(p)
    p.add_argument("--model", default=None, help="default: serve.model in params")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=lambda a: import_module("visionops.serve.server").main(a, _config(a)))


def main(argv: list[str] | None = None) -> int:
    apply_offline_env()
    args = build_parser().parse_args(argv)
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
