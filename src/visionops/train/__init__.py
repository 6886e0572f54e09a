"""Stage ``train``: transfer learning from the split, tracked in MLflow, resumable.

``run(config)`` trains (see :mod:`visionops.train.trainer` for the schedule and
:mod:`visionops.train.resume` for where the checkpoints live); ``run(config, overfit_batch=True)``
drives one batch to ~100% accuracy. Submodules: ``models`` (backbone factory), ``checkpoint``
(save / ``load_model``), ``data`` (uint8 cache, transforms), ``features`` (frozen-layer cache),
``schedule`` (phases, optimizers), ``run_phase`` (the epochs), ``loop``, ``devices``, ``seeding``
(a seed per purpose), ``lock`` (one training per project).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from visionops.config import Config
    from visionops.train.result import OverfitResult, TrainResult


def run(
    config: Config, overfit_batch: bool = False, on_epoch_end: Callable[[int], None] | None = None
) -> TrainResult | OverfitResult:
    """Train from ``artifacts/split`` into ``artifacts/train``; ``on_epoch_end(epoch)`` is called
    after each epoch's checkpoint is on disk (tests inject crashes there).

    A training holds the project's train lock (:mod:`visionops.train.lock`) throughout: a second
    one in the same project raises ``TrainingRunning`` at once.
    """
    from contextlib import nullcontext

    from visionops.train.devices import setup_runtime, shutdown
    from visionops.train.lock import train_lock

    with nullcontext() if overfit_batch else train_lock(config):
        runtime = setup_runtime(config.train, config.base.seed)
        try:
            if overfit_batch:
                from visionops.train.overfit import overfit_one_batch

                return overfit_one_batch(config, runtime)
            from visionops.train.trainer import train_model

            return train_model(config, runtime, on_epoch_end)
        finally:
            shutdown(runtime)
