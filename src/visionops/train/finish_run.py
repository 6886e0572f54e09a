"""The end of a successful training run: the :class:`TrainResult` from the best epoch, its
temperature fitted on the validation logits (``train.calibrate``, :mod:`visionops.train.calibrate`),
``best.pt`` published to ``artifacts/train``, the MLflow run closed, and the resume folder removed.

Apart from the epoch driver because it runs once, after every phase, and is the only step that
writes the stage's DVC outputs.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from visionops.paths import stage_paths
from visionops.train.calibrate import calibration_record
from visionops.train.checkpoint import load_checkpoint, save_checkpoint
from visionops.train.context import Context
from visionops.train.devices import barrier
from visionops.train.imbalance import Imbalance
from visionops.train.result import TrainerState, TrainResult
from visionops.train.tracking import TrainTracker

log = logging.getLogger(__name__)


def finish_run(
    ctx: Context,
    state: TrainerState,
    metric: str,
    state_dir: Path,
    tracker: TrainTracker,
    started: float,
    resumed_from: int | None,
    imbalance: Imbalance,
) -> TrainResult:
    """``started`` is the run's ``time.perf_counter()`` at the start (this process only: a
    resumed run counts its own seconds); ``state_dir`` holds the running ``best.pt``."""
    paths = stage_paths(ctx.config)
    best_row = next(r for r in state.history if r["epoch"] == state.best_epoch)
    best = load_checkpoint(state_dir / "best.pt") if ctx.runtime.is_main else {}
    calibration = calibrate(best, ctx.val.labels, ctx.config.train.calibrate)
    result = TrainResult(
        class_names=ctx.class_names,
        best_epoch=state.best_epoch,
        epochs=state.epoch,
        selection_metric=metric,
        val_accuracy=best_row["val_acc"],
        val_macro_f1=best_row["val_macro_f1"],
        val_loss=best_row["val_loss"],
        seconds=time.perf_counter() - started,
        run_id=state.run_id,
        resumed_from=resumed_from,
        imbalance=imbalance.describe(),
        device=ctx.runtime.describe(),
        checkpoint=paths.checkpoint_best,
        calibration=calibration,
        val_images=len(ctx.val),
    )
    if ctx.runtime.is_main:
        paths.checkpoint_best.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(paths.checkpoint_best, best)
        tracker.finish(state.history, result)
        shutil.rmtree(state_dir, ignore_errors=True)
    barrier(ctx.runtime)
    return result


def calibrate(best: dict[str, Any], val_labels: np.ndarray, enabled: bool) -> dict | None:
    """Fit the temperature on the best epoch's validation logits and record it in ``best``
    (in place, under ``calibration``; the logits themselves are dropped). None when
    ``train.calibrate`` is off or the checkpoint holds no logits (rank > 0, or a ``best.pt``
    saved before issue 14 and resumed)."""
    logits = best.pop("val_logits", None)
    if not enabled or logits is None:
        return None
    record = calibration_record(logits.numpy(), np.asarray(val_labels))
    best["calibration"] = record
    log.info(
        "calibration: temperature %.3f fitted on %d val images (NLL %.4f -> %.4f)",
        record["temperature"],
        record["n_images"],
        record["val_nll_before"],
        record["val_nll_after"],
    )
    return record
