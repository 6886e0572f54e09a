"""Classification metrics (numpy + scikit-learn, no torch): shared by evaluate, register's
champion/challenger comparison and ``visionops evaluate-folder``.

Conventions: ``y_true`` is an int array of class indices (N,); ``probs`` is (N, C) float with rows
summing to 1. A class with no true and no predicted samples gets precision = recall = F1 = 0 and
is still counted in the macro average (the honest choice: the model never shows it can find it).
Empty input gives zeros rather than sklearn's "Found empty input array" error.

scikit-learn computes the confusion matrix, P/R/F1, accuracy and the ROC/PR curves; what stays
in numpy is what it lacks or does differently: top-k accuracy, log loss and calibration/ECE.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    if len(y_true) == 0:
        return np.zeros((n_classes, n_classes), np.int64)
    return skm.confusion_matrix(y_true, y_pred, labels=np.arange(n_classes)).astype(np.int64)


@dataclass(frozen=True)
class PerClass:
    precision: np.ndarray  # (C,)
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray  # true samples per class


def per_class_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> PerClass:
    """P/R/F1/support for classes ``0..n_classes-1``; 0 where undefined (nothing predicted/true).

    A prediction outside that range is wrong for its true class and counts for no class.
    """
    if len(y_true) == 0:
        n = n_classes
        return PerClass(np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n, np.int64))
    p, r, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(n_classes), zero_division=0.0
    )
    return PerClass(p, r, f1, support.astype(np.int64))  # sklearn: float if no prediction is right


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(skm.accuracy_score(y_true, y_pred)) if len(y_true) else 0.0


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    # Not sklearn's top_k_accuracy_score: that one rejects 2-column scores for 2 classes, warns
    # for k >= C, rejects empty input and needs labels= when a class is absent from y_true; it
    # also breaks ties towards the higher class index, which would change past numbers.
    if len(y_true) == 0:
        return 0.0
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(y_true)[:, None], axis=1)))


def calibration_bins(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Equal-width confidence bins of the top-1 prediction; a value on an edge joins the lower bin.

    Returns (mean confidence per bin, accuracy per bin, count per bin, ECE). Empty bins hold NaN
    confidence/accuracy. ECE = sum over bins of |accuracy - confidence| weighted by bin share.
    sklearn has no ECE, and its ``calibration_curve`` drops empty bins and returns no counts.
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


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Binary ROC for positive class 1: (false-positive rate, true-positive rate, AUC).

    One point per distinct score, starting at (0, 0); AUC is the trapezoid area under exactly
    these points. With a single class in ``y_true`` the undefined rate is 0 (so AUC = 0) where
    sklearn warns and gives NaN.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, _ = skm.roc_curve(y_true, scores, pos_label=1, drop_intermediate=False)
    fpr, tpr = np.nan_to_num(fpr), np.nan_to_num(tpr)
    return fpr, tpr, float(skm.auc(fpr, tpr))


def pr_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Binary precision-recall for positive class 1: (recall, precision, average precision).

    One point per distinct score in order of rising recall, starting at (0, 1). Without positive
    samples recall is 0 everywhere (sklearn warns and sets it to 1) and AP is 0.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "No positive class found in y_true")
        precision, recall, _ = skm.precision_recall_curve(
            y_true, scores, pos_label=1, drop_intermediate=False
        )
        ap = skm.average_precision_score(y_true, scores, pos_label=1)
    if not np.any(np.asarray(y_true) == 1):
        recall = np.zeros_like(recall)
    return recall[::-1], precision[::-1], float(ap)


def _macro(pc: PerClass, classes: np.ndarray) -> dict:
    """Unweighted means over the selected classes (a bool mask)."""
    return {
        "macro_f1": float(pc.f1[classes].mean()),
        "macro_precision": float(pc.precision[classes].mean()),
        "macro_recall": float(pc.recall[classes].mean()),
    }


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
    pc = per_class_scores(y_true, y_pred, n_classes)
    weights = pc.support / max(pc.support.sum(), 1)
    avg = pc.support > 0 if present_only and pc.support.any() else np.ones(n_classes, bool)
    # Not sklearn's log_loss: it clips at the dtype's eps on both ends (1.2e-7 for float32
    # probabilities, so even a sure right answer costs 1.2e-7) instead of a 1e-12 floor.
    p_true = probs[np.arange(len(y_true)), y_true]
    _, _, _, ece = calibration_bins(y_true, probs)
    report: dict = {
        "accuracy": _accuracy(y_true, y_pred),
        **_macro(pc, avg),
        "weighted_f1": float(np.sum(pc.f1 * weights)),
        "log_loss": float(np.mean(-np.log(np.clip(p_true, 1e-12, 1.0)))) if len(y_true) else 0.0,
        "ece": ece,
    }
    if n_classes > 5:
        report["top5_accuracy"] = top_k_accuracy(y_true, probs, 5)
    if n_classes == 2 and len(y_true):  # no curve without images (all may be unreadable)
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
    y = np.array([index[t] for t in true], dtype=np.int64)
    # Unknown labels and None map to len(classes): no class's column, so never a hit.
    p = np.array([index.get(q, len(classes)) for q in predicted], dtype=np.int64)
    pc = per_class_scores(y, p, len(classes))
    return {
        "accuracy": _accuracy(y, p),
        **_macro(pc, np.ones(len(classes), bool)),
        "n_images": len(y),
    }
