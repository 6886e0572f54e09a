"""Stage ``evaluate``: the best checkpoint on the test split.

Writes (paths declared in ``paths.py`` and ``dvc.yaml``):

- ``metrics.json``: accuracy, macro/weighted P/R/F1, log loss, ECE, top-5 (> 5 classes),
  ROC-AUC/AP (2 classes), 95% intervals of accuracy and macro-F1 (``*_ci_low/high``), the
  temperature and ECE/log loss before it (a calibrated checkpoint), per-class P/R/F1/support
  (read by register, reports, people);
- ``scores.json``: the DVC metrics file, a few flat numbers (accuracy, macro-F1, log loss, ECE,
  seconds) so ``dvc metrics show/diff`` and ``dvc exp show`` stay readable;
- ``predictions.csv``: one row per test image (path, actual, predicted, probabilities), the
  data of DVC's confusion-matrix plot;
- ``per_class.csv``: one row per class, with the class it is most often mistaken for;
- ``label_issues.csv``: every misclassified test image, highest loss first (the images most
  worth a human look: wrong labels, ambiguous or broken photos);
- ``plots/``: confusion matrix (counts + row-normalised), reliability diagram (before/after
  temperature scaling side by side for a calibrated model), top-loss gallery, ROC and PR curves
  for binary tasks.

Probabilities are the ones the exported model serves: ``softmax(logits / T)`` with the
checkpoint's temperature (:mod:`visionops.train.calibrate`; T = 1 without one).

Images go through :func:`visionops.images.preprocess`, the same transform ONNX inference uses;
the files are written from the predictions by :mod:`visionops.evaluate.write_reports`.
Metrics and files are also logged to the training's MLflow run (``artifacts/train/run.json``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionops.config import Config
from visionops.data.split import split_rows
from visionops.errors import DataError, VisionOpsError
from visionops.evaluate.intervals import format_interval
from visionops.evaluate.write_reports import headline_scores, write_reports
from visionops.images import PreprocessSpec, preprocess_batches
from visionops.io import write_json
from visionops.onnxrt import softmax
from visionops.paths import stage_paths
from visionops.train.calibrate import checkpoint_temperature

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict
    metrics_path: Path
    run_id: str | None

    def summary(self) -> str:
        """Accuracy and macro-F1 with their 95% intervals (Wilson; bootstrap over images), then
        ECE before/after temperature scaling when the model is calibrated."""
        m = self.metrics
        acc, f1 = m["accuracy"], m["macro_f1"]
        if "accuracy_ci_low" in m:
            acc = format_interval(acc, m["accuracy_ci_low"], m["accuracy_ci_high"])
            f1 = format_interval(f1, m["macro_f1_ci_low"], m["macro_f1_ci_high"])
            scores = f"accuracy {acc}, macro-F1 {f1} (95% intervals)"
        else:
            scores = f"accuracy {acc:.3f}, macro-F1 {f1:.3f}"
        ece = f"ECE {m['ece']:.3f}"
        if "temperature" in m:
            ece = f"ECE {m['ece_uncalibrated']:.3f} -> {m['ece']:.3f} (T = {m['temperature']:.3f})"
        return (
            f"evaluate: {scores} on {m['n_images']} test images; {ece} -> "
            f"{self.metrics_path.parent}"
        )


def load_checkpoint(path: Path):
    """(torch model in eval mode, checkpoint dict, class names, PreprocessSpec)."""
    if not path.exists():
        raise VisionOpsError(f"{path}: no checkpoint; run `visionops train` (or `dvc repro train`)")
    from visionops.train.checkpoint import load_model

    model, ckpt = load_model(path)
    model.eval()
    return model, ckpt, list(ckpt["class_names"]), PreprocessSpec.from_dict(ckpt["preprocess"])


def predict_logits(
    model,
    files: Sequence[Path],
    spec: PreprocessSpec,
    batch_size: int = 32,
    workers: int = 2,
    progress: str | None = None,
) -> np.ndarray:
    """PyTorch eval-mode logits (N, C) float32 through the shared preprocessing.

    Raises DataError naming the first unreadable file: a split lists only usable images, so a
    failure means data/ changed after ``validate``.
    """
    import torch

    device = next(model.parameters()).device
    chunks: list[np.ndarray] = []
    batches = preprocess_batches(list(files), spec, batch_size, workers)
    if progress:
        from tqdm import tqdm

        batches = tqdm(
            batches,
            total=-(-len(files) // batch_size),
            desc=progress,
            unit="batch",
            file=sys.stderr,
            disable=None,
        )
    with torch.inference_mode():
        for _, batch, errors in batches:
            if errors:
                i, why = next(iter(errors.items()))
                raise DataError(
                    f"{files[i]}: {why}; data/ changed since validate: rerun `dvc repro`"
                )
            x = torch.from_numpy(batch).to(device)
            chunks.append(model(x).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def read_train_run(config: Config) -> dict | None:
    """``artifacts/train/run.json`` (run_id, tracking_uri, experiment_id) or None if absent."""
    path = stage_paths(config).train_run
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise VisionOpsError(f"{path}: not valid JSON ({exc}); rerun `visionops train`") from None


def _metric_key(name: str) -> str:
    """MLflow metric names allow letters, digits, _ - . / and space; map anything else to _."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def training_run(config: Config) -> tuple[str | None, str]:
    """(run id from ``run.json`` or None, the store it lives in) — checked to exist.

    The store is the one ``run.json`` names (where train logged), else the configured one.
    Raises VisionOpsError when the run is not in that store (e.g. another MLFLOW_TRACKING_URI).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from visionops.tracking import tracking_uri

    run = read_train_run(config) or {}
    uri = run.get("tracking_uri") or tracking_uri(config)
    run_id = run.get("run_id")
    if run_id:
        try:
            MlflowClient(tracking_uri=uri).get_run(run_id)
        except MlflowException:
            raise VisionOpsError(
                f"{stage_paths(config).train_run}: MLflow run {run_id} is not in {uri}; rerun "
                "`visionops train`, or point MLFLOW_TRACKING_URI at the store it was logged in"
            ) from None
    return run_id, uri


def log_to_mlflow(config: Config, metrics: dict, folder: Path, artifact_path: str) -> str | None:
    """Log scalar ``test_*`` metrics, per-class F1 and ``folder`` to the training's run."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    run_id, uri = training_run(config)
    if not run_id:
        log.warning("no %s: metrics not logged to MLflow", stage_paths(config).train_run)
        return None
    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    scalars = {f"test_{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    for name, row in metrics.get("per_class", {}).items():
        scalars[_metric_key(f"test_f1/{name}")] = row["f1"]
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in scalars.items()])
    client.log_artifacts(run_id, str(folder), artifact_path)
    return run_id


