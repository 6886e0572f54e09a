"""The best-epoch rule (issue 14): a tie on the score is broken by the validation loss."""

from __future__ import annotations

import pytest

from visionops.train.run_phase import epoch_line
from visionops.train.selection import is_new_best, tie_tolerance

pytestmark = pytest.mark.unit

N_VAL = 30  # issue 14's 2-class set: one image = 3.3 points
ONE = 1 / N_VAL


@pytest.mark.parametrize(
    ("score", "loss", "best_score", "best_loss", "expected", "why"),
    [
        (28 / 30, 0.20, 28 / 30, 0.25, True, "tie, lower loss: the fine-tuned epoch replaces"),
        (28 / 30, 0.30, 28 / 30, 0.25, False, "tie, higher loss: the saved model stays"),
        (28 / 30, 0.25, 28 / 30, 0.25, False, "tie, equal loss: the earlier epoch stays"),
        (29 / 30, 0.90, 28 / 30, 0.25, True, "one more image right wins whatever the loss"),
        (27 / 30, 0.01, 28 / 30, 0.25, False, "one image fewer loses whatever the loss"),
        (0.5, 2.0, -1.0, float("inf"), True, "the first epoch is always the best so far"),
        (0.9 + 0.4 * ONE, 0.30, 0.9, 0.25, False, "sub-image F1 gain is a tie: higher loss"),
        (0.9 - 0.4 * ONE, 0.20, 0.9, 0.25, True, "sub-image F1 drop is a tie: lower loss"),
        (0.1 + 0.2, 0.2, 0.3, 0.25, True, "float rounding (0.30000000000000004) is a tie"),
    ],
)
def test_tie_break_by_val_loss(
    score: float, loss: float, best_score: float, best_loss: float, expected: bool, why: str
) -> None:
    assert is_new_best(score, loss, best_score, best_loss, tie_tolerance(N_VAL)) is expected, why


def test_tolerance_is_one_image() -> None:
    assert tie_tolerance(30) == pytest.approx(1 / 30)
    assert tie_tolerance(0) == 1.0  # no validation images: never divides by zero


def test_epoch_line_says_why_a_tie_won() -> None:
    row = {
        "epoch": 7,
        "phase": "finetune",
        "train_loss": 0.3,
        "train_acc": 0.9,
        "val_loss": 0.2,
        "val_acc": 0.93,
        "val_macro_f1": 0.93,
        "lr": 1e-4,
        "images_per_s": 50.0,
        "seconds": 10.0,
    }
    assert epoch_line(row, True, False, tie=True).endswith("* best (tie, lower val loss)")
    assert epoch_line(row, True, False).endswith("* best")
    assert "best" not in epoch_line(row, False, False)
