"""Stage ``train``: head-only phase, then fine-tuning, tracked, checkpointed, resumable.

The schedule (all from ``params.yaml``):

1. **head** (``train.head_epochs`` at ``train.head_lr``): the backbone is frozen; only the new head
   learns. With ``train.feature_views`` > 0 it trains on cached pooled features of augmented views
   (:mod:`visionops.train.features`), so an epoch costs milliseconds.
2. **finetune** (``train.finetune_epochs`` at ``train.finetune_lr``): the last
   ``train.finetune_blocks`` units (or ``all``) and the head learn; the frozen units before them
   are read from the same cache when ``feature_views`` > 0, else run on the fly.

Each phase: AdamW, linear warm-up (``train.warmup_epochs``) then cosine decay, label smoothing.
The last phase stops early after ``train.early_stopping_patience`` epochs without a better
validation score within it (macro-F1 when class weighting is on, else accuracy); the head phase
always completes, since fine-tuning starts from where it ends. The best epoch over both phases
is the model. With ``train.freeze_bn`` (and pretrained weights) BatchNorm keeps its ImageNet
statistics throughout (see :func:`visionops.train.loop.set_train_mode`).

Where the checkpoints live. ``artifacts/train/best.pt`` is a DVC output, and DVC deletes a stage's
outputs before running it again, so the resume state cannot live there: ``last.pt`` (model,
optimizer, scheduler, RNG, trainer state, MLflow run id) and the running ``best.pt`` are written
every epoch to ``<cache_dir>/checkpoints/<key>/`` where ``key`` hashes the params and the data. A
killed ``visionops train`` / ``dvc repro`` with the same params and data resumes after the last
completed epoch, in the same MLflow run; a successful run publishes ``best.pt`` and removes that
folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionops.config import Config
from visionops.paths import stage_paths
from visionops.train.checkpoint import (
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from visionops.train.data import ImageCache, ImageDataset, read_splits
from visionops.train.devices import Runtime, barrier
from visionops.train.features import load_or_compute
from visionops.train.imbalance import resolve_imbalance
from visionops.train.loop import (
    ArraySource,
    Entry,
    ImageSource,
    evaluate,
    set_trainable,
    train_epoch,
    warmup_cosine,
)
from visionops.train.models import create_model, preprocess_spec
from visionops.train.result import Phase, TrainerState, TrainResult
from visionops.train.tracking import TrainTracker

log = logging.getLogger(__name__)

EpochHook = Callable[[int], None]


@dataclass
class Context:
    """Everything the phases share (built once per run)."""

    config: Config
    runtime: Runtime
    class_names: list[str]
    model: Any
    spec: Any
    cache: ImageCache
    train: Any
    val: Any
    store: Any
    criterion: nn.Module
    sample_weights: Any
    extra: dict[str, Any] = field(default_factory=dict)


def run_key(config: Config, train, val) -> str:
    """Params + data a resume state belongs to (device, engine and resume flag excluded)."""
    params = {
        "seed": config.base.seed,
        "model": config.model.model_dump(mode="json"),
        "train": config.train.model_dump(
            mode="json", exclude={"resume", "device", "feature_engine"}
        ),
        "data": [train.sha256, train.labels.tolist(), val.sha256, val.labels.tolist()],
    }
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:20]


def finetune_cut(blocks: str | int, n_units: int) -> int:
    """Index of the first fine-tuned unit (0 = the whole backbone)."""
    return 0 if blocks == "all" else max(0, n_units - int(blocks))


def train_model(config: Config, runtime: Runtime, on_epoch_end: EpochHook | None) -> TrainResult:
    started = time.perf_counter()
    t, m = config.train, config.model
    class_names, train, val = read_splits(config)
    spec = preprocess_spec(m.backbone, m.image_size, m.resize)
    cache = ImageCache(config.cache_dir, m.resize, spec.interpolation)
    if runtime.is_main:
        cache.fill(train.paths + val.paths, train.sha256 + val.sha256, config.base.workers)
    barrier(runtime)

    model = create_model(
        m.backbone, len(class_names), m.pretrained, m.dense_units, m.dropout, m.image_size
    )
    memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
    model = model.to(runtime.device, memory_format=memory_format)
    n_units = len(model.body)
    cut = finetune_cut(t.finetune_blocks, n_units) if t.finetune_epochs else n_units
    phases = [
        p
        for p in (
            Phase("head", t.head_epochs, t.head_lr, n_units),
            Phase("finetune", t.finetune_epochs, t.finetune_lr, cut),
        )
        if p.epochs > 0
    ]
    phases[-1] = replace(phases[-1], early_stop=True)
    store = None
    if t.feature_views > 0:  # computed from the pretrained weights, before any resume
        store = load_or_compute(config, model, min(cut, n_units), cache, train, val, spec, runtime)

    imbalance = resolve_imbalance(t, train.labels, len(class_names))
    weight = None
    if imbalance.class_weights is not None:
        weight = torch.from_numpy(imbalance.class_weights).to(runtime.device)
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=t.label_smoothing)
    ctx = Context(
        config,
        runtime,
        class_names,
        model,
        spec,
        cache,
        train,
        val,
        store,
        criterion,
        imbalance.sample_weights,
    )

    key = run_key(config, train, val)
    state_dir = config.cache_dir / "checkpoints" / key
    state, resume = TrainerState(), None
    if t.resume and (state_dir / "last.pt").exists():
        resume = load_checkpoint(state_dir / "last.pt")
        model.load_state_dict(resume["model_state"])
        state = TrainerState(**resume["trainer"])
        restore_rng_state(resume["rng"])
        log.info("resuming from %s after epoch %d", state_dir / "last.pt", state.epoch)
    resumed_from = state.epoch if resume else None

    tracker = TrainTracker(config, runtime.is_main)
    state.run_id = tracker.start(
        state.run_id,
        extra_params={
            "resolved.device": runtime.describe(),
            "resolved.imbalance": imbalance.mode,
            "resolved.selection_metric": imbalance.selection_metric,
            "resolved.first_finetuned_unit": cut,
            "resolved.units": n_units,
            "resolved.train_images": len(train),
            "resolved.val_images": len(val),
        },
        resumed_from=resumed_from,
    )
    metric = imbalance.selection_metric
    try:
        for index, phase in enumerate(phases):
            if index < state.phase_index:
                continue
            if index > state.phase_index:
                state.phase_index, state.phase_epoch, state.phase_done = index, 0, False
                state.bad_epochs, state.phase_best = 0, -1.0
            if state.phase_done or state.phase_epoch >= phase.epochs:
                continue
            _run_phase(ctx, phase, state, resume, metric, state_dir, tracker, on_epoch_end, key)
            resume = None
        state.phase_index = len(phases)
        result = _finish(ctx, state, metric, state_dir, tracker, started, resumed_from, imbalance)
    except BaseException as exc:
        tracker.fail(exc)
        raise
    return result


def _sources(ctx: Context, phase: Phase):
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


def _run_phase(
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
    t, runtime, model = ctx.config.train, ctx.runtime, ctx.model
    params = set_trainable(model, phase.first_unit)
    source, val_source = _sources(ctx, phase)
    entry = Entry(model, source.start)
    step_model: nn.Module = entry
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(entry, device_ids=ids)
    optimizer = torch.optim.AdamW(params, lr=phase.lr, weight_decay=t.weight_decay)
    steps = source.steps()
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(phase.epochs * steps, round(t.warmup_epochs * steps))
    )
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
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_epoch = score, epoch
        if score > state.phase_best:
            state.phase_best, state.bad_epochs = score, 0
        else:
            state.bad_epochs += 1
        patience = t.early_stopping_patience
        if phase.early_stop and patience and state.bad_epochs >= patience:
            state.phase_done = True
        if runtime.is_main:
            if improved:
                save_checkpoint(state_dir / "best.pt", _model_checkpoint(ctx, epoch, row))
            last = _model_checkpoint(ctx, epoch, row)
            last.update(
                optimizer_state=optimizer.state_dict(),
                scheduler_state=scheduler.state_dict(),
                rng=rng_state(),
                trainer=asdict(state),
                key=key,
            )
            save_checkpoint(state_dir / "last.pt", last)
            tracker.log_epoch(row)
            log.info(
                _epoch_line(row, improved, state.phase_done and state.phase_epoch < phase.epochs)
            )
        barrier(runtime)
        if on_epoch_end is not None:
            on_epoch_end(epoch)


def _epoch_line(row: dict[str, Any], improved: bool, stopped: bool) -> str:
    mark = "  * best" if improved else ""
    stop = "  (early stop: no better val score)" if stopped else ""
    return (
        f"epoch {row['epoch']:>2} {row['phase']:<8} train loss {row['train_loss']:.3f} "
        f"acc {row['train_acc']:.3f} | val loss {row['val_loss']:.3f} acc {row['val_acc']:.4f} "
        f"F1 {row['val_macro_f1']:.4f} | lr {row['lr']:.1e} | {row['images_per_s']:.0f} img/s "
        f"{row['seconds']:.0f} s{mark}{stop}"
    )


def _model_checkpoint(ctx: Context, epoch: int, row: dict[str, Any]) -> dict[str, Any]:
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


def _finish(
    ctx: Context,
    state: TrainerState,
    metric: str,
    state_dir: Path,
    tracker: TrainTracker,
    started: float,
    resumed_from: int | None,
    imbalance,
) -> TrainResult:
    paths = stage_paths(ctx.config)
    best_row = next(r for r in state.history if r["epoch"] == state.best_epoch)
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
    )
    if ctx.runtime.is_main:
        paths.checkpoint_best.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(paths.checkpoint_best, load_checkpoint(state_dir / "best.pt"))
        tracker.finish(state.history, result)
        shutil.rmtree(state_dir, ignore_errors=True)
    barrier(ctx.runtime)
    return result
