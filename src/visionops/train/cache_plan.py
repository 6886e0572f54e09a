"""Before a training fills its caches: hold what it needs, prune to the budget, pick the mode.

:func:`plan_caches` runs on rank 0 before the image cache is filled:

1. it takes shared locks on the folders this run needs (its image variant, its feature store, its
   resume folder), so no other training prunes them while it runs;
2. it estimates what the run will add (:mod:`visionops.train.cache_budget`): missing decoded
   images, and the feature store if it is not complete yet (activation shape from one forward of
   the frozen units on a zero image);
3. it chooses **streaming** (augment on the fly, no per-view feature cache: what
   ``train.feature_views: 0`` does) when ``train.streaming`` is ``always``; on a CUDA device
   with ``auto`` (a GPU runs the frozen units faster than it reads them back from disk); or with
   ``auto`` when the feature store would not fit ``base.cache_max_gb`` even after pruning every
   folder it may prune. It says so in one line, with the numbers and the knob;
4. it prunes stale, then least-recently-used folders until the run's additions fit, printing one
   line per folder removed, and marks the needed folders used.

A streamed run trains exactly as ``feature_views: 0`` does, so it resumes under that run's key.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from visionops.config import Config
from visionops.images import PreprocessSpec
from visionops.train.cache_budget import (
    GB,
    feature_bytes,
    gb,
    image_bytes_each,
    prune,
    removable_bytes,
    remove_own_stale_work,
)
from visionops.train.cache_folders import FolderUse, mark_used, other_bytes, scan_cache
from visionops.train.data import ImageCache, SplitData
from visionops.train.devices import Runtime
from visionops.train.features import feature_key
from visionops.train.resume import run_key
from visionops.train.run_frozen import resolve_engine

log = logging.getLogger(__name__)


@dataclass
class CachePlan:
    """What :func:`plan_caches` decided; ``release()`` drops the folder locks at the end."""

    streaming: bool
    reason: str = ""  # "", "config", "always", "cuda", "budget"
    folders: list[Path] = field(default_factory=list)
    use: FolderUse | None = None

    def effective_config(self, config: Config) -> Config:
        """``config`` as it trains: ``feature_views: 0`` when streaming (for the resume key)."""
        if not self.streaming or config.train.feature_views == 0:
            return config
        train = config.train.model_copy(update={"feature_views": 0})
        return config.model_copy(update={"train": train})

    def mark_used(self) -> None:
        for folder in self.folders:
            if folder.is_dir():
                mark_used(folder)

    def release(self) -> None:
        if self.use is not None:
            self.use.release()

    def __enter__(self) -> CachePlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def describe(self) -> str:
        return "streaming" if self.streaming else "feature cache"


def frozen_shapes(
    model: torch.nn.Module, cut: int, spec: PreprocessSpec, device: torch.device
) -> tuple[tuple[int, ...] | None, int]:
    """``(acts shape per image or None, pooled width)`` of the frozen part, from one forward
    of a zero image in eval mode (no RNG drawn, no BatchNorm statistics moved)."""
    keep = 0 < cut < len(model.body)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            x = torch.zeros(1, 3, spec.image_size, spec.image_size, device=device)
            acts = model.body[:cut](x)
            pooled = model.pooled(acts, cut)
    finally:
        model.train(was_training)
    return (tuple(acts.shape[1:]) if keep else None), int(pooled.shape[1])


def plan_caches(
    config: Config,
    runtime: Runtime,
    model: torch.nn.Module,
    cut: int,
    spec: PreprocessSpec,
    cache: ImageCache,
    train: SplitData,
    val: SplitData,
) -> CachePlan:
    """Hold, estimate, choose, prune (rank 0; other ranks get the choice by broadcast)."""
    plan = CachePlan(streaming=config.train.feature_views == 0, reason="config")
    if runtime.is_main:
        plan = _plan_main(config, runtime, model, cut, spec, cache, train, val)
    if runtime.distributed:
        choice = [plan.streaming, plan.reason]
        torch.distributed.broadcast_object_list(choice, src=0)
        if not runtime.is_main:
            plan = CachePlan(streaming=bool(choice[0]), reason=str(choice[1]))
    return plan


def _plan_main(
    config: Config,
    runtime: Runtime,
    model: torch.nn.Module,
    cut: int,
    spec: PreprocessSpec,
    cache: ImageCache,
    train: SplitData,
    val: SplitData,
) -> CachePlan:
    t, root = config.train, config.cache_dir
    budget = int(config.base.cache_max_gb * GB)
    fkey = feature_key(config, cut, spec, train, val) if t.feature_views > 0 else None
    streamed = CachePlan(streaming=True).effective_config(config)
    rkeys = {run_key(config, train, val), run_key(streamed, train, val)}
    needed = {f"images/{cache.root.name}"} | {f"checkpoints/{k}" for k in rkeys}
    if fkey:
        needed.add(f"features/{fkey}")
    use = FolderUse()
    for item in sorted(needed):
        kind, name = item.split("/", 1)
        use.hold(root, kind, name)
    folders_needed = [root / item for item in sorted(needed)]

    folders = scan_cache(root)
    if fkey and remove_own_stale_work(folders, f"features/{fkey}", time.time()):
        folders = scan_cache(root)
    others = other_bytes(root)
    total = sum(f.bytes for f in folders) + others
    shas = {s for s in train.sha256 + val.sha256 if not cache.path_for(s).exists()}
    sample = [cache.path_for(s) for s in (train.sha256 + val.sha256)[:200]]
    image_in = len(shas) * image_bytes_each(cache.resize, [p for p in sample if p.exists()])

    streaming, reason, feature_in = t.feature_views == 0, "config", 0
    features_done = fkey is not None and (root / "features" / fkey / "done.json").exists()
    # always and cuda do not depend on what the cache holds: cold and warm runs train alike
    if not streaming and t.streaming == "always":
        streaming, reason = True, "always"
    elif not streaming and t.streaming == "auto" and runtime.device.type == "cuda":
        streaming, reason = True, "cuda"
        print(
            f"cache: streaming on {runtime.device} (augment on the fly, no feature cache of "
            f"{t.feature_views} views): a GPU runs the frozen units faster than it reads "
            "them from disk; set train.streaming: never to cache them anyway",
            flush=True,
        )
    elif not streaming and not features_done:
        acts, pooled = frozen_shapes(model, cut, spec, runtime.device)
        graph = 0
        if resolve_engine(config, runtime) == "onnxruntime":
            graph = sum(p.numel() * p.element_size() for p in model.body.parameters())
        feature_in = feature_bytes(t.feature_views, len(train), len(val), acts, pooled, graph)
        kept = total - removable_bytes(root, folders, needed)
        if kept + image_in + feature_in > budget and t.streaming == "auto":
            streaming, reason = True, "budget"
            print(
                f"cache: streaming (augment on the fly, no feature cache): the feature cache "
                f"would take {gb(feature_in)} ({t.feature_views} views x {len(train)} train "
                f"images) and the new decoded images {gb(image_in)}, with {gb(kept)} that "
                f"must stay, over base.cache_max_gb = {config.base.cache_max_gb:g} GB; raise "
                "base.cache_max_gb or lower train.feature_views to cache features",
                flush=True,
            )
            feature_in = 0
    incoming = image_in + feature_in
    result = prune(root, folders, needed, budget, incoming, others)
    if result.total_after + incoming > budget:
        print(
            f"cache: {root} will hold ~{gb(result.total_after + incoming)}, over "
            f"base.cache_max_gb = {config.base.cache_max_gb:g} GB, after pruning what it may "
            f"({gb(result.freed)} freed; {len(result.kept_busy)} folder(s) in use by other "
            "trainings); raise base.cache_max_gb",
            flush=True,
        )
    log.info(
        "cache: %s, %s used of %s budget, run adds ~%s",
        "streaming" if streaming else "feature cache",
        gb(result.total_after),
        gb(budget),
        gb(incoming),
    )
    plan = CachePlan(streaming, reason, folders_needed, use)
    plan.mark_used()
    return plan
