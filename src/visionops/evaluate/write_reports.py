"""Write the ``evaluate`` stage's files from predictions: metrics, DVC scores, per-image
predictions, per-class table, label issues, plots (the list is in :mod:`visionops.evaluate.stage`).

It takes file paths, true class indices and probabilities, never a model, so the reports can be
checked on hand-made probabilities (binary ROC/PR, top-5 with many classes) without training
anything; :func:`visionops.evaluate.stage.run` feeds it the checkpoint's test-split predictions.
"""

from __future__ import annotations

import csv
import io as _io
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from visionops.config import Config
from visionops.evaluate.intervals import score_intervals
from visionops.evaluate.metrics import (
    calibration_bins,
    classification_report,
    confusion_matrix,
    pr_curve,
    roc_curve,
)
from visionops.images import open_image
from visionops.io import write_json, write_text
from visionops.paths import stage_paths


def _per_class_csv(cm: np.ndarray, report: dict, names: list[str]) -> str:
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["class", "precision", "recall", "f1", "support", "most_confused_with", "confused_count"]
    )
    for i, name in enumerate(names):
        row = report["per_class"][name]
        off = cm[i].copy()
        off[i] = 0
        j = int(off.argmax())
        confused = (names[j], int(off[j])) if off[j] > 0 else ("", 0)
        writer.writerow(
            [
                name,
                f"{row['precision']:.4f}",
                f"{row['recall']:.4f}",
                f"{row['f1']:.4f}",
                row["support"],
                *confused,
            ]
        )
    return buf.getvalue()


def _shown(path: Path, data_dir: Path) -> str:
    """``path`` relative to ``data/`` when inside it, as the split CSVs and reports name files."""
    return path.relative_to(data_dir).as_posix() if path.is_relative_to(data_dir) else str(path)


def _predictions_csv(
    files: Sequence[Path], y: np.ndarray, probs: np.ndarray, names: list[str], data_dir: Path
) -> str:
    """One row per test image, in split order: DVC's ``confusion`` template counts
    ``actual`` x ``predicted``; the probabilities let a person sort or filter."""
    pred = probs.argmax(axis=1)
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "actual", "predicted", "p_actual", "p_predicted"])
    for i, path in enumerate(files):
        writer.writerow(
            [
                _shown(Path(path), data_dir),
                names[y[i]],
                names[pred[i]],
                f"{probs[i, y[i]]:.6f}",
                f"{probs[i, pred[i]]:.6f}",
            ]
        )
    return buf.getvalue()


#: The numbers of ``metrics.json`` that ``scores.json`` (the DVC metrics file) repeats. A fixed
#: set, so ``dvc metrics diff`` and ``dvc exp show`` compare like with like across runs.
SCORE_KEYS = ("accuracy", "macro_f1", "log_loss", "ece")


def headline_scores(report: dict, seconds: float) -> dict[str, float]:
    """Flat numbers for ``scores.json``: :data:`SCORE_KEYS` from the report (6 decimals) and
    the stage's wall time in seconds (prediction + reports). ``dvc metrics show`` makes one
    column per key across all metrics files; ``train/metrics.json`` shares ``seconds``."""
    scores = {k: round(float(report[k]), 6) for k in SCORE_KEYS}
    scores["seconds"] = round(seconds, 1)
    return scores


def _label_issues(
    files: Sequence[Path], y: np.ndarray, probs: np.ndarray, names: list[str], data_dir: Path
) -> list[dict]:
    """Misclassified images, highest loss (-log p(given label)) first."""
    pred = probs.argmax(axis=1)
    p_true = probs[np.arange(len(y)), y]
    loss = -np.log(np.clip(p_true, 1e-12, 1.0))
    rows = []
    for rank, i in enumerate(sorted(np.nonzero(pred != y)[0], key=lambda k: -loss[k]), start=1):
        path = Path(files[i])
        rows.append(
            {
                "rank": rank,
                "path": _shown(path, data_dir),
                "label": names[y[i]],
                "predicted": names[pred[i]],
                "p_label": round(float(p_true[i]), 6),
                "p_predicted": round(float(probs[i, pred[i]]), 6),
                "loss": round(float(loss[i]), 6),
                "_file": path,
            }
        )
    return rows


