"""Which epoch is the model: the selection rule, with ties broken by validation loss.

The selection score (accuracy, or macro-F1 with class weighting) moves in steps of one image:
on a 30-image validation split, 1/30 = 3.3 points. Fine-tuning epochs that get exactly as many
images right as the best head-only epoch are therefore common, and under a strict ``>`` they
never replace it, so the fine-tuning is thrown away (issue 14: the best epoch of a 245-image set
was head-only epoch 4 of 15, three fine-tuned epochs tied it).

The rule (:func:`is_new_best`):

1. a score higher by at least one image's worth (``1 / n_val``) wins;
2. a score within less than one image's worth of the saved one is a **tie**, and the epoch with
   the **lower validation loss** wins; a tie with an equal or higher loss keeps the saved model;
3. anything lower loses.

Why the loss: among models that get the same images right, cross-entropy is the one number
that still tells them apart, and it uses every image's probability rather than one bit per
image, so it is far less noisy than the count itself; it is what the model minimises and what
calibration (temperature scaling) then builds on. Later epochs are not preferred as such: a
tie with a worse loss (over-fitting shows there first) keeps the earlier model.

For accuracy, "less than one image" means exactly equal counts (scores are multiples of
``1 / n_val``; the tolerance also absorbs float rounding). Macro-F1 moves by about ``1 / n_val``
when one image flips on balanced classes, so the same tolerance makes a sub-image F1 change a
tie decided by the loss rather than a win by itself. The same rule resets early stopping's
patience within a phase, so a phase whose loss still falls on a flat score is not cut short.
"""

from __future__ import annotations

#: Float slack: scores are means of 0/1 hits (accuracy) or of F1 ratios, rounded at ~1e-16.
_EPS = 1e-9


def tie_tolerance(n_val: int) -> float:
    """One image's worth of the selection score on a validation split of ``n_val`` images."""
    return 1.0 / max(n_val, 1)


def is_new_best(
    score: float, loss: float, best_score: float, best_loss: float, tolerance: float
) -> bool:
    """True when an epoch scoring ``(score, loss)`` replaces the saved ``(best_score,
    best_loss)``; ``tolerance`` is :func:`tie_tolerance` (see the module docstring).

    >>> is_new_best(0.9, 0.30, 0.9, 0.35, 1 / 30)   # tie, lower loss: replaces
    True
    >>> is_new_best(0.9, 0.40, 0.9, 0.35, 1 / 30)   # tie, higher loss: keeps the saved one
    False
    """
    if score >= best_score + tolerance - _EPS:
        return True
    if abs(score - best_score) < tolerance - _EPS:
        return loss < best_loss
    return False
