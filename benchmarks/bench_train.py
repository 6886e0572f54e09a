"""Time one training epoch: VisionOps' cached pipeline vs the seeds' decode-every-epoch loop.

Not a test. For the head-only phase and the fine-tuning phase of the same model (backbone,
image size, trainable units and batch size from ``params.yaml``), it times one epoch over the
same N training images two ways:

- **naive** (the seeds' torchvision ``ImageFolder`` approach): every epoch decodes each JPEG,
  resizes, random-resized-crops, flips, normalises, and runs the frozen part of the network in
  PyTorch before the trainable part learns;
- **visionops**: images decoded once into the uint8 cache and the frozen units computed once per
  augmented view (ONNX Runtime), so an epoch only trains the trainable part on cached arrays.

It reports both per-epoch ratios and the one-time costs (decode, frozen features) so the
amortised picture is visible too. Results go to ``benchmarks/results/bench_train.json``.

    .venv/bin/python benchmarks/bench_train.py --data ../shared/datasets/clothing-small/train \
        --images 256
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision import datasets
from torchvision.transforms import v2

from visionops.config import load_config
from visionops.offline import apply_offline_env
from visionops.train.data import ImageCache, SplitData
from visionops.train.devices import setup_runtime
from visionops.train.features import load_or_compute
from visionops.train.loop import ArraySource, Entry, set_trainable, train_epoch
from visionops.train.models import create_model, preprocess_spec
from visionops.train.schedule import finetune_cut, warmup_cosine

RESULTS = Path(__file__).parent / "results" / "bench_train.json"


def naive_epoch(
    model, first_unit: int, folder: Path, indices: list[int], spec, batch: int, lr: float
) -> float:
    """Seconds for one epoch the ImageFolder way (decode + augment + frozen forward, every time)."""
    transform = v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(spec.image_size, scale=(0.6, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(spec.mean, spec.std),
        ]
    )
    dataset = torch.utils.data.Subset(
        datasets.ImageFolder(str(folder), transform=transform), indices
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)
    params = set_trainable(model, first_unit)
    optimizer = torch.optim.AdamW(params, lr=lr)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.eval()  # frozen BatchNorm statistics, as in the trainer
    started = time.perf_counter()
    for x, y in loader:
        x = x.contiguous(memory_format=torch.channels_last)
        if first_unit >= len(model.body):
            with torch.no_grad():
                feats = model.pooled(x)
            logits = model.head(feats)
        else:
            with torch.no_grad():
                acts = model.body[:first_unit](x)
            logits = model.forward_from(first_unit, acts)
        loss = criterion(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def cached_epoch(
    model, store, first_unit: int, labels: np.ndarray, batch: int, lr: float, runtime, seed: int
) -> float:
    head_only = first_unit >= len(model.body)
    arrays = store.train_pooled if head_only else store.train_acts
    source = ArraySource(arrays, labels, None if head_only else first_unit, batch, seed, runtime)
    params = set_trainable(model, first_unit)
    optimizer = torch.optim.AdamW(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(source.steps(), 0))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    stats = train_epoch(
        model,
        Entry(model, source.start),
        source,
        first_unit,
        optimizer,
        scheduler,
        criterion,
        runtime,
        1,
        "cached",
    )
    return stats.seconds


def main() -> None:
    apply_offline_env()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder root (class dirs)")
    parser.add_argument("--images", type=int, default=256, help="training images per epoch")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    config = load_config(args.params)
    m, t = config.model, config.train
    runtime = setup_runtime(t, config.base.seed)
    spec = preprocess_spec(m.backbone, m.image_size, m.resize)
    folder_ds = datasets.ImageFolder(str(args.data))
    rng = np.random.default_rng(0)
    indices = sorted(rng.choice(len(folder_ds), min(args.images, len(folder_ds)), replace=False))
    paths = [Path(folder_ds.samples[i][0]) for i in indices]
    labels = np.asarray([folder_ds.samples[i][1] for i in indices], dtype=np.int64)
    shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    subset = SplitData("train", paths, shas, labels)
    n_classes = len(folder_ds.classes)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        bench_config = config.model_copy(
            update={"base": config.base.model_copy(update={"cache_dir": Path(tmp)})}
        )
        model = create_model(
            m.backbone, n_classes, m.pretrained, m.dense_units, m.dropout, m.image_size
        ).to(memory_format=torch.channels_last)
        n_units = len(model.body)
        cut = finetune_cut(t.finetune_blocks, n_units)
        cache = ImageCache(Path(tmp), m.resize, spec.interpolation)
        started = time.perf_counter()
        cache.fill(paths, shas, config.base.workers)
        decode_s = time.perf_counter() - started
        started = time.perf_counter()
        store = load_or_compute(bench_config, model, cut, cache, subset, subset, spec, runtime)
        features_s = time.perf_counter() - started

        results = {
            "images": len(paths),
            "backbone": m.backbone,
            "image_size": m.image_size,
            "feature_views": t.feature_views,
            "first_finetuned_unit": cut,
            "one_time_decode_s": round(decode_s, 1),
            "one_time_features_s": round(features_s, 1),
            "load_average": os.getloadavg()[0],
            "phases": {},
        }
        for phase, first_unit, lr in (
            ("head", n_units, t.head_lr),
            ("finetune", cut, t.finetune_lr),
        ):
            naive = naive_epoch(model, first_unit, args.data, indices, spec, t.batch_size, lr)
            cached = cached_epoch(
                model, store, first_unit, labels, t.batch_size, lr, runtime, config.base.seed
            )
            results["phases"][phase] = {
                "naive_epoch_s": round(naive, 2),
                "cached_epoch_s": round(cached, 2),
                "speedup": round(naive / cached, 1),
                "naive_img_s": round(len(paths) / naive, 1),
                "cached_img_s": round(len(paths) / cached, 1),
            }
            print(
                f"{phase:<8} naive {naive:7.1f} s/epoch  visionops {cached:7.1f} s/epoch  "
                f"-> {naive / cached:.1f}x",
                flush=True,
            )
    print(
        f"one-time: decode {decode_s:.1f} s, frozen features ({t.feature_views} views) "
        f"{features_s:.1f} s for {len(paths)} images"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
