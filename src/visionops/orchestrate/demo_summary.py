"""What `make demo` prints at the end: where each result is, predictions from @champion on
held-out test images with their true labels, and next commands that work as printed."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from visionops.config import Config, load_config
from visionops.data.split import split_rows
from visionops.errors import VisionOpsError
from visionops.evaluate.intervals import metric_interval
from visionops.offline import apply_offline_env
from visionops.paths import stage_paths
from visionops.tracking import tracking_uri

EXAMPLES = 3


def held_out_examples(cfg: Config, count: int = EXAMPLES) -> list[tuple[Path, str]]:
    """(image, true label): the first test image of each of the first ``count`` classes, in
    ``test.csv`` order. Test images are never trained on nor used to pick the epoch, and the
    choice does not look at the model, so right and wrong answers show as they come."""
    try:
        files, labels = split_rows(stage_paths(cfg).split_file("test"), cfg.data_dir)
    except VisionOpsError:
        return []
    first: dict[str, Path] = {}
    for path, label in zip(files, labels, strict=True):
        first.setdefault(label, path)
        if len(first) == count:
            break
    return [(path, label) for label, path in first.items()]


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def print_predictions(cfg: Config, model: str) -> Path | None:
    """Classify the held-out examples with ``model``; returns the first image (for the hint)."""
    examples = held_out_examples(cfg)
    if not examples:
        return None
    from visionops.inference import Predictor

    predictor = Predictor(model, tracking_uri=tracking_uri(cfg))
    preds = predictor.predict([path for path, _ in examples], top_k=3)
    print(
        f"\nPredictions from {model} (version {predictor.model_version}, {predictor.provider}) "
        f"on held-out test images, the first of {len(examples)} classes in "
        f"{_shown(stage_paths(cfg).split_file('test'), cfg.root)}:"
    )
    width = max(len(_shown(path, cfg.root)) for path, _ in examples)
    right = 0
    for (path, truth), pred in zip(examples, preds, strict=True):
        shown = _shown(path, cfg.root)
        if pred.error:
            print(f"  {shown:<{width}}  true {truth:<12} could not predict: {pred.error}")
            continue
        right += pred.label == truth
        verdict = "right" if pred.label == truth else "WRONG"
        others = ", ".join(f"{lab} {p:.1%}" for lab, p in pred.top_k[1:])
        print(
            f"  {shown:<{width}}  true {truth:<12} predicted {pred.label:<12} "
            f"{pred.probability:6.1%}  {verdict}  (next: {others})"
        )
    print(f"  {right} of {len(examples)} right")
    return examples[0][0]


def main() -> int:
    apply_offline_env()
    cfg = load_config()
    p = stage_paths(cfg)
    rows = [
        ("validation report", p.validation_summary),
        ("split counts", p.split_counts),
        ("learning curves", p.train_plots),
        ("test metrics", p.evaluate_metrics),
        ("confusion matrix, top losses", p.evaluate_dir / "plots"),
        ("ONNX model", p.onnx_model),
        ("registry decision", p.register_decision),
    ]
    print("\nVisionOps demo results:")
    for name, path in rows:
        mark = "" if path.exists() else "  (not produced)"
        print(f"  {name:<30} {path.relative_to(cfg.root)}{mark}")
    if p.evaluate_metrics.exists():
        metrics = json.loads(p.evaluate_metrics.read_text())
        acc, f1 = (
            f"{metrics.get(k, float('nan')):.3f} {metric_interval(metrics, k)}".rstrip()
            for k in ("accuracy", "macro_f1")
        )
        print(
            f"  test accuracy {acc}, macro-F1 {f1} "
            f"on {metrics.get('n_images', '?')} held-out test images (95% intervals)"
        )
    model = f"models:/{cfg.register.model_name}@champion"
    image = None
    if p.register_decision.exists():
        try:
            image = print_predictions(cfg, model)
        except VisionOpsError as exc:
            print(f"could not predict with {model}: {exc}", file=sys.stderr)
    # Commands that work as typed in a new terminal in this folder (README: "Your own images").
    photo = shlex.quote(_shown(image, cfg.root)) if image is not None else "photo.jpg"
    print(
        "\nNext, in this folder:\n"
        "  source .venv/bin/activate   # once per terminal: visionops, dvc, prefect on PATH\n"
        f"  visionops predict {model} {photo}   # or your own photo\n"
        "  make ui                     # the MLflow and Prefect UIs (Ctrl-C stops them)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
