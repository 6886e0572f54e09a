"""One epoch of training and one evaluation pass, whatever the batches are made of.

A *source* yields ``(x, y)`` batches and says where they enter the model (``start``): images
enter at unit 0, cached activations at the first fine-tuned unit, pooled features at the head
(``start=None``). The same step code serves the three.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from tqdm import tqdm

from visionops.train.data import ImageDataset, normalize_batch
from visionops.train.devices import Runtime, all_reduce_sum
from visionops.train.models import Classifier
from visionops.train.seeding import generator, seed_epoch


class Entry(nn.Module):
    """``model`` entered at unit ``start`` (None: the head on pooled features); DDP wraps this."""

    def __init__(self, model: Classifier, start: int | None) -> None:
        super().__init__()
        self.model = model
        self.start = start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.start is None:
            return self.model.head(x)
        return self.model.forward_from(self.start, x)


def epoch_order(
    n: int,
    seed: int,
    epoch: int,
    runtime: Runtime,
    train: bool,
    sample_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.random.Generator]:
    """This rank's sample indices for an epoch (all of them, in order, when not training).

    Drawn from ``(seed, epoch)`` so every DDP rank agrees and takes its own equal slice, and a
    resumed run sees the batches it would have seen. ``sample_weights`` (probabilities) draw
    ``n`` samples with replacement: the weighted sampler.
    """
    rng = np.random.default_rng([seed, epoch])
    if not train:
        return np.arange(n), rng
    if sample_weights is not None:
        order = rng.choice(n, size=n, replace=True, p=sample_weights)
    else:
        order = rng.permutation(n)
    per_rank = n // runtime.world_size
    return order[runtime.rank * per_rank : (runtime.rank + 1) * per_rank], rng


class ArraySource:
    """Batches from cached arrays ``(V, N, ...)``: each epoch draws one view per sample."""

    def __init__(
        self,
        arrays: np.ndarray,
        labels: np.ndarray,
        start: int | None,
        batch_size: int,
        seed: int,
        runtime: Runtime,
        train: bool = True,
        sample_weights: np.ndarray | None = None,
    ) -> None:
        self.arrays = arrays
        self.labels = labels
        self.start = start
        self.batch_size = batch_size
        self.seed = seed
        self.runtime = runtime
        self.train = train
        self.sample_weights = sample_weights

    def indices(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order, rng = epoch_order(
            len(self.labels), self.seed, epoch, self.runtime, self.train, self.sample_weights
        )
        views = rng.integers(0, self.arrays.shape[0], len(order)) if self.train else 0 * order
        return order, views

    def steps(self, epoch: int = 0) -> int:
        return math.ceil(len(self.indices(epoch)[0]) / self.batch_size)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, view = self.indices(epoch)
        for i in range(0, len(order), self.batch_size):
            idx, v = order[i : i + self.batch_size], view[i : i + self.batch_size]
            sort = np.lexsort((v, idx))  # sequential reads from the memory map
            x = torch.from_numpy(np.asarray(self.arrays[v[sort], idx[sort]], dtype=np.float32))
            yield x, torch.from_numpy(self.labels[idx[sort]])


class ImageSource:
    """Batches of augmented (or eval-view) images from the uint8 cache, normalised on the device."""

    start = 0

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        seed: int,
        runtime: Runtime,
        train: bool = True,
        sample_weights: np.ndarray | None = None,
        workers: int = 0,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.runtime = runtime
        self.train = train
        self.sample_weights = sample_weights
        self.workers = workers

    def indices(self, epoch: int) -> np.ndarray:
        return epoch_order(
            len(self.dataset), self.seed, epoch, self.runtime, self.train, self.sample_weights
        )[0]

    def steps(self, epoch: int = 0) -> int:
        return math.ceil(len(self.indices(epoch)) / self.batch_size)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Augmentation draws from torch's RNG: in this process that is the one train_epoch seeds
        # per epoch; workers are seeded from the loader's own generator, never the global RNG.
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.indices(epoch).tolist(),
            num_workers=self.workers,
            pin_memory=self.runtime.device.type == "cuda",
            generator=generator(self.seed, "loader", epoch, self.runtime.rank, self.train),
        )
        for x, y in loader:
            x = x.to(self.runtime.device, non_blocking=True)
            yield normalize_batch(x, self.dataset.spec), y


Source = ArraySource | ImageSource


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


@dataclass
class EvalStats:
    loss: float
    accuracy: float
    macro_f1: float
    logits: np.ndarray  # (N, C)


def set_trainable(model: Classifier, first_unit: int) -> list[nn.Parameter]:
    """Freeze units before ``first_unit`` (len(body) = head only); return the trainable params."""
    for i, unit in enumerate(model.body):
        for p in unit.parameters():
            p.requires_grad = i >= first_unit
    for p in model.head.parameters():
        p.requires_grad = True
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model: Classifier, first_unit: int, freeze_bn: bool = True) -> None:
    """Train mode for what is trained; frozen units always run in eval mode.

    With ``freeze_bn`` the fine-tuned units stay in eval mode too: BatchNorm keeps its pretrained
    running statistics (its scale and shift still learn) and stochastic depth is off. Batch
    statistics of 32 augmented images shift the features the head was just fitted to and cost a
    head-phase's worth of accuracy before recovering (measured: 0.85 -> 0.77 after the first
    fine-tuning epoch with them, 0.85 -> 0.84 -> 0.88 without); Keras gives the same advice.
    """
    model.train()
    for unit in model.body[: len(model.body) if freeze_bn else first_unit]:
        unit.eval()


def _to_device(x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    x = x.to(runtime.device, non_blocking=True)
    if x.dim() == 4 and runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_epoch(
    model: Classifier,
    step_model: nn.Module,
    source: Source,
    first_unit: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    runtime: Runtime,
    epoch: int,
    desc: str,
    scaler: torch.amp.GradScaler | None = None,
    freeze_bn: bool = True,
) -> EpochStats:
    """One pass over ``source``; loss/accuracy are summed over DDP ranks.

    Torch's global RNG (dropout, stochastic depth, augmentation in this process) is seeded from
    ``(source.seed, epoch, rank)`` first: an epoch draws the same whatever ran before it.
    """
    seed_epoch(source.seed, epoch, runtime.rank)
    set_train_mode(model, first_unit, freeze_bn)
    started = time.perf_counter()
    total_loss = correct = seen = 0.0
    bar = tqdm(
        source.batches(epoch),
        total=source.steps(epoch),
        desc=desc,
        unit="batch",
        leave=False,
        disable=None if runtime.is_main else True,
    )
    for x, y in bar:
        x, y = _to_device(x, runtime), y.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = step_model(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        n = len(y)
        total_loss += loss.item() * n
        correct += (logits.argmax(1) == y).sum().item()
        seen += n
        elapsed = time.perf_counter() - started
        bar.set_postfix(
            loss=f"{total_loss / seen:.3f}",
            acc=f"{correct / seen:.3f}",
            img_s=f"{seen * runtime.world_size / elapsed:.1f}",
        )
    bar.close()
    total_loss, correct, seen = all_reduce_sum(runtime, [total_loss, correct, seen])
    return EpochStats(
        total_loss / max(seen, 1), correct / max(seen, 1), int(seen), time.perf_counter() - started
    )


@torch.inference_mode()
def evaluate(
    model: Classifier,
    source: Source,
    runtime: Runtime,
    num_classes: int,
    hflip_source: Source | None = None,
) -> EvalStats:
    """Plain cross-entropy, accuracy and macro-F1 over the whole source (no DDP sharding)."""
    model.eval()
    entry = Entry(model, source.start)
    logits, labels = [], []
    for x, y in source.batches(0):
        with runtime.autocast():
            logits.append(entry(_to_device(x, runtime)).float().cpu())
        labels.append(y)
    out = torch.cat(logits)
    y = torch.cat(labels)
    loss = nn.functional.cross_entropy(out, y).item()
    pred = out.argmax(1).numpy()
    # A class never predicted nor present scores 0 and still counts in the mean (as in evaluate).
    f1 = float(
        f1_score(y.numpy(), pred, labels=np.arange(num_classes), average="macro", zero_division=0)
    )
    return EvalStats(loss, float((pred == y.numpy()).mean()), f1, out.numpy())
