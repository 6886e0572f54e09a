"""Classification metrics in plain numpy (no torch, no scikit-learn): shared by evaluate,
register's champion/challenger comparison and ``visionops evaluate-folder``.

Conventions: ``y_true`` is an int array of class indices (N,); ``probs`` is (N, C) float with rows
summing to 1. A class with no true and no predicted samples gets precision = recall = F1 = 0 and
is still counted in the macro average (the honest choice: the model never shows it can find it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


@dataclass(frozen=True)
class PerClass:
    precision: np.ndarray  # (C,)
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray  # true samples per class


def per_class_scores(cm: np.ndarray) -> PerClass:
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return PerClass(precision, recall, f1, support)


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    if len(y_true) == 0:
        return 0.0
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(y_true)[:, None], axis=1)))


def calibration_bins(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Equal-width confidence bins of the top-1 prediction.

    Returns (mean confidence per bin, accuracy per bin, count per bin, ECE). Empty bins hold NaN
    confidence/accuracy. ECE = sum over bins of |accuracy - confidence| weighted by bin share.
    """
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / counts
        mean_acc = np.bincount(idx, weights=correct, minlength=n_bins) / counts
    filled = counts > 0
    ece = float(
        np.sum(np.abs(mean_acc[filled] - mean_conf[filled]) * counts[filled]) / max(len(conf), 1)
    )
    return mean_conf, mean_acc, counts, ece


def _ranked_counts(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """At each distinct score threshold (highest first): true positives, predicted positives;
    plus the number of positives. Shared by the ROC and PR curves."""
    order = np.argsort(-scores, kind="mergesort")
    y = (np.asarray(y_true)[order] == 1).astype(np.float64)
    s = scores[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    return np.cumsum(y)[distinct], distinct + 1, float(y.sum())


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Binary ROC for positive class 1: (false-positive rate, true-positive rate, AUC)."""
    tps, predicted, pos = _ranked_counts(y_true, scores)
    fps = predicted - tps
    neg = len(y_true) - pos
    tpr = np.r_[0.0, tps / pos] if pos else np.zeros(len(tps) + 1)
    fpr = np.r_[0.0, fps / neg] if neg else np.zeros(len(fps) + 1)
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def pr_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Binary precision-recall for positive class 1: (recall, precision, average precision)."""
    tps, predicted, pos = _ranked_counts(y_true, scores)
    precision = tps / predicted
    recall = tps / pos if pos else np.zeros_like(tps)
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return np.r_[0.0, recall], np.r_[1.0, precision], ap


def classification_report(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str], present_only: bool = False
) -> dict:
    """Everything ``metrics.json`` holds: headline numbers first, then ``per_class``.

    ``log_loss`` is the mean negative log-probability of the true class (clipped at 1e-12).
    ``top5_accuracy`` appears only with more than 5 classes; ``roc_auc``/``average_precision``
    only for 2 classes (positive = ``class_names[1]``). ``present_only`` averages the macro
    scores over classes with at least one true sample (for data holding a subset of classes).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    n_classes = len(class_names)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    pc = per_class_scores(cm)
    weights = pc.support / max(pc.support.sum(), 1)
    avg = pc.support > 0 if present_only and pc.support.any() else np.ones(n_classes, bool)
    p_true = probs[np.arange(len(y_true)), y_true]
    _, _, _, ece = calibration_bins(y_true, probs)
    report: dict = {
        "accuracy": float(np.mean(y_pred == y_true)) if len(y_true) else 0.0,
        "macro_f1": float(pc.f1[avg].mean()) if n_classes else 0.0,
        "macro_precision": float(pc.precision[avg].mean()) if n_classes else 0.0,
        "macro_recall": float(pc.recall[avg].mean()) if n_classes else 0.0,
        "weighted_f1": float(np.sum(pc.f1 * weights)),
        "log_loss": float(np.mean(-np.log(np.clip(p_true, 1e-12, 1.0)))) if len(y_true) else 0.0,
        "ece": ece,
    }
    if n_classes > 5:
        report["top5_accuracy"] = top_k_accuracy(y_true, probs, 5)
    if n_classes == 2:
        report["roc_auc"] = roc_curve(y_true, probs[:, 1])[2]
        report["average_precision"] = pr_curve(y_true, probs[:, 1])[2]
    report["n_images"] = len(y_true)
    report["n_classes"] = n_classes
    report["per_class"] = {
        name: {
            "precision": float(pc.precision[i]),
            "recall": float(pc.recall[i]),
            "f1": float(pc.f1[i]),
            "support": int(pc.support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return report


def label_scores(true: list[str], predicted: list[str | None], classes: list[str]) -> dict:
    """Accuracy and macro P/R/F1 from label *names*, over ``classes`` (the true label space).

    For comparing models whose class lists differ: a prediction outside ``classes`` (or None, an
    unreadable image) is simply wrong; macro averages run over ``classes`` only.
    """
    index = {c: i for i, c in enumerate(classes)}
    other = len(classes)
    y = np.array([index[t] for t in true], dtype=np.int64)
    p = np.array([index.get(q, other) if q is not None else other for q in predicted], np.int64)
    cm = confusion_matrix(y, p, len(classes) + 1)[: len(classes), :]
    tp = np.diag(cm[:, : len(classes)]).astype(np.float64)
    predicted_n = cm.sum(axis=0)[: len(classes)].astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted_n > 0, tp / predicted_n, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "accuracy": float(np.mean(y == p)) if len(y) else 0.0,
        "macro_f1": float(f1.mean()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "n_images": len(y),
    }
