"""The frozen-layer graph alone on ONNX Runtime: batch size, threads, sessions (issue 14, item 5).

What bounds the frozen-feature pass: exports the graph training runs (units ``0..cut-1`` plus
the pooled backbone, :func:`visionops.train.run_frozen.ort_runner`) for a split project and
times it on ``--images`` augmented training images already in memory, twice per setting:

- one session with 2 intra-op threads at batch 8, 16, 32 (denormals flushed to zero or not);
- two 1-thread sessions, each running its own batches from a Python thread (what the pass does).

    .venv/bin/python benchmarks/frozen_engine.py --project /tmp/r240
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, required=True, help="a project after split")
    parser.add_argument("--images", type=int, default=384)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from visionops.config import load_config
    from visionops.offline import apply_offline_env
    from visionops.train.data import ImageCache, ImageDataset, read_splits
    from visionops.train.features import view_seed
    from visionops.train.models import create_model, preprocess_spec
    from visionops.train.run_frozen import Frozen, ort_runner
    from visionops.train.schedule import plan_phases

    apply_offline_env()
    config = load_config(args.project / "params.yaml")
    m, t = config.model, config.train
    names, train, _ = read_splits(config)
    spec = preprocess_spec(m.backbone, m.image_size, m.resize)
    cache = ImageCache(config.cache_dir, m.resize, spec.interpolation)
    cache.fill(train.paths[: args.images], train.sha256[: args.images])
    model = create_model(
        m.backbone, len(names), m.pretrained, m.dense_units, m.dropout, m.image_size
    ).eval()
    cut, _ = plan_phases(t, len(model.body))
    seeds = [view_seed(config.base.seed, 0, s) for s in train.sha256]
    dataset = ImageDataset(cache, train, spec, t.augment, seeds)
    n = min(args.images, len(dataset))
    batch = torch.stack([dataset[i][0] for i in range(n)]).numpy()
    work = Path(tempfile.mkdtemp(prefix="frozen-engine-"))
    ort_runner(Frozen(model, cut, spec).eval(), spec, work)
    graph = str(work / "frozen.onnx")

    def session(threads: int, daz: str = "0") -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.set_denormal_as_zero", daz)
        return ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])

    def rate(run) -> str:
        rates = []
        for _ in range(2):
            started = time.perf_counter()
            run()
            rates.append(n / (time.perf_counter() - started))
        return " ".join(f"{r:.0f}" for r in rates) + " img/s"

    print(f"{graph}: units 0..{cut - 1} + pooled backbone, {n} images")
    for daz in ("0", "1"):
        for bs in (8, 16, 32):
            s = session(2, daz)
            s.run(None, {"input": batch[:bs]})

            def one(s=s, bs=bs) -> None:
                for i in range(0, n, bs):
                    s.run(None, {"input": batch[i : i + bs]})

            print(f"1 session x 2 threads, batch {bs}, denormals-as-zero {daz}: {rate(one)}")
    for bs in (16, 32):
        pair = [session(1), session(1)]
        for s in pair:
            s.run(None, {"input": batch[:bs]})

        def part(k: int, bs=bs, pair=pair) -> None:
            for i in range(k * bs, n, 2 * bs):
                pair[k].run(None, {"input": batch[i : i + bs]})

        def two(part=part) -> None:
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(part, [0, 1]))

        print(f"2 sessions x 1 thread, batch {bs}: {rate(two)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
