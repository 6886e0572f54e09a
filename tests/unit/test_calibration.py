"""Temperature scaling (issue 14): the fit on synthetic logits whose right temperature is known,
and ECE falling on over- and under-confident sets. Real math, no model."""

from __future__ import annotations

import numpy as np
import pytest

from visionops.evaluate.metrics import calibration_bins
from visionops.onnxrt import softmax
from visionops.train.calibrate import (
    T_MAX,
    T_MIN,
    calibration_record,
    checkpoint_temperature,
    fit_temperature,
    nll,
)

pytestmark = pytest.mark.unit


def calibrated_set(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is calibrated by construction: labels are *drawn* from it."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.5, (n, classes))
    probs = softmax(logits.astype(np.float32)).astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


def ece(logits: np.ndarray, labels: np.ndarray, t: float = 1.0) -> float:
    return calibration_bins(labels, softmax((logits / t).astype(np.float32)))[3]


@pytest.mark.parametrize(
    ("distortion", "kind"),
    [(0.5, "under-confident (label smoothing's look)"), (2.0, "over-confident")],
)
def test_fit_recovers_the_distortion_and_lowers_ece(distortion: float, kind: str) -> None:
    """Scaling calibrated logits by ``distortion`` makes them mis-calibrated; the fitted T on
    one half (val) undoes it, and ECE/NLL fall on the other half (test)."""
    logits, labels = calibrated_set(4000, 5, seed=1)
    distorted = logits * distortion
    val, test = slice(0, 2000), slice(2000, None)
    t = fit_temperature(distorted[val], labels[val])
    assert t == pytest.approx(distortion, rel=0.1), kind
    before, after = ece(distorted[test], labels[test]), ece(distorted[test], labels[test], t)
    assert before > 0.08 and after < 0.03 and after < before / 3, (kind, before, after)
    assert nll(distorted[test], labels[test], t) < nll(distorted[test], labels[test])


def test_fit_is_the_nll_minimum_and_keeps_the_ranking() -> None:
    logits, labels = calibrated_set(600, 3, seed=2)
    logits = logits * 0.6
    t = fit_temperature(logits, labels)
    best = nll(logits, labels, t)
    for other in (t * 0.9, t * 1.1, 1.0):
        assert best <= nll(logits, labels, other) + 1e-9
    assert ((logits / t).argmax(1) == logits.argmax(1)).all()  # accuracy cannot change


def test_degenerate_inputs() -> None:
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, np.int64)) == 1.0
    assert fit_temperature(np.zeros((4, 1)), np.zeros(4, np.int64)) == 1.0
    # Perfectly separated logits: NLL falls towards 0 as T -> 0; the fit sharpens until the
    # loss is flat in float64, and never leaves the bounds.
    logits = np.array([[5.0, -5.0], [-5.0, 5.0]] * 10)
    labels = np.array([0, 1] * 10)
    t = fit_temperature(logits, labels)
    assert T_MIN <= t < 0.5 and nll(logits, labels, t) < 1e-6
    # Labels unrelated to the logits: the best is near-uniform probabilities, T large.
    rng = np.random.default_rng(0)
    t = fit_temperature(rng.normal(0, 1, (400, 3)), rng.integers(0, 3, 400))
    assert 3.0 < t <= T_MAX


def test_record_and_checkpoint_default() -> None:
    logits, labels = calibrated_set(500, 4, seed=4)
    record = calibration_record(logits * 0.5, labels)
    assert set(record) == {
        "temperature",
        "fitted_on",
        "n_images",
        "val_nll_before",
        "val_nll_after",
    }
    assert record["val_nll_after"] < record["val_nll_before"] and record["n_images"] == 500
    assert checkpoint_temperature({"calibration": record}) == record["temperature"]
    assert checkpoint_temperature({}) == 1.0  # trained before issue 14 / train.calibrate off
