"""``visionops lr-find``: loss vs learning rate for the head, a PNG and a suggested LR.

The seeds' learning-rate range test (Smith 2015, fastai's ``lr_find``): train the new head on
the frozen backbone's pooled features while the learning rate grows exponentially from
``START_LR`` to ``END_LR``; record the (smoothed) loss at each step; stop when it diverges. The
suggestion is the LR of the steepest descent of the smoothed loss before its minimum (or a tenth
of the LR at the minimum, fastai's older rule, when the minimum comes almost at once). It uses
the same cached features as ``visionops train`` (so a following training run reuses them);
nothing else is written except ``artifacts/lr_find/lr_find.png`` and ``lr_find.json``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from visionops.config import Config
from visionops.io import write_json, write_with
from visionops.train.seeding import derive_seed, seed_model_init

log = logging.getLogger(__name__)

START_LR, END_LR, STEPS = 1e-6, 1.0, 120


@dataclass
class LrFindResult:
    suggested_lr: float
    min_loss_lr: float
    plot: Path
    report: Path
    configured_lr: float

    def summary(self) -> str:
        return (
            f"lr-find: suggested head LR {self.suggested_lr:.1e} (lowest loss at "
            f"{self.min_loss_lr:.1e}; params.yaml has train.head_lr {self.configured_lr:.1e})\n"
            f"  plot: {self.plot}"
        )


def run(config: Config) -> LrFindResult:
    from visionops.train.cache_folders import FolderUse, mark_used
    from visionops.train.data import ImageCache, read_splits
    from visionops.train.devices import setup_runtime, shutdown
    from visionops.train.features import feature_key, load_or_compute
    from visionops.train.imbalance import resolve_imbalance
    from visionops.train.models import create_model, preprocess_spec

    m, t = config.model, config.train
    if t.feature_views == 0:  # the head is swept on cached features: one view is enough
        config = config.model_copy(update={"train": t.model_copy(update={"feature_views": 1})})
    runtime = setup_runtime(config.train, config.base.seed)
    # the folders it reads are in use: a training's pruning (train/cache_plan.py) keeps them
    use = FolderUse()
    try:
        class_names, train, val = read_splits(config)
        spec = preprocess_spec(m.backbone, m.image_size, m.resize)
        cache = ImageCache(config.cache_dir, m.resize, spec.interpolation)
        use.hold(config.cache_dir, "images", cache.root.name)
        cache.fill(train.paths + val.paths, train.sha256 + val.sha256, config.base.workers)
        seed_model_init(config.base.seed)  # the same weights as training: shared features
        model = create_model(
            m.backbone, len(class_names), m.pretrained, m.dense_units, m.dropout, m.image_size
        )
        cut = _cut(config, len(model.body))
        key = feature_key(config, cut, spec, train, val)
        use.hold(config.cache_dir, "features", key)
        store = load_or_compute(config, model, cut, cache, train, val, spec, runtime)
        for folder in (cache.root, config.cache_dir / "features" / key):
            mark_used(folder)
        imbalance = resolve_imbalance(t, train.labels, len(class_names))
        weight = (
            None if imbalance.class_weights is None else torch.from_numpy(imbalance.class_weights)
        )
        lrs, losses = sweep(
            model.head,
            store.train_pooled,
            train.labels,
            t.batch_size,
            nn.CrossEntropyLoss(weight=weight, label_smoothing=t.label_smoothing),
            t.weight_decay,
            config.base.seed,
        )
    finally:
        use.release()
        shutdown(runtime)
    suggested, min_lr = suggest(lrs, losses)
    folder = config.artifacts_dir / "lr_find"
    plot = _plot(folder / "lr_find.png", lrs, losses, suggested)
    report = write_json(
        folder / "lr_find.json",
        {
            "suggested_lr": suggested,
            "min_loss_lr": min_lr,
            "configured_head_lr": t.head_lr,
            "lrs": [float(v) for v in lrs],
            "losses": [float(v) for v in losses],
        },
    )
    return LrFindResult(suggested, min_lr, plot, report, t.head_lr)


def _cut(config: Config, n_units: int) -> int:
    # the same cut as training, so the cached features are shared with `visionops train`
    from visionops.train.schedule import finetune_cut

    t = config.train
    return finetune_cut(t.finetune_blocks, n_units) if t.finetune_epochs else n_units


def sweep(
    head: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    criterion: nn.Module,
    weight_decay: float,
    seed: int,
    steps: int = STEPS,
) -> tuple[np.ndarray, np.ndarray]:
    """(learning rates, smoothed losses) up to divergence (loss > 4x the best)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(derive_seed(seed, "lr_find"))  # the head's dropout masks
    views, n = features.shape[:2]
    optimizer = torch.optim.AdamW(head.parameters(), lr=START_LR, weight_decay=weight_decay)
    gamma = (END_LR / START_LR) ** (1 / (steps - 1))
    lrs, losses, smooth, best = [], [], 0.0, math.inf
    head.train()
    for step in range(steps):
        lr = START_LR * gamma**step
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = rng.integers(0, n, batch_size)
        x = torch.from_numpy(np.asarray(features[rng.integers(0, views, batch_size), idx]))
        loss = criterion(head(x.float()), torch.from_numpy(labels[idx]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        smooth = 0.9 * smooth + 0.1 * loss.item()
        value = smooth / (1 - 0.9 ** (step + 1))  # bias-corrected moving average
        lrs.append(lr)
        losses.append(value)
        best = min(best, value)
        if step > 10 and (value > 4 * best or not math.isfinite(value)):
            break
    return np.asarray(lrs), np.asarray(losses)


def suggest(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, float]:
    """(suggested LR, LR at the lowest loss)."""
    lowest = int(np.argmin(losses))
    min_lr = float(lrs[lowest])
    if lowest < 3:
        return min_lr / 10, min_lr
    slopes = np.gradient(losses[: lowest + 1], np.log10(lrs[: lowest + 1]))
    return float(lrs[int(np.argmin(slopes))]), min_lr


def _plot(path: Path, lrs: np.ndarray, losses: np.ndarray, suggested: float) -> Path:
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    ax.plot(lrs, losses)
    ax.axvline(suggested, color="red", ls="--", label=f"suggested {suggested:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title("learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return write_with(
        path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    )
