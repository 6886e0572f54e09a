"""95% intervals of small-split scores (issue 14): Wilson for accuracy, bootstrap for macro-F1."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from visionops.evaluate.intervals import (
    _macro_f1_from_counts,
    bootstrap_macro_f1,
    format_interval,
    score_intervals,
    wilson_interval,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (37, 37, 0.9059, 1.0),  # issue 14: "1.000 on 37 images" is [0.906, 1.000]
        (0, 37, 0.0, 0.0941),  # mirror image
        (28, 30, 0.7868, 0.9815),  # 0.933 on a 30-image val split
        (478, 516, 0.9005, 0.9459),  # clothing-small's test split (0.926)
        (5, 10, 0.2366, 0.7634),  # textbook value (Wilson 1927 / Newcombe 1998)
        (1, 1, 0.2065, 1.0),
    ],
)
def test_wilson_known_values(successes: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=1e-4)
    assert 0.0 <= got[0] <= successes / n <= got[1] <= 1.0


def test_wilson_narrows_with_more_images_and_is_never_empty() -> None:
    widths = [np.subtract(*wilson_interval(int(0.9 * n), n)[::-1]) for n in (10, 30, 100, 1000)]
    assert widths == sorted(widths, reverse=True) and widths[-1] > 0
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no images: nothing is known


@pytest.mark.parametrize(("successes", "n"), [(-1, 5), (6, 5), (1, -1)])
def test_wilson_rejects_impossible_counts(successes: int, n: int) -> None:
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(successes, n)


def test_count_matrix_macro_f1_matches_sklearn() -> None:
    """The bootstrap's fast F1 is sklearn's macro-F1 (absent classes score 0, as evaluate)."""
    rng = np.random.default_rng(3)
    for n_classes in (2, 3, 7):
        y = rng.integers(0, n_classes, 50)
        pred = np.where(rng.random(50) < 0.7, y, rng.integers(0, n_classes, 50))
        cm = np.zeros((1, n_classes, n_classes + 1), np.int64)
        np.add.at(cm, (0, y, pred), 1)
        expected = f1_score(y, pred, labels=np.arange(n_classes), average="macro", zero_division=0)
        assert _macro_f1_from_counts(cm)[0] == pytest.approx(expected)


def test_bootstrap_macro_f1_brackets_the_score_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    pred = np.where(rng.random(60) < 0.8, y, (y + 1) % 3)
    f1 = f1_score(y, pred, average="macro")
    low, high = bootstrap_macro_f1(y, pred, 3)
    assert low < f1 < high and 0.1 < high - low < 0.4  # ~±9 pt on 60 images
    assert bootstrap_macro_f1(y, pred, 3) == (low, high)  # fixed seed
    assert bootstrap_macro_f1(y, y, 3) == (1.0, 1.0)  # all right: every resample scores 1
    assert bootstrap_macro_f1(y[:0], y[:0], 3) == (0.0, 1.0)


def test_score_intervals_keys_and_format() -> None:
    y = np.array([0] * 20 + [1] * 17)
    out = score_intervals(y, y.copy(), 2)
    assert list(out) == [
        "accuracy_ci_low",
        "accuracy_ci_high",
        "macro_f1_ci_low",
        "macro_f1_ci_high",
    ]
    assert out["accuracy_ci_low"] == pytest.approx(0.9059, abs=1e-4)
    assert out["accuracy_ci_high"] == 1.0
    assert format_interval(1.0, out["accuracy_ci_low"], 1.0) == "1.000 [0.906, 1.000]"
