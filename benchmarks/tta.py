"""Test-time augmentation (horizontal flip): does it earn its cost? (issue 14, item 4)

Runs a project's exported ONNX model on its validation and test splits twice: as served (one
view, evaluation's own ``preprocess_batches``) and with the horizontally flipped view added,
averaging either the probabilities or the logits. Prints accuracy per split for each, the
images whose answer changed, and the model's time per image with and without the flip
(ONNX Runtime, 2 threads, batch 32 and batch 1).

    .venv/bin/python benchmarks/tta.py --project /tmp/r240x

The rule of the issue: keep TTA only if it gains >= 0.3 pt of validation accuracy at
acceptable cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from int8_recipes import decode  # benchmarks/ is the script's folder: on sys.path


def logits_of(model, x: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    """Logits of ``x`` and the seconds per image they took, ``batch`` images per run."""
    started = time.perf_counter()
    out = np.concatenate([model.logits(x[i : i + batch]) for i in range(0, len(x), batch)])
    return out, (time.perf_counter() - started) / len(x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, required=True, help="a project after export")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tta.json"))
    args = parser.parse_args()

    from visionops.config import load_config
    from visionops.data.split import split_rows
    from visionops.export.onnx_model import OnnxClassifier
    from visionops.offline import apply_offline_env
    from visionops.onnxrt import softmax
    from visionops.paths import stage_paths

    apply_offline_env()
    config = load_config(args.project / "params.yaml")
    p = stage_paths(config)
    model = OnnxClassifier(str(p.onnx_model), device="cpu")
    index = {n: i for i, n in enumerate(model.labels)}
    result: dict = {"model": str(p.onnx_model), "load": [round(x, 1) for x in _load()]}
    for split in ("val", "test"):
        files, labels = split_rows(p.split_file(split), config.data_dir)
        y = np.array([index[label] for label in labels])
        x = decode(files, model.spec)
        plain, t32 = logits_of(model, x, 32)
        flipped, _ = logits_of(model, np.ascontiguousarray(x[..., ::-1]), 32)
        _, t1 = logits_of(model, x[:64], 1)
        views = {
            "one view (served)": plain,
            "+ flip, mean of probabilities": (softmax(plain) + softmax(flipped)) / 2,
            "+ flip, mean of logits": (plain + flipped) / 2,
        }
        base = plain.argmax(1)
        rows = {}
        for name, scores in views.items():
            pred = scores.argmax(1)
            rows[name] = {
                "accuracy": float((pred == y).mean()),
                "changed": int((pred != base).sum()),
                "fixed": int(((pred == y) & (base != y)).sum()),
                "broken": int(((pred != y) & (base == y)).sum()),
            }
        result[split] = {
            "images": len(y),
            "views": rows,
            "ms_per_image_batch32": round(t32 * 1000, 2),
            "ms_per_image_batch1": round(t1 * 1000, 2),
        }
        print(f"{split}: {len(y)} images; model {t32 * 1000:.1f} ms/image at batch 32, "
              f"{t1 * 1000:.1f} ms at batch 1 (x2 with the flip)")  # fmt: skip
        for name, r in rows.items():
            print(f"  {name:<32} accuracy {r['accuracy']:.4f}  changed {r['changed']:>3} "
                  f"(fixed {r['fixed']}, broke {r['broken']})")  # fmt: skip
    result["load"] += [round(x, 1) for x in _load()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}", file=sys.stderr)
    return 0


def _load() -> tuple[float, ...]:
    import os

    return os.getloadavg()[:1]


if __name__ == "__main__":
    raise SystemExit(main())
