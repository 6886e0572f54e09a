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
is the model; a tie on the score (within one validation image) goes to the lower validation
loss (:mod:`~visionops.train.selection`). With ``train.calibrate`` a temperature is then fitted
on that epoch's validation logits and stored in ``best.pt`` (:mod:`~visionops.train.calibrate`).
With ``train.freeze_bn`` (and pretrained weights) BatchNorm keeps its ImageNet statistics
throughout (see :func:`visionops.train.loop.set_train_mode`).

Before the caches are filled, :mod:`~visionops.train.cache_plan` holds the cache folders this run
needs, prunes others to ``base.cache_max_gb`` and may switch to streaming (augment on the fly, as
``feature_views: 0``) when the feature cache would not fit or on a CUDA device.

Same data + params + seed give the same weights whether the caches were cold or warm and whether
the run was resumed: every random draw has a seed of its own (:mod:`visionops.train.seeding`).

This module sets a run up and walks the phases; the pieces live next to it: the phase list and
optimizers in :mod:`~visionops.train.schedule`, the epochs in :mod:`~visionops.train.run_phase`,
where the checkpoints live and how a killed run resumes in :mod:`~visionops.train.resume`, the
result and the published ``best.pt`` in :mod:`~visionops.train.finish_run`.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from visionops.config import Config
from visionops.train.cache_plan import plan_caches
from visionops.train.context import Context, EpochHook
from visionops.train.data import ImageCache, read_splits
from visionops.train.devices import Runtime, barrier
from visionops.train.features import load_or_compute
from visionops.train.finish_run import finish_run
from visionops.train.imbalance import resolve_imbalance
from visionops.train.models import create_model, preprocess_spec
from visionops.train.result import TrainerState, TrainResult
from visionops.train.resume import load_resume, run_key
from visionops.train.run_phase import run_phase
from visionops.train.schedule import plan_phases
from visionops.train.seeding import seed_model_init
from visionops.train.tracking import TrainTracker


def train_model(config: Config, runtime: Runtime, on_epoch_end: EpochHook | None) -> TrainResult:
    started = time.perf_counter()
    t, m = config.train, config.model
    class_names, train, val = read_splits(config)
    spec = preprocess_spec(m.backbone, m.image_size, m.resize)
    cache = ImageCache(config.cache_dir, m.resize, spec.interpolation)

    # the model first (no RNG is drawn by the cache fill): the cache plan needs its units
    seed_model_init(config.base.seed)
    model = create_model(
        m.backbone, len(class_names), m.pretrained, m.dense_units, m.dropout, m.image_size
    )
    memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
    model = model.to(runtime.device, memory_format=memory_format)
    n_units = len(model.body)
    cut, phases = plan_phases(t, n_units)
    # shared locks on the folders this run needs, held until it ends (train/cache_plan.py)
    with plan_caches(config, runtime, model, min(cut, n_units), spec, cache, train, val) as caches:
        if runtime.is_main:
            cache.fill(train.paths + val.paths, train.sha256 + val.sha256, config.base.workers)
        barrier(runtime)
        store = None
        if not caches.streaming:  # computed from the pretrained weights, before any resume
            store = load_or_compute(
                config, model, min(cut, n_units), cache, train, val, spec, runtime
            )
        if runtime.is_main:
            caches.mark_used()

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

        key = run_key(caches.effective_config(config), train, val)
        state_dir = config.cache_dir / "checkpoints" / key
        state, resume = TrainerState(), None
        if t.resume:
            state, resume = load_resume(state_dir, model)
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
                "resolved.feature_cache": caches.describe(),
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
                run_phase(ctx, phase, state, resume, metric, state_dir, tracker, on_epoch_end, key)
                resume = None
            state.phase_index = len(phases)
            result = finish_run(
                ctx, state, metric, state_dir, tracker, started, resumed_from, imbalance
            )
        except BaseException as exc:
            tracker.fail(exc)
            raise
        return result
