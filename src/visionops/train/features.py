"""Frozen-prefix cache: compute the frozen part of the network once, train the rest many times.

While units ``0..cut-1`` of the backbone are frozen (BatchNorm in eval mode, no gradients) their
output for a given input never changes. So for ``train.feature_views`` augmented views of every
training image (random resized crop, flip, ... drawn from a per-image seed) and the eval view of
every validation image we store, once:

- ``*_acts``: the output of unit ``cut - 1`` (float16 for train, float32 for val), the input of
  the fine-tuned units. The early, high-resolution units hold most of the FLOPs, so training the
  last units on these activations costs a fraction of a full forward + backward.
- ``*_pooled``: the pooled output of the whole pretrained backbone, the input of the head-only
  phase (which then costs nothing but the head).

Computing them is inference only, which ONNX Runtime does several times faster than PyTorch eager
on a CPU (measured here: 181 vs 20-31 img/s for Lite0); ``train.feature_engine: auto`` uses ONNX
Runtime on the CPU and PyTorch on a GPU. Results live in ``<cache_dir>/features/<key>/`` where the
key hashes everything they depend on (backbone + weights, sizes, normalisation, cut, augmentation,
views, seed, the images' hashes), so reruns with the same inputs reuse them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from tqdm import tqdm

from visionops.config import Config
from visionops.images import PreprocessSpec
from visionops.train.data import ImageCache, ImageDataset, SplitData
from visionops.train.devices import Runtime
from visionops.train.models import Classifier
from visionops.train.run_frozen import Frozen, ort_runner, resolve_engine, torch_runner
from visionops.train.seeding import derive_seed

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
BATCH = 32
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class FeatureStore:
    """Arrays for the cached phases; ``*_acts`` are None unless ``0 < cut < units`` (with
    nothing frozen there is nothing to cache; with everything frozen ``*_pooled`` is enough)."""

    cut: int
    train_acts: np.ndarray | None  # (V, N, C, H, W) float16, memory-mapped
    train_pooled: np.ndarray  # (V, N, F) float32
    val_acts: np.ndarray | None  # (M, C, H, W) float32
    val_pooled: np.ndarray  # (M, F) float32

    @property
    def views(self) -> int:
        return self.train_pooled.shape[0]


def feature_key(
    config: Config, cut: int, spec: PreprocessSpec, train: SplitData, val: SplitData
) -> str:
    """Hash of everything the cached arrays depend on."""
    m, t = config.model, config.train
    blob = {
        "v": FORMAT_VERSION,
        "backbone": m.backbone,
        "pretrained": m.pretrained,
        # random weights depend on the seed; so do the views' augmentations
        "seed": config.base.seed,
        "spec": spec.to_dict(),
        "cut": cut,
        "views": t.feature_views,
        "augment": t.augment.model_dump(mode="json"),
        "train": hashlib.sha256("".join(train.sha256).encode()).hexdigest(),
        "val": hashlib.sha256("".join(val.sha256).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:20]


def load_or_compute(
    config: Config,
    model: Classifier,
    cut: int,
    cache: ImageCache,
    train: SplitData,
    val: SplitData,
    spec: PreprocessSpec,
    runtime: Runtime,
) -> FeatureStore:
    """The store for this key: read it, or (rank 0) compute it while other ranks wait."""
    key = feature_key(config, cut, spec, train, val)
    folder = config.cache_dir / "features" / key
    if not (folder / "done.json").exists() and runtime.is_main:
        # Filling the cache must not move the RNG the training draws from next: a cold and a
        # warm cache give the same model (visionops.train.seeding).
        with torch.random.fork_rng(devices=[]):
            _compute(config, model, cut, cache, train, val, spec, runtime, folder)
    if runtime.distributed:
        torch.distributed.barrier()
    log.info("feature cache: %s", folder)
    return _open(folder, cut)


def _open(folder: Path, cut: int) -> FeatureStore:
    def load(name: str, mmap: bool = False) -> np.ndarray | None:
        path = folder / f"{name}.npy"
        return np.load(path, mmap_mode="r" if mmap else None) if path.exists() else None

    return FeatureStore(
        cut,
        load("train_acts", mmap=True),
        load("train_pooled"),
        load("val_acts"),
        load("val_pooled"),
    )


def _compute(
    config: Config,
    model: Classifier,
    cut: int,
    cache: ImageCache,
    train: SplitData,
    val: SplitData,
    spec: PreprocessSpec,
    runtime: Runtime,
    folder: Path,
) -> None:
    views = config.train.feature_views
    frozen = Frozen(model, cut, spec).eval()
    keep = 0 < cut < len(model.body)
    engine = resolve_engine(config, runtime)
    # named after the key: a pruner finds the lock of a fill in progress (train/cache_folders.py)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=_mkdir(folder.parent)))
    started = time.perf_counter()
    try:
        infer = (
            ort_runner(frozen, spec, work)
            if engine == "onnxruntime"
            else torch_runner(frozen, runtime)
        )
        total = views * len(train) + len(val)
        bar = tqdm(total=total, desc="frozen features", unit="img", leave=False, disable=None)
        arrays: dict[str, np.ndarray] = {}
        done = 0
        seeds = [
            [view_seed(config.base.seed, v, sha) for sha in train.sha256] for v in range(views)
        ]
        sources = [("val", None, ImageDataset(cache, val, spec))] + [
            ("train", v, ImageDataset(cache, train, spec, config.train.augment, seeds[v]))
            for v in range(views)
        ]
        for split, view, dataset in sources:
            n = len(dataset)
            offset = 0
            for acts, pooled in run_in_order(infer.run, _batches(dataset, runtime), infer.parallel):
                if f"{split}_pooled" not in arrays:
                    _allocate(arrays, work, split, views, n, acts, pooled, keep)
                stop = offset + len(pooled)
                if split == "val":
                    arrays["val_pooled"][offset:stop] = pooled
                    if keep:
                        arrays["val_acts"][offset:stop] = acts
                else:
                    arrays["train_pooled"][view, offset:stop] = pooled
                    if keep:
                        arrays["train_acts"][view, offset:stop] = acts
                offset = stop
                done += len(pooled)
                bar.update(len(pooled))
            log.info(
                "frozen features: %s%s done (%d/%d images, %.0f img/s)",
                split,
                "" if view is None else f" view {view + 1}/{views}",
                done,
                total,
                done / (time.perf_counter() - started),
            )
        bar.close()
        for array in arrays.values():
            if isinstance(array, np.memmap):
                array.flush()
        arrays.clear()
        seconds = time.perf_counter() - started
        (work / "done.json").write_text(
            json.dumps({"engine": engine, "images": total, "seconds": round(seconds, 1)})
        )
        if folder.exists():  # a previous attempt died after the rename started: replace it
            shutil.rmtree(folder)
        os.replace(work, folder)
        log.info(
            "frozen features: %d views x %d train + %d val images through units 0..%d and the "
            "pooled backbone with %s in %.0f s (%.1f img/s)",
            views,
            len(train),
            len(val),
            cut - 1,
            engine,
            seconds,
            total / seconds,
        )
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def view_seed(seed: int, view: int, sha256: str) -> int:
    """Augmentation seed of one view of one image: stable across runs and orderings (the
    value the cache format has always used: ``sha256("seed:view:sha256")``)."""
    return derive_seed(seed, view, sha256)


def _allocate(
    arrays: dict[str, np.ndarray],
    work: Path,
    split: str,
    views: int,
    n: int,
    acts: np.ndarray,
    pooled: np.ndarray,
    keep: bool,
) -> None:
    def open_memmap(name: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
        return np.lib.format.open_memmap(work / f"{name}.npy", "w+", dtype, shape)

    if split == "val":
        arrays["val_pooled"] = open_memmap("val_pooled", np.float32, (n, pooled.shape[1]))
        if keep:
            arrays["val_acts"] = open_memmap("val_acts", np.float32, (n, *acts.shape[1:]))
    else:
        arrays["train_pooled"] = open_memmap(
            "train_pooled", np.float32, (views, n, pooled.shape[1])
        )
        if keep:
            arrays["train_acts"] = open_memmap(
                "train_acts", np.float16, (views, n, *acts.shape[1:])
            )


def _batches(dataset: ImageDataset, runtime: Runtime) -> Iterator[torch.Tensor]:
    """uint8 batches in order, augmented in a thread of this process one batch ahead.

    A forked DataLoader worker died at shutdown (exit 1) in a long-lived process holding other
    libraries' threads (seen in the test suite), so no worker processes. A thread is enough:
    loading and augmenting a batch (~1.6 ms/img) then overlaps the engine's run of the previous
    one (ONNX Runtime releases the GIL). The thread is the only user of torch's global RNG while
    it runs (views are seeded per image, the caller is inside ``fork_rng``), so the augmented
    pixels do not depend on the overlap.
    """
    # its own generator: an iterator draws its base seed from it, not from the global RNG
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, num_workers=0, generator=torch.Generator().manual_seed(0)
    )
    yield from prefetch((x for x, _ in loader), depth=2)


def run_in_order(
    infer: Callable[[torch.Tensor], R], batches: Iterable[torch.Tensor], parallel: int
) -> Iterator[R]:
    """``infer(batch)`` for every batch, in order, up to ``parallel`` of them running at once
    (threads: the engines release the GIL). At most ``parallel`` batches are held."""
    if parallel <= 1:
        yield from map(infer, batches)
        return
    with ThreadPoolExecutor(parallel, thread_name_prefix="visionops-frozen") as pool:
        pending: deque[Future[R]] = deque()
        for batch in batches:
            pending.append(pool.submit(infer, batch))
            if len(pending) >= parallel:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
    """``items`` produced by a background thread, at most ``depth`` ahead of the consumer.

    An exception in the producer is raised in the consumer; a consumer that stops early (an
    error, ``close()``) cancels what is queued and waits only for the item being produced.
    """
    iterator, end = iter(items), object()
    pool = ThreadPoolExecutor(1, thread_name_prefix="visionops-prefetch")
    try:
        ahead = deque(pool.submit(next, iterator, end) for _ in range(depth))
        while (item := ahead.popleft().result()) is not end:
            ahead.append(pool.submit(next, iterator, end))
            yield item
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
