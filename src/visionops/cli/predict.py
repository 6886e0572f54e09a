"""``visionops predict``, ``evaluate-folder`` and ``lineage``: parse, call, print. Torch-free.

Each prints tables for people, or JSON with ``--json``. Exit codes: 0 when every input was
classified, 1 when some input could not be read (its row says why; the others are still printed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from visionops.cli.tables import fields, table
from visionops.errors import VisionOpsError
from visionops.export.onnx_model import Prediction
from visionops.images import list_images
from visionops.inference import Predictor
from visionops.registry.lineage import describe
from visionops.registry.scoring import image_folder, score_labeled

log = logging.getLogger(__name__)


def _predictor(args: argparse.Namespace) -> Predictor:
    predictor = Predictor(
        args.model,
        tracking_uri=getattr(args, "tracking_uri", None),
        precision=getattr(args, "precision", "auto"),
    )
    version = f" (version {predictor.model_version})" if predictor.model_version else ""
    print(
        f"model: {predictor.source}{version}, {predictor.precision} ({predictor.model_path.name}) "
        f"on {predictor.provider}",
        file=sys.stderr,
    )
    return predictor


def _emit(text: str) -> None:
    """Print; a closed pipe (``visionops predict ... | head``) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # silence the exit flush


def format_table(predictions: list[Prediction]) -> str:
    """Fixed-width text table: file, label, probability, the top-k list (or the error)."""
    names = [p.source for p in predictions]
    width = min(max([len("file"), *map(len, names)]), 60)
    lines = [f"{'file':<{width}}  {'label':<16} {'prob':>6}  top-k"]
    for p, name in zip(predictions, names, strict=True):
        shown = name if len(name) <= width else "..." + name[-(width - 3) :]
        if p.error:
            lines.append(f"{shown:<{width}}  {'ERROR':<16} {'':>6}  {p.error}")
        else:
            top = ", ".join(f"{lab} {prob:.3f}" for lab, prob in p.top_k)
            lines.append(f"{shown:<{width}}  {p.label:<16} {p.probability:>6.3f}  {top}")
    return "\n".join(lines)


def predict(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise VisionOpsError(f"--top-k {args.top_k}: must be at least 1")
    files = list_images(args.images)
    if not files:
        raise VisionOpsError(f"no files in {', '.join(args.images)}")
    predictor = _predictor(args)
    predictions = predictor.predict(files, top_k=args.top_k)
    if args.json:
        out = {
            "model": predictor.source,
            "model_version": predictor.model_version,
            "precision": predictor.precision,
            "provider": predictor.provider,
            "predictions": [p.to_dict() for p in predictions],
        }
        _emit(json.dumps(out, indent=2))
    else:
        _emit(format_table(predictions))
    failed = sum(p.error is not None for p in predictions)
    if failed:
        print(f"{failed} of {len(predictions)} file(s) could not be classified", file=sys.stderr)
    return 1 if failed else 0


def evaluate_folder(args: argparse.Namespace) -> int:
    files, labels = image_folder(Path(args.folder))
    predictor = _predictor(args)
    report = score_labeled(predictor, files, labels, progress=True, description="evaluate-folder")
    out = {
        "model": predictor.source,
        "model_version": predictor.model_version,
        "precision": predictor.precision,
        "provider": predictor.provider,
        "folder": str(args.folder),
        **report,
    }
    _emit(json.dumps(out, indent=2) if args.json else format_scores(out))
    if args.json and report["unknown_labels"]:  # the tables list them already
        print(
            "labels the model does not know (left out): "
            + ", ".join(f"{k} ({v})" for k, v in report["unknown_labels"].items()),
            file=sys.stderr,
        )
    return 1 if report["n_images"] == 0 else 0


def format_scores(out: dict) -> str:
    """evaluate-folder's report as text: headline metrics, per-class table, what was left out."""
    skip = {"n_images", "n_classes", "n_files"}
    headline = [(k, v) for k, v in out.items() if isinstance(v, float | int) and k not in skip]
    version = f" (version {out['model_version']})" if out["model_version"] else ""
    lines = [
        fields(
            [
                ("model", f"{out['model']}{version}"),
                ("folder", out["folder"]),
                ("images", f"{out['n_images']} scored of {out['n_files']} files"),
                *headline,
            ]
        ),
        "",
        table(
            ["class", "precision", "recall", "f1", "support"],
            [
                [name, s["precision"], s["recall"], s["f1"], s["support"]]
                for name, s in out["per_class"].items()
            ],
            numeric=(1, 2, 3, 4),
        ),
    ]
    if out["missing_classes"]:
        lines += ["", "classes with no images here: " + ", ".join(out["missing_classes"])]
    if out["unknown_labels"]:
        left_out = (f"{k} ({v})" for k, v in out["unknown_labels"].items())
        lines += ["", "labels the model does not know (left out): " + ", ".join(left_out)]
    if out["unreadable"]:
        rows = [[u["path"], u["error"]] for u in out["unreadable"]]
        lines += ["", f"unreadable ({len(rows)}):", table(["file", "error"], rows)]
    return "\n".join(lines)


def format_lineage(info: dict) -> str:
    """``describe()``'s record as text: where the version came from, then each group of tags."""
    aliases = f" (@{', @'.join(info['aliases'])})" if info["aliases"] else ""
    run = info["run_id"]
    if run and info.get("run_name"):
        run = f"{run} ({info['run_name']}, experiment {info.get('experiment_id')})"
    lines = [
        f"{info['model_uri']}: {info['name']} version {info['version']}{aliases}",
        fields(
            [
                ("created", info["created"]),
                ("git commit", info["git_commit"]),
                ("data version", info["data_version"]),
                ("params hash", info["params_hash"]),
                ("run", run),
                ("source", info["source"]),
                ("tracking uri", info["tracking_uri"]),
            ]
        ),
    ]
    groups = [
        ("decision", "decision"),
        ("test metrics", "test_metrics"),
        ("export parity", "parity"),
        ("dvc.lock", "dvc_lock"),
        ("params", "params"),
        ("metrics", "metrics"),
    ]
    for title, key in groups:
        values = info.get(key) or {}
        lines += ["", f"{title}:" + ("" if values else " -")]
        if values:
            lines.append(fields(sorted(values.items()), indent="  "))
    return "\n".join(lines)


def lineage(args: argparse.Namespace) -> int:
    info = describe(args.model, args.tracking_uri)
    _emit(json.dumps(info, indent=2, default=str) if args.json else format_lineage(info))
    return 0
