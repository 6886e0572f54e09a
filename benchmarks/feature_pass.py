"""Frozen-feature pass: images per second, and time for a project's whole pass (issue 14, item 5).

Runs the pass training runs first (``visionops.train.features.load_or_compute``) on a project
that has been split, into a temporary cache folder (the project's decoded-image cache is
linked in, so decoding is not timed and the project's own feature cache is left alone):
``--views`` augmented views of every training image and the eval view of every validation
image, through the frozen units and the pooled backbone, written to the memory-mapped store.

    .venv/bin/python benchmarks/feature_pass.py --project /tmp/fp6 --views 6 3

Prints, per views setting, seconds, forward passes per second (views x train + val images per
second) and training images covered per second, with the 1-minute load average before and
after (the figures mean little on a busy machine). Writes them to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def run_pass(project: Path, views: int) -> dict:
    """Time one pass with ``train.feature_views = views`` into a fresh cache folder."""
    import torch

    from visionops.config import load_config
    from visionops.train.data import ImageCache, read_splits
    from visionops.train.devices import setup_runtime
    from visionops.train.features import load_or_compute
    from visionops.train.models import create_model, preprocess_spec
    from visionops.train.schedule import plan_phases

    with tempfile.TemporaryDirectory(prefix="feature-pass-") as tmp:
        config = load_config(project / "params.yaml")
        config = config.model_copy(
            update={
                "base": config.base.model_copy(update={"cache_dir": Path(tmp)}),
                "train": config.train.model_copy(update={"feature_views": views}),
            }
        )
        m = config.model
        os.symlink(load_config(project / "params.yaml").cache_dir / "images", Path(tmp) / "images")
        names, train, val = read_splits(config)
        spec = preprocess_spec(m.backbone, m.image_size, m.resize)
        cache = ImageCache(config.cache_dir, m.resize, spec.interpolation)
        cache.fill(train.paths + val.paths, train.sha256 + val.sha256)  # no-op when linked
        runtime = setup_runtime(config.train, config.base.seed)
        model = create_model(
            m.backbone, len(names), m.pretrained, m.dense_units, m.dropout, m.image_size
        )
        cut, _ = plan_phases(config.train, len(model.body))
        load = os.getloadavg()[0]
        started = time.perf_counter()
        load_or_compute(config, model, min(cut, len(model.body)), cache, train, val, spec, runtime)
        seconds = time.perf_counter() - started
        forwards = views * len(train) + len(val)
        return {
            "views": views,
            "train_images": len(train),
            "val_images": len(val),
            "seconds": round(seconds, 1),
            "forward_img_per_s": round(forwards / seconds, 1),
            "train_img_per_s": round(len(train) / seconds, 1),
            "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2),
            "threads": torch.get_num_threads(),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, required=True, help="a project after split")
    parser.add_argument("--views", type=int, nargs="+", default=[6, 3])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/feature_pass.json"))
    args = parser.parse_args()

    from visionops.offline import apply_offline_env

    apply_offline_env()
    results = []
    for views in args.views:
        result = run_pass(args.project.resolve(), views)
        print(json.dumps(result), flush=True)
        results.append(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