def with_intervals_and_calibration(
    report: dict,
    y: np.ndarray,
    probs: np.ndarray,
    raw_probs: np.ndarray | None = None,
    temperature: float = 1.0,
) -> dict:
    """``report`` (:func:`classification_report`) with flat 95% intervals after the headline
    numbers (``accuracy_ci_low/high``: Wilson; ``macro_f1_ci_low/high``: bootstrap over images,
    :mod:`visionops.evaluate.intervals`) and, for a calibrated model, ``temperature`` and the
    ECE / log loss of the uncalibrated probabilities ``raw_probs``. Flat numbers, so MLflow
    logs each as ``test_<key>``; ``scores.json`` (DVC metrics) keeps only :data:`SCORE_KEYS`."""
    extra: dict = score_intervals(y, probs.argmax(axis=1), probs.shape[1])
    if raw_probs is not None:
        raw = classification_report(y, raw_probs, [str(i) for i in range(raw_probs.shape[1])])
        extra.update(
            temperature=float(temperature),
            ece_uncalibrated=raw["ece"],
            log_loss_uncalibrated=raw["log_loss"],
        )
    head = {k: v for k, v in report.items() if k != "per_class"}
    return {**head, **extra, "per_class": report["per_class"]}


def write_reports(
    config: Config,
    files: Sequence[Path],
    y: np.ndarray,
    probs: np.ndarray,
    names: list[str],
    raw_probs: np.ndarray | None = None,
    temperature: float = 1.0,
) -> dict:
    """All evaluate outputs but ``scores.json`` (it holds the stage's time: written by
    :func:`visionops.evaluate.stage.run`) from (files, true indices, probabilities); returns
    the metrics.

    ``probs`` are what the model serves (calibrated when the checkpoint has a temperature);
    ``raw_probs``, given for a calibrated model, are ``softmax`` of the logits before the
    temperature: they add the uncalibrated ECE to the metrics and a "before" panel to
    ``plots/reliability.png``."""
    from visionops.evaluate import plots as plots

    p = stage_paths(config)
    report = with_intervals_and_calibration(
        classification_report(y, probs, names), y, probs, raw_probs, temperature
    )
    cm = confusion_matrix(y, probs.argmax(axis=1), len(names))
    issues = _label_issues(files, y, probs, names, config.data_dir)

    write_text(p.evaluate_per_class, _per_class_csv(cm, report, names))
    write_text(p.evaluate_predictions, _predictions_csv(files, y, probs, names, config.data_dir))
    buf = _io.StringIO()
    fields = ["rank", "path", "label", "predicted", "p_label", "p_predicted", "loss"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(issues)
    write_text(p.evaluate_label_issues, buf.getvalue())

    plot_dir = p.evaluate_plots
    shutil.rmtree(plot_dir, ignore_errors=True)  # no stale ROC from a former binary run
    plots.confusion_matrix_png(cm, names, plot_dir / "confusion_matrix.png")
    plots.confusion_matrix_png(
        cm, names, plot_dir / "confusion_matrix_normalized.png", normalize=True
    )
    conf, acc, counts, ece = calibration_bins(y, probs)
    calibrated = f", T = {temperature:.2f}" if raw_probs is not None else ""
    before = calibration_bins(y, raw_probs) if raw_probs is not None else None
    plots.reliability_png(
        conf,
        acc,
        counts,
        ece,
        plot_dir / "reliability.png",
        note=f"served{calibrated}",
        before=before,
    )
    if len(names) == 2:
        fpr, tpr, auc = roc_curve(y, probs[:, 1])
        plots.curve_png(fpr, tpr, plot_dir / "roc.png", kind="roc", score=auc, positive=names[1])
        rec, prec, ap = pr_curve(y, probs[:, 1])
        plots.curve_png(rec, prec, plot_dir / "pr.png", kind="pr", score=ap, positive=names[1])
    gallery = []
    for row in issues[: config.evaluate.top_losses]:
        try:
            img = open_image(row["_file"])
        except Exception:  # noqa: BLE001 - a gallery thumbnail is not worth failing for
            continue
        gallery.append(
            plots.GalleryItem(
                img,
                row["label"],
                row["predicted"],
                row["p_predicted"],
                row["p_label"],
                name=Path(row["path"]).name,
            )
        )
    plots.gallery_png(
        gallery,
        plot_dir / "top_losses.png",
        title=f"top {len(gallery)} losses (most confidently wrong test images)",
    )
    write_json(p.evaluate_metrics, report)
    return report
