"""Temperature scaling measured on a trained project: T fitted on val, ECE and NLL on test.

    .venv/bin/python benchmarks/calibration.py --project /tmp/int8 --out /tmp/calib.json
    .venv/bin/python benchmarks/calibration.py --project /tmp/r240 --engine torch
    .venv/bin/python benchmarks/calibration.py --project /tmp/int8 \
        --save-checkpoint /tmp/copy/artifacts/train/best.pt   # then export/evaluate the copy

The project needs its split CSVs and ``artifacts/train/best.pt``; with ``--engine onnx`` (the
default when it exists) the logits come from ``artifacts/export/model.onnx`` instead, which is
faster on a CPU. An export that already folds a temperature in (metadata
``visionops.temperature``) is multiplied back out, so "before" is always the raw model. Nothing in
the project is written. The fit and the metrics are the pipeline's own code
(:func:`visionops.train.calibrate.fit_temperature`,
:func:`visionops.evaluate.metrics.calibration_bins`), and the reliability diagrams before/after
go to ``--plots`` when given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def split_logits(project: Path, split: str, engine: str) -> tuple[np.ndarray, np.ndarray]:
    """(raw logits (N, C), labels (N,)) of one split of ``project``."""
    from visionops.config import load_config
    from visionops.data.split import split_rows
    from visionops.paths import stage_paths

    cfg = load_config(project / "params.yaml")
    p = stage_paths(cfg)
    files, labels = split_rows(p.split_file(split), cfg.data_dir)
    if engine == "onnx":
        from visionops.export.onnx_model import OnnxClassifier
        from visionops.images import preprocess_batches

        clf = OnnxClassifier(p.onnx_model, device="cpu")
        names = clf.labels
        t = float(clf.metadata.get("visionops.temperature", 1.0))
        chunks = []
        for _, batch, errors in preprocess_batches(files, clf.spec, 32, 2):
            assert not errors, errors
            chunks.append(clf.logits(batch) * t)
        logits = np.concatenate(chunks)
    else:
        from visionops.evaluate.stage import load_checkpoint, predict_logits

        model, _, names, spec = load_checkpoint(p.checkpoint_best)
        logits = predict_logits(model, files, spec, 32, progress=f"{split} logits")
    index = {n: i for i, n in enumerate(names)}
    return logits.astype(np.float32), np.array([index[lab] for lab in labels], np.int64)


def scores(logits: np.ndarray, y: np.ndarray, t: float) -> dict:
    from visionops.evaluate.metrics import calibration_bins
    from visionops.onnxrt import softmax
    from visionops.train.calibrate import nll

    probs = softmax(logits / t)
    _, _, _, ece = calibration_bins(y, probs)
    return {
        "ece": round(ece, 4),
        "nll": round(nll(logits, y, t), 4),
        "accuracy": round(float((probs.argmax(1) == y).mean()), 4),
        "mean_confidence": round(float(probs.max(1).mean()), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--engine", choices=["auto", "onnx", "torch"], default="auto")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    parser.add_argument("--plots", type=Path, help="write reliability diagrams here")
    parser.add_argument(
        "--save-checkpoint",
        type=Path,
        help="write a copy of the project's best.pt with the fitted temperature here (what "
        "train.calibrate records), e.g. to run export/evaluate on a copy of the project",
    )
    args = parser.parse_args(argv)
    from visionops.evaluate.intervals import wilson_interval
    from visionops.train.calibrate import fit_temperature

    project = args.project.resolve()
    engine = args.engine
    if engine == "auto":
        engine = "onnx" if (project / "artifacts/export/model.onnx").exists() else "torch"
    started = time.perf_counter()
    val_logits, val_y = split_logits(project, "val", engine)
    test_logits, test_y = split_logits(project, "test", engine)
    t = fit_temperature(val_logits, val_y)
    before, after = scores(test_logits, test_y, 1.0), scores(test_logits, test_y, t)
    correct = int((test_logits.argmax(1) == test_y).sum())
    low, high = wilson_interval(correct, len(test_y))
    result = {
        "project": str(project),
        "engine": engine,
        "val_images": len(val_y),
        "test_images": len(test_y),
        "temperature": round(t, 4),
        "val": {"before": scores(val_logits, val_y, 1.0), "after": scores(val_logits, val_y, t)},
        "test": {"before": before, "after": after},
        "test_accuracy_ci95": [round(low, 4), round(high, 4)],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.plots:
        from visionops.evaluate import plots
        from visionops.evaluate.metrics import calibration_bins
        from visionops.onnxrt import softmax

        for name, temp in (("before", 1.0), ("after", t)):
            conf, acc, counts, ece = calibration_bins(test_y, softmax(test_logits / temp))
            path = args.plots / f"reliability_{name}.png"
            plots.reliability_png(conf, acc, counts, ece, path, note=f"test, T = {temp:.3f}")
    if args.save_checkpoint:
        from visionops.train.calibrate import calibration_record
        from visionops.train.checkpoint import load_checkpoint, save_checkpoint

        ckpt = load_checkpoint(project / "artifacts/train/best.pt")
        ckpt["calibration"] = calibration_record(val_logits, val_y)
        save_checkpoint(args.save_checkpoint, ckpt)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