def run(config: Config) -> EvaluateResult:
    started = time.perf_counter()
    p = stage_paths(config)
    files, labels = split_rows(p.split_file("test"), config.data_dir)
    model, ckpt, names, spec = load_checkpoint(p.checkpoint_best)
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise DataError(
            f"{p.split_file('test')}: labels {', '.join(unknown)} are not among the checkpoint's "
            f"classes ({', '.join(names)}); rerun `dvc repro` so train sees the same split"
        )
    index = {n: i for i, n in enumerate(names)}
    y = np.array([index[lab] for lab in labels], dtype=np.int64)
    logits = predict_logits(model, files, spec, config.train.batch_size, progress="evaluate")
    # The probabilities the exported model serves: the checkpoint's temperature divides the
    # logits as the ONNX graph does (train/calibrate.py); the raw ones give "before" numbers.
    temperature = checkpoint_temperature(ckpt)
    probs = softmax(logits / np.float32(temperature))
    raw = softmax(logits) if temperature != 1.0 else None
    report = write_reports(config, files, y, probs, names, raw, temperature)
    write_json(p.evaluate_scores, headline_scores(report, time.perf_counter() - started))
    run_id = log_to_mlflow(config, report, p.evaluate_dir, "evaluate")
    return EvaluateResult(report, p.evaluate_metrics, run_id)
