"""95% intervals for scores measured on a finite split: how far the number could move on another
draw of the same size.

A test accuracy of 1.000 on 37 images is compatible with a true accuracy of 0.906 (Wilson 95%
interval [0.906, 1.000]); printed bare, it reads as exact. Every accuracy and macro-F1 that
evaluate reports therefore carries its interval:

- accuracy: the **Wilson score interval** for a binomial proportion. Unlike the normal
  approximation (``p ± 1.96 sqrt(p(1-p)/n)``) it never leaves [0, 1] and does not collapse to a
  zero width at 0 or n successes, which is exactly the small-split case;
- macro-F1: not a proportion, so a **percentile bootstrap over images** (resample the test
  images with replacement, recompute macro-F1; 2.5th and 97.5th percentiles) with a fixed seed,
  so the same predictions always give the same interval.

Both describe sampling noise of the split only, not the variance of training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from visionops.stats import Z_95, wilson_interval

__all__ = [
    "Z_95",
    "wilson_interval",
    "bootstrap_macro_f1",
    "score_intervals",
    "format_interval",
    "metric_interval",
]

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


def _macro_f1_from_counts(cm: np.ndarray) -> np.ndarray:
    """Macro-F1 of a stack of count matrices (B, C, C + 1) -> (B,): row = true class, column =
    predicted class, the last column a prediction outside the classes (wrong for its true
    class, no class's hit). An absent class scores 0, as in :mod:`visionops.evaluate.metrics`."""
    c = cm.shape[1]
    tp = np.diagonal(cm[:, :, :c], axis1=1, axis2=2).astype(np.float64)
    predicted = cm[:, :, :c].sum(axis=1)
    actual = cm.sum(axis=2)
    denom = (predicted + actual).astype(np.float64)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1.mean(axis=1)


def bootstrap_macro_f1(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_classes: int,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of macro-F1 over images (fixed seed: deterministic).

    F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (predicted + actual), read from resampled count
    matrices, so each of the ``samples`` resamples costs O(N) and no sklearn call.
    """
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    n, cols = len(y_true), n_classes + 1
    if n == 0:
        return 0.0, 1.0
    outside = (y_pred < 0) | (y_pred >= n_classes)
    cell = y_true * cols + np.where(outside, n_classes, y_pred)
    rng = np.random.default_rng(seed)
    scores = np.empty(samples)
    chunk = max(1, 2_000_000 // n)  # bounds the (chunk, N) index array to ~16 MB
    for start in range(0, samples, chunk):
        b = min(chunk, samples - start)
        cells = cell[rng.integers(0, n, size=(b, n))] + np.arange(b)[:, None] * (n_classes * cols)
        counts = np.bincount(cells.ravel(), minlength=b * n_classes * cols)
        scores[start : start + b] = _macro_f1_from_counts(counts.reshape(b, n_classes, cols))
    low, high = np.percentile(scores, [2.5, 97.5])
    return float(low), float(high)


def score_intervals(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Flat ``{accuracy,macro_f1}_ci_{low,high}`` (95%) for a report; logged as MLflow metrics."""
    y_true = np.asarray(y_true, np.int64)
    correct = int(np.sum(np.asarray(y_pred) == y_true))
    acc_low, acc_high = wilson_interval(correct, len(y_true))
    f1_low, f1_high = bootstrap_macro_f1(y_true, y_pred, n_classes)
    return {
        "accuracy_ci_low": acc_low,
        "accuracy_ci_high": acc_high,
        "macro_f1_ci_low": f1_low,
        "macro_f1_ci_high": f1_high,
    }


def format_interval(value: float, low: float, high: float, digits: int = 3) -> str:
    """``0.926 [0.900, 0.946]``: the number with its 95% interval, as reports print it."""
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def metric_interval(metrics: Mapping[str, Any], key: str, digits: int = 3) -> str:
    """``[low, high]`` from evaluate's ``<key>_ci_low/high`` in ``metrics`` (metrics.json), or
    "" when they are absent (a file written before intervals existed)."""
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if low is None or high is None:
        return ""
    return f"[{low:.{digits}f}, {high:.{digits}f}]"
