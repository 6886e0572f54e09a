"""Checkpoint and resume glue: which run a saved state belongs to, what each epoch writes, and
how a killed run picks up.

Where the checkpoints live. ``artifacts/train/best.pt`` is a DVC output, and DVC deletes a stage's
outputs before running it again, so the resume state cannot live there: ``last.pt`` (model,
optimizer, scheduler, RNG, trainer state, MLflow run id) and the running ``best.pt`` are written
every epoch to ``<cache_dir>/checkpoints/<key>/`` where ``key`` (:func:`run_key`) hashes the
params and the data. A killed ``visionops train`` / ``dvc repro`` with the same params and data
resumes after the last completed epoch, in the same MLflow run; a successful run publishes
``best.pt`` and removes that folder (:mod:`visionops.train.finish_run`). The file format itself is
in :mod:`visionops.train.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionops.config import Config
from visionops.train.checkpoint import (
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from visionops.train.context import Context
from visionops.train.result import TrainerState

log = logging.getLogger(__name__)


def run_key(config: Config, train, val) -> str:
    """Params + data a resume state belongs to (device, engine and resume flag excluded)."""
    params = {
        "seed": config.base.seed,
        "model": config.model.model_dump(mode="json"),
        "train": config.train.model_dump(
            mode="json", exclude={"resume", "device", "feature_engine", "streaming"}
        ),
        "data": [train.sha256, train.labels.tolist(), val.sha256, val.labels.tolist()],
    }
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:20]


def load_resume(state_dir: Path, model: torch.nn.Module) -> tuple[TrainerState, dict | None]:
    """``(trainer state, last.pt)`` to continue from, with ``model`` and the RNGs restored in
    place; ``(TrainerState(), None)`` when ``state_dir`` holds no ``last.pt`` (a fresh run)."""
    last = state_dir / "last.pt"
    if not last.exists():
        return TrainerState(), None
    resume = load_checkpoint(last)
    model.load_state_dict(resume["model_state"])
    state = TrainerState(**resume["trainer"])
    restore_rng_state(resume["rng"])
    log.info("resuming from %s after epoch %d", last, state.epoch)
    return state, resume


def save_epoch(
    ctx: Context,
    state_dir: Path,
    row: dict[str, Any],
    improved: bool,
    state: TrainerState,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    key: str,
    val_logits: np.ndarray | None = None,
) -> None:
    """After an epoch (rank 0): ``best.pt`` if the score improved, then ``last.pt`` always, with
    everything :func:`load_resume` needs to continue after this epoch.

    The running ``best.pt`` also keeps the epoch's validation logits (N, C) under
    ``val_logits``: the end of the run fits the temperature on them
    (:mod:`visionops.train.finish_run`) without another pass over the images.
    """
    checkpoint = model_checkpoint(ctx, row["epoch"], row)
    if improved:
        best = dict(checkpoint)
        if val_logits is not None:
            best["val_logits"] = torch.from_numpy(np.ascontiguousarray(val_logits, np.float32))
        save_checkpoint(state_dir / "best.pt", best)
    last = dict(checkpoint)
    last.update(
        optimizer_state=optimizer.state_dict(),
        scheduler_state=scheduler.state_dict(),
        rng=rng_state(),
        trainer=asdict(state),
        key=key,
    )
    save_checkpoint(state_dir / "last.pt", last)


def model_checkpoint(ctx: Context, epoch: int, row: dict[str, Any]) -> dict[str, Any]:
    """The keys every checkpoint has (see :mod:`visionops.train.checkpoint`), on the CPU."""
    return {
        "model_state": {k: v.detach().cpu() for k, v in ctx.model.state_dict().items()},
        "backbone": ctx.config.model.backbone,
        "class_names": list(ctx.class_names),
        "model_params": ctx.config.model.model_dump(mode="json"),
        "preprocess": ctx.spec.to_dict(),
        "epoch": epoch,
        "metrics": {
            "val_accuracy": row["val_acc"],
            "val_macro_f1": row["val_macro_f1"],
            "val_loss": row["val_loss"],
        },
    }
