"""The epoch driver: one phase's epochs, from choosing what the batches are made of to the
early-stopping decision, the checkpoints and the log line after each epoch.

A phase reads pooled features (head only), cached activations of the frozen prefix (fine-tuning
from the cut the feature cache was computed at), or decoded images (anything else); see
:func:`phase_sources`. The state it advances (:class:`TrainerState`) is what ``last.pt`` saves,
so a resumed phase continues from the same epoch, score and patience count.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionops.train.context import Context, EpochHook
from visionops.train.data import ImageDataset
from visionops.train.devices import barrier
from visionops.train.loop import (
    ArraySource,
    Entry,
    ImageSource,
    evaluate,
    set_trainable,
    train_epoch,
)
from visionops.train.result import Phase, TrainerState
from visionops.train.resume import save_epoch
from visionops.train.schedule import make_optimizer
from visionops.train.selection import is_new_best, tie_tolerance
from visionops.train.tracking import TrainTracker

log = logging.getLogger(__name__)


def phase_sources(ctx: Context, phase: Phase):
    """(train source, val source) for a phase: cached arrays when there are any, else images."""
    t, runtime, store = ctx.config.train, ctx.runtime, ctx.store
    seed = ctx.config.base.seed
    n_units = len(ctx.model.body)
    head_only = phase.first_unit >= n_units
    if store is not None and head_only:
        return (
            ArraySource(
                store.train_pooled,
                ctx.train.labels,
                None,
                t.batch_size,
                seed,
                runtime,
                sample_weights=ctx.sample_weights,
            ),
            ArraySource(store.val_pooled[None], ctx.val.labels, None, 256, seed, runtime, False),
        )
    if store is not None and store.cut == phase.first_unit and store.cut > 0:
        return (
            ArraySource(
                store.train_acts,
                ctx.train.labels,
                store.cut,
                t.batch_size,
                seed,
                runtime,
                sample_weights=ctx.sample_weights,
            ),
            ArraySource(store.val_acts[None], ctx.val.labels, store.cut, 64, seed, runtime, False),
        )
    workers = 0 if runtime.device.type == "cpu" else min(4, ctx.config.base.workers or 4)
    return (
        ImageSource(
            ImageDataset(ctx.cache, ctx.train, ctx.spec, t.augment),
            t.batch_size,
            seed,
            runtime,
            sample_weights=ctx.sample_weights,
            workers=workers,
        ),
        ImageSource(
            ImageDataset(ctx.cache, ctx.val, ctx.spec), 64, seed, runtime, False, workers=workers
        ),
    )


def run_phase(
    ctx: Context,
    phase: Phase,
    state: TrainerState,
    resume: dict | None,
    metric: str,
    state_dir: Path,
    tracker: TrainTracker,
    on_epoch_end: EpochHook | None,
    key: str,
) -> None:
    """Train ``phase`` until its epochs are done or it stops early, updating ``state`` in place.

    ``resume`` is the ``last.pt`` being continued (its optimizer and scheduler are loaded when it
    stopped inside this phase), else None. ``metric`` (``macro_f1`` | ``accuracy``) picks the
    best epoch and drives early stopping; a tie on it is broken by the lower val loss
    (:mod:`visionops.train.selection`).
    """
    t, runtime, model = ctx.config.train, ctx.runtime, ctx.model
    params = set_trainable(model, phase.first_unit)
    source, val_source = phase_sources(ctx, phase)
    entry = Entry(model, source.start)
    step_model: nn.Module = entry
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(entry, device_ids=ids)
    optimizer, scheduler = make_optimizer(params, phase, t, source.steps())
    if resume is not None and state.phase_epoch > 0 and "optimizer_state" in resume:
        optimizer.load_state_dict(resume["optimizer_state"])
        scheduler.load_state_dict(resume["scheduler_state"])
    scaler = torch.amp.GradScaler("cuda") if runtime.amp_dtype == torch.float16 else None
    while state.phase_epoch < phase.epochs and not state.phase_done:
        epoch = state.epoch + 1
        desc = f"epoch {epoch} {phase.name}"
        stats = train_epoch(
            model,
            step_model,
            source,
            phase.first_unit,
            optimizer,
            scheduler,
            ctx.criterion,
            runtime,
            epoch,
            desc,
            scaler,
            t.freeze_bn and ctx.config.model.pretrained,
        )
        ev = evaluate(model, val_source, runtime, len(ctx.class_names))
        row = {
            "epoch": epoch,
            "phase": phase.name,
            "train_loss": stats.loss,
            "train_acc": stats.accuracy,
            "val_loss": ev.loss,
            "val_acc": ev.accuracy,
            "val_macro_f1": ev.macro_f1,
            "lr": scheduler.get_last_lr()[0],
            "images_per_s": stats.images_per_s,
            "seconds": stats.seconds,
        }
        state.history.append(row)
        state.epoch, state.phase_epoch = epoch, state.phase_epoch + 1
        score = ev.macro_f1 if metric == "macro_f1" else ev.accuracy
        tolerance = tie_tolerance(len(ctx.val))
        improved = is_new_best(score, ev.loss, state.best_score, state.best_loss, tolerance)
        tie = improved and score < state.best_score + tolerance - 1e-9
        if improved:
            state.best_score, state.best_loss, state.best_epoch = score, ev.loss, epoch
        if is_new_best(score, ev.loss, state.phase_best, state.phase_best_loss, tolerance):
            state.phase_best, state.phase_best_loss, state.bad_epochs = score, ev.loss, 0
        else:
            state.bad_epochs += 1
        patience = t.early_stopping_patience
        if phase.early_stop and patience and state.bad_epochs >= patience:
            state.phase_done = True
        if runtime.is_main:
            save_epoch(ctx, state_dir, row, improved, state, optimizer, scheduler, key, ev.logits)
            tracker.log_epoch(row)
            stopped = state.phase_done and state.phase_epoch < phase.epochs
            log.info(epoch_line(row, improved, stopped, tie))
        barrier(runtime)
        if on_epoch_end is not None:
            on_epoch_end(epoch)


def epoch_line(row: dict[str, Any], improved: bool, stopped: bool, tie: bool = False) -> str:
    """The one log line per epoch; ``* best`` marks the new selected epoch (``tie``: same score
    as the previous best, lower val loss), ``stopped`` early stopping."""
    mark = ("  * best (tie, lower val loss)" if tie else "  * best") if improved else ""
    stop = "  (early stop: no better val score)" if stopped else ""
    return (
        f"epoch {row['epoch']:>2} {row['phase']:<8} train loss {row['train_loss']:.3f} "
        f"acc {row['train_acc']:.3f} | val loss {row['val_loss']:.3f} acc {row['val_acc']:.4f} "
        f"F1 {row['val_macro_f1']:.4f} | lr {row['lr']:.1e} | {row['images_per_s']:.0f} img/s "
        f"{row['seconds']:.0f} s{mark}{stop}"
    )
