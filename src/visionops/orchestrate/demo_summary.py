"""What `make demo` prints at the end: where each result is, and a prediction from @champion."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from visionops.config import load_config
from visionops.errors import VisionOpsError
from visionops.offline import apply_offline_env
from visionops.paths import stage_paths
from visionops.tracking import tracking_uri


def _first_test_image(cfg) -> Path | None:
    test_csv = stage_paths(cfg).split_file("test")
    if not test_csv.exists():
        return None
    lines = test_csv.read_text(encoding="utf-8").splitlines()[1:]
    return cfg.data_dir / lines[0].split(",")[0] if lines else None


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
        print(
            f"  test accuracy {metrics.get('accuracy', float('nan')):.3f}, "
            f"macro-F1 {metrics.get('macro_f1', float('nan')):.3f}"
        )
    uri = tracking_uri(cfg)
    model = f"models:/{cfg.register.model_name}@champion"
    image = _first_test_image(cfg)
    if image is not None and p.register_decision.exists():
        try:
            from visionops.inference import Predictor

            predictor = Predictor(model, tracking_uri=uri)
            pred = predictor.predict([image], top_k=3)[0]
            print(
                f"\nPrediction from {model} (version {predictor.model_version}, "
                f"{predictor.provider}) for {image.relative_to(cfg.root)}:"
            )
            for label, prob in pred.top_k:
                print(f"  {label:<12} {prob:6.1%}")
        except VisionOpsError as exc:
            print(f"could not predict with {model}: {exc}", file=sys.stderr)
    print(
        "\nNext: `make ui` opens the MLflow and Prefect UIs; "
        f"`visionops predict {model} <image>` classifies your own photos."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
