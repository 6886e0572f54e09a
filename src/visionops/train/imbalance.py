"""Class imbalance: decide whether to weight, and how.

``train.imbalance: auto`` turns class-weighted loss on when the largest/smallest class ratio in
the training split exceeds ``train.imbalance_ratio``; ``weighted_loss`` / ``weighted_sampler``
force one, ``none`` turns it off. When weighting is on, model selection (best checkpoint, early
stopping) uses validation macro-F1 instead of accuracy: accuracy rewards ignoring rare classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visionops.config import TrainParams


@dataclass(frozen=True)
class Imbalance:
    mode: str  # none | weighted_loss | weighted_sampler
    ratio: float  # largest / smallest class count in train
    class_weights: np.ndarray | None  # (C,) float32 for the loss, mean weight per sample = 1
    sample_weights: np.ndarray | None  # (N,) float64 sampling probabilities, sum 1

    @property
    def selection_metric(self) -> str:
        return "accuracy" if self.mode == "none" else "macro_f1"

    def describe(self) -> str:
        if self.mode == "none":
            return f"no class weighting (largest/smallest class {self.ratio:.1f})"
        return f"{self.mode.replace('_', ' ')} (largest/smallest class {self.ratio:.1f})"


def resolve_imbalance(params: TrainParams, labels: np.ndarray, num_classes: int) -> Imbalance:
    """Class c gets ``(N / (C * n_c)) ** imbalance_power`` (a balanced set gets all 1s), scaled so
    the mean weight per training image is 1.

    The default power 0.5 (square root of inverse frequency) is a compromise measured on
    clothing-small (7.5:1): full inverse-frequency weights cost about 2 points of validation
    accuracy (0.897 vs 0.921 unweighted, same recipe, one run each) by over-predicting the rare
    classes.
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts[counts > 0]
    ratio = float(present.max() / present.min()) if len(present) else 1.0
    mode = params.imbalance
    if mode == "auto":
        mode = "weighted_loss" if ratio > params.imbalance_ratio else "none"
    if mode == "none":
        return Imbalance("none", ratio, None, None)
    per_class = np.where(
        counts > 0,
        (len(labels) / (num_classes * np.maximum(counts, 1))) ** params.imbalance_power,
        0.0,
    )
    per_class = per_class / per_class[labels].mean()
    if mode == "weighted_loss":
        return Imbalance(mode, ratio, per_class.astype(np.float32), None)
    per_sample = per_class[labels]
    return Imbalance(mode, ratio, None, per_sample / per_sample.sum())
