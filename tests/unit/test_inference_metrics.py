"""Metrics (scikit-learn + the hand-written rest) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from visionops.evaluate.metrics import (
    calibration_bins,
    classification_report,
    confusion_matrix,
    label_scores,
    pr_curve,
    roc_curve,
    top_k_accuracy,
)
from visionops.onnxrt import softmax

pytestmark = pytest.mark.unit


def one_hot(pred: list[int], n: int, p: float = 0.9) -> np.ndarray:
    probs = np.full((len(pred), n), (1 - p) / (n - 1), dtype=np.float32)
    probs[np.arange(len(pred)), pred] = p
    return probs


def test_softmax_is_stable_and_normalised() -> None:
    probs = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(probs, [[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-6)


def test_report_by_hand() -> None:
    # true: 0 0 1 1 2 ; pred: 0 1 1 1 0
    report = classification_report(
        np.array([0, 0, 1, 1, 2]), one_hot([0, 1, 1, 1, 0], 3), ["a", "b", "c"]
    )
    assert report["accuracy"] == pytest.approx(3 / 5)
    pc = report["per_class"]
    assert pc["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert pc["b"]["precision"] == pytest.approx(2 / 3) and pc["b"]["recall"] == 1.0
    assert pc["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert report["weighted_f1"] == pytest.approx((0.5 * 2 + 0.8 * 2) / 5)
    assert "top5_accuracy" not in report and "roc_auc" not in report


def test_confusion_matrix_rows_are_true_classes() -> None:
    cm = confusion_matrix(np.array([0, 0, 1]), np.array([1, 0, 1]), 2)
    assert cm.tolist() == [[1, 1], [0, 1]]


def test_top5_only_with_more_than_five_classes() -> None:
    y = np.array([0, 1, 2, 3, 4, 5, 6])
    probs = np.tile(np.linspace(1, 0.1, 7, dtype=np.float32), (7, 1))
    probs /= probs.sum(axis=1, keepdims=True)
    report = classification_report(y, probs, [str(i) for i in range(7)])
    assert report["top5_accuracy"] == pytest.approx(5 / 7)
    assert top_k_accuracy(y, probs, 1) == pytest.approx(1 / 7)


def test_ece_zero_when_confidence_equals_accuracy() -> None:
    # 10 predictions at confidence 0.8, 8 of them right -> perfectly calibrated.
    y = np.array([0] * 8 + [1] * 2)
    probs = np.tile(np.array([0.8, 0.2], dtype=np.float32), (10, 1))
    _, acc, counts, ece = calibration_bins(y, probs)
    assert ece == pytest.approx(0.0, abs=1e-6)
    assert counts.sum() == 10
    # Always right at confidence 0.6 -> ECE 0.4.
    assert calibration_bins(np.zeros(4, int), np.tile([0.6, 0.4], (4, 1)))[3] == pytest.approx(0.4)


def test_roc_and_pr_binary() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_curve(y, np.array([0.1, 0.2, 0.8, 0.9]))[2] == pytest.approx(1.0)
    assert roc_curve(y, np.array([0.9, 0.8, 0.2, 0.1]))[2] == pytest.approx(0.0)
    assert roc_curve(y, np.array([0.1, 0.4, 0.35, 0.8]))[2] == pytest.approx(0.75)
    assert pr_curve(y, np.array([0.1, 0.2, 0.8, 0.9]))[2] == pytest.approx(1.0)
    report = classification_report(y, one_hot([0, 1, 1, 1], 2), ["neg", "pos"])
    assert {"roc_auc", "average_precision"} <= set(report)


def test_present_only_averages_over_classes_with_samples() -> None:
    probs = one_hot([0, 0], 3)
    assert classification_report(np.array([0, 0]), probs, list("abc"))["macro_f1"] == pytest.approx(
        1 / 3
    )
    assert (
        classification_report(np.array([0, 0]), probs, list("abc"), present_only=True)["macro_f1"]
        == 1.0
    )


def test_label_scores_counts_unknown_and_missing_predictions_as_wrong() -> None:
    true = ["cat", "cat", "dog", "dog"]
    scores = label_scores(true, ["cat", "lion", "dog", None], ["cat", "dog"])
    assert scores["accuracy"] == 0.5
    assert scores["macro_f1"] == pytest.approx(2 / 3)  # both classes: P=1, R=0.5


def test_binary_report_on_no_images_has_no_curves() -> None:
    report = classification_report(np.zeros(0, np.int64), np.zeros((0, 2)), ["a", "b"])
    assert report["n_images"] == 0 and "roc_auc" not in report
