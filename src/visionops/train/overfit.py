"""``visionops train --overfit-batch``: can this setup drive one batch to ~100% accuracy?

The seeds' sanity check. One batch of training images (eval view, no augmentation), the whole
network trainable, AdamW at ``train.head_lr``, no label smoothing, until every image is right
(or 150 steps). A setup that cannot memorise 32 images has a bug (labels, normalisation, frozen
weights, learning rate), and it shows here in a minute instead of after an hour of training.
Nothing is written to ``artifacts/`` or MLflow.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn

from visionops.config import Config
from visionops.train.data import ImageCache, ImageDataset, SplitData, normalize_batch, read_splits
from visionops.train.devices import Runtime
from visionops.train.loop import set_trainable
from visionops.train.models import create_model, preprocess_spec
from visionops.train.result import OverfitResult

log = logging.getLogger(__name__)

MAX_STEPS = 150


def overfit_one_batch(
    config: Config, runtime: Runtime, max_steps: int = MAX_STEPS
) -> OverfitResult:
    started = time.perf_counter()
    m, t = config.model, config.train
    class_names, train, _ = read_splits(config)
    spec = preprocess_spec(m.backbone, m.image_size, m.resize)
    cache = ImageCache(config.cache_dir, m.resize, spec.interpolation)
    # round-robin over the classes so the batch holds every class before repeating one
    turn = np.zeros(len(train), dtype=np.int64)  # i-th image of its class
    for label in np.unique(train.labels):
        members = np.flatnonzero(train.labels == label)
        turn[members] = np.arange(len(members))
    batch = np.lexsort((np.arange(len(turn)), turn))[: t.batch_size].tolist()
    subset = SplitData(
        "overfit",
        [train.paths[i] for i in batch],
        [train.sha256[i] for i in batch],
        train.labels[batch],
    )
    cache.fill(subset.paths, subset.sha256, config.base.workers)
    dataset = ImageDataset(cache, subset, spec)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))]).to(runtime.device)
    x = normalize_batch(x, spec)
    y = torch.from_numpy(subset.labels).to(runtime.device)
    model = create_model(
        m.backbone, len(class_names), m.pretrained, m.dense_units, m.dropout, m.image_size
    ).to(runtime.device)
    optimizer = torch.optim.AdamW(set_trainable(model, 0), lr=t.head_lr, weight_decay=0.0)
    criterion = nn.CrossEntropyLoss()
    model.train()
    accuracy, loss_value, step = 0.0, float("nan"), 0
    for step in range(1, max_steps + 1):
        with runtime.autocast():
            logits = model(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        accuracy = (logits.argmax(1) == y).float().mean().item()
        loss_value = loss.item()
        if step % 10 == 0 or accuracy == 1.0:
            log.info("overfit step %3d: loss %.4f accuracy %.3f", step, loss_value, accuracy)
        if accuracy == 1.0 and loss_value < 0.05:
            break
    return OverfitResult(step, accuracy, loss_value, len(y), time.perf_counter() - started)
