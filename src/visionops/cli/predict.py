"""``visionops predict``, ``evaluate-folder`` and ``lineage``: parse, call, print. Torch-free.

Exit codes: 0 when every input was classified, 1 when some input could not be read (its row
says why; the others are still printed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from visionops.errors import VisionOpsError
from visionops.export.onnx_model import Prediction
from visionops.images import list_images
from visionops.inference import Predictor
from visionops.registry.lineage import describe
from visionops.registry.scoring import image_folder, score_labeled

log = logging.getLogger(__name__)


def _predictor(args: argparse.Namespace) -> Predictor:
    predictor = Predictor(args.model, tracking_uri=getattr(args, "tracking_uri", None))
    version = f" (version {predictor.model_version})" if predictor.model_version else ""
    print(f"model: {predictor.source}{version} on {predictor.provider}", file=sys.stderr)
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
        "provider": predictor.provider,
        "folder": str(args.folder),
        **report,
    }
    _emit(json.dumps(out, indent=2))
    if report["unknown_labels"]:
        print(
            "labels the model does not know (left out): "
            + ", ".join(f"{k} ({v})" for k, v in report["unknown_labels"].items()),
            file=sys.stderr,
        )
    return 1 if report["n_images"] == 0 else 0


def lineage(args: argparse.Namespace) -> int:
    print(json.dumps(describe(args.model, args.tracking_uri), indent=2, default=str))
    return 0
