"""The phase schedule: which phases run, where fine-tuning starts, their optimizers and LR curve.

Kept apart from the epoch driver because ``visionops lr-find`` and ``benchmarks/bench_train.py``
need the same cut (:func:`finetune_cut`) as training, so the cached features are shared, without
pulling in the trainer. See :mod:`visionops.train.trainer` for the schedule in words.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from visionops.config import TrainParams
from visionops.train.result import Phase


def finetune_cut(blocks: str | int, n_units: int) -> int:
    """Index of the first fine-tuned unit (0 = the whole backbone)."""
    return 0 if blocks == "all" else max(0, n_units - int(blocks))


def plan_phases(t: TrainParams, n_units: int) -> tuple[int, list[Phase]]:
    """``(cut, phases)``: the first fine-tuned unit (``n_units`` when nothing is fine-tuned) and
    the phases that have epochs, head first; only the last one may stop early."""
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
    return cut, phases


def make_optimizer(
    params: list[nn.Parameter], phase: Phase, t: TrainParams, steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW at the phase's LR and a per-step scheduler: linear warm-up over
    ``train.warmup_epochs`` then cosine decay to the end of the phase (``steps`` batches an
    epoch). Fresh each phase; a resumed phase loads their states from ``last.pt`` afterwards."""
    optimizer = torch.optim.AdamW(params, lr=phase.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(phase.epochs * steps, round(t.warmup_epochs * steps))
    )
    return optimizer, scheduler


def warmup_cosine(total_steps: int, warmup_steps: int, floor: float = 0.01):
    """LR multiplier: linear warm-up from ~0 to 1, then cosine down to ``floor``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
