"""Inference benchmark: ONNX Runtime vs PyTorch eager, single-image latency, int8 static QDQ.

    python benchmarks/bench_inference.py                      # clothing-small, 2 threads
    python benchmarks/bench_inference.py --checkpoint artifacts/train/best.pt --val-dir DIR

Without ``--checkpoint`` it builds a real model first: EfficientNet-Lite0 with its ImageNet
weights and a linear head fitted on frozen features of ``--probe-per-class`` training images per
class (a linear probe, ~1 min), so accuracies are meaningful. Then, on ``--threads`` threads:

- throughput at batch 32 (real preprocessed validation images): PyTorch eager (NCHW and
  channels_last) vs ONNX Runtime fp32 and int8;
- single-image latency *including* decode + preprocessing (``Predictor.predict([path])``, one
  file at a time, as a CLI or an HTTP request sees it): p50 / p95 for fp32 and int8;
- int8 (static QDQ, per-channel, 128 calibration images from train): validation accuracy delta
  and speed-up vs fp32.

The fitted probe head is cached in ``benchmarks/results/probe-*.pt`` so a rerun only measures.

Results are printed as a Markdown table and written to ``benchmarks/results/inference-*.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATASET = ROOT.parent / "shared" / "datasets" / "clothing-small"


def image_folder(folder: Path) -> tuple[list[Path], list[str]]:
    files, labels = [], []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        for f in sorted(d.iterdir()):
            if f.is_file():
                files.append(f)
                labels.append(d.name)
    return files, labels


def batches(files, spec, batch_size=32):
    from visionops.images import preprocess_batches

    for _, batch, errors in preprocess_batches(files, spec, batch_size, workers=2):
        if errors:
            print(f"skipping {len(errors)} unreadable file(s)", file=sys.stderr)
        if batch is not None:
            yield batch


def probe_model(train_dir: Path, per_class: int, image_size: int, resize: int, seed: int):
    """Lite0 (ImageNet weights) + a linear head fitted on frozen pooled features."""
    import torch
    from torch import nn

    from visionops.train.models import create_model, preprocess_spec

    files, labels = image_folder(train_dir)
    classes = sorted(set(labels))
    spec = preprocess_spec("efficientnet_lite0", image_size, resize)
    model = create_model("efficientnet_lite0", len(classes), pretrained=True, image_size=image_size)
    model.eval()
    cached = RESULTS / f"probe-lite0-{image_size}-{per_class}-{seed}.pt"  # git-ignored
    if cached.exists():
        model.head.load_state_dict(torch.load(cached, weights_only=True))
        print(f"linear probe head from {cached}")
        return model, classes, spec
    rng = np.random.default_rng(seed)
    pick = []
    for c in classes:
        idx = [i for i, lab in enumerate(labels) if lab == c]
        pick += list(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
    started = time.perf_counter()
    feats = []
    with torch.inference_mode():
        for batch in batches([files[i] for i in pick], spec):
            feats.append(model.pooled(torch.from_numpy(batch)))
    x = torch.cat(feats)
    y = torch.tensor([classes.index(labels[i]) for i in pick])
    head = model.head
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(head(x), y).backward()
        opt.step()
    model.eval()
    print(f"linear probe on {len(pick)} images in {time.perf_counter() - started:.0f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), cached)
    return model, classes, spec


def checkpoint_model(path: Path):
    from visionops.images import PreprocessSpec
    from visionops.train.checkpoint import load_model

    model, ckpt = load_model(path)
    return model, list(ckpt["class_names"]), PreprocessSpec.from_dict(ckpt["preprocess"])


def torch_throughput(model, batch: np.ndarray, channels_last: bool, seconds: float) -> float:
    import torch

    m = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    x = torch.from_numpy(batch)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        m(x)
        runs, start = 0, time.perf_counter()
        while runs < 2 or time.perf_counter() - start < seconds:
            m(x)
            runs += 1
    model.to(memory_format=torch.contiguous_format)
    return runs * len(batch) / (time.perf_counter() - start)


def latency(predictor, files: list[Path], n: int) -> dict:
    predictor.predict([files[0]])  # warm-up
    times = []
    for f in (files * (n // len(files) + 1))[:n]:
        start = time.perf_counter()
        predictor.predict([f])
        times.append((time.perf_counter() - start) * 1000)
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "n": n,
    }


def latency_parts(predictor, files: list[Path], n: int) -> dict:
    """p50 of decode + preprocess alone and of the batch-1 model run alone (ms)."""
    from visionops.images import load_and_preprocess

    pre, run = [], []
    for f in (files * (n // len(files) + 1))[:n]:
        start = time.perf_counter()
        x = load_and_preprocess(f, predictor.spec)[None]
        mid = time.perf_counter()
        predictor.logits(x)
        pre.append((mid - start) * 1000)
        run.append((time.perf_counter() - mid) * 1000)
    return {
        "decode_preprocess_p50_ms": float(np.median(pre)),
        "model_p50_ms": float(np.median(run)),
    }


def accuracy(predictor, files, labels) -> float:
    preds = predictor.predict(files, top_k=1)
    return float(np.mean([p.label == lab for p, lab in zip(preds, labels, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=DATASET, help="has train/ and validation/")
    parser.add_argument("--checkpoint", type=Path, help="a visionops best.pt instead of a probe")
    parser.add_argument("--probe-per-class", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-n", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=6.0, help="per throughput measurement")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()

    os.environ["VISIONOPS_ORT_THREADS"] = str(args.threads)
    import torch

    from visionops.export.onnx_meta import build_metadata, write_metadata
    from visionops.export.quantize import quantize_int8, throughput
    from visionops.export.stage import export_onnx
    from visionops.inference import Predictor
    from visionops.offline import apply_offline_env
    from visionops.onnxrt import build_session

    apply_offline_env()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.checkpoint:
        model, classes, spec = checkpoint_model(args.checkpoint)
    else:
        model, classes, spec = probe_model(
            args.dataset / "train", args.probe_per_class, args.image_size, args.resize, 0
        )
    val_files, val_labels = image_folder(args.dataset / "validation")
    train_files, _ = image_folder(args.dataset / "train")

    work = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    fp32_path, int8_path = work / "model.onnx", work / "model.int8.onnx"
    metadata = build_metadata(classes, spec, "efficientnet_lite0")
    export_onnx(model, fp32_path, spec.image_size, args.opset)
    write_metadata(fp32_path, metadata)
    rng = np.random.default_rng(0)
    calib_files = [train_files[i] for i in rng.permutation(len(train_files))[:128]]
    calibration = np.concatenate(list(batches(calib_files, spec)))
    started = time.perf_counter()
    quantize_int8(fp32_path, int8_path, calibration, metadata)
    quant_seconds = time.perf_counter() - started

    fp32, int8 = Predictor(fp32_path), Predictor(int8_path)
    batch32 = next(batches(val_files, spec))
    fp32_session, _ = build_session(fp32_path, "cpu", args.threads)
    int8_session, _ = build_session(int8_path, "cpu", args.threads)
    with torch.inference_mode():
        t = torch.softmax(model(torch.from_numpy(batch32)), 1).numpy()
    o = fp32.predict_arrays(batch32)

    results = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores_visible": len(os.sched_getaffinity(0)),
            "threads": args.threads,
            "load_avg_1m": os.getloadavg()[0],
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
        },
        "model": {
            "backbone": "efficientnet_lite0",
            "source": str(args.checkpoint)
            if args.checkpoint
            else f"ImageNet weights + linear probe on {args.probe_per_class}/class",
            "image_size": spec.image_size,
            "classes": len(classes),
            "provider": fp32.provider,
        },
        "parity_batch32_max_abs_dprob": float(np.abs(t - o).max()),
        "throughput_batch32_img_s": {
            "torch_eager_nchw": torch_throughput(model, batch32, False, args.seconds),
            "torch_eager_channels_last": torch_throughput(model, batch32, True, args.seconds),
            "ort_fp32": throughput(fp32_session, batch32, args.seconds),
            "ort_int8": throughput(int8_session, batch32, args.seconds),
        },
        "latency_single_image_incl_preprocessing": {
            "ort_fp32": latency(fp32, val_files, args.latency_n),
            "ort_int8": latency(int8, val_files, args.latency_n),
            "fp32_parts": latency_parts(fp32, val_files, args.latency_n),
            "int8_parts": latency_parts(int8, val_files, args.latency_n),
        },
        "accuracy_validation": {
            "n_images": len(val_files),
            "ort_fp32": accuracy(fp32, val_files, val_labels),
            "ort_int8": accuracy(int8, val_files, val_labels),
        },
        "int8": {"calibration_images": len(calibration), "quantize_seconds": quant_seconds},
    }
    tp = results["throughput_batch32_img_s"]
    acc = results["accuracy_validation"]
    results["ratios"] = {
        "ort_fp32_vs_torch_eager_nchw": tp["ort_fp32"] / tp["torch_eager_nchw"],
        "ort_fp32_vs_torch_best": tp["ort_fp32"]
        / max(tp["torch_eager_nchw"], tp["torch_eager_channels_last"]),
        "int8_speedup_vs_fp32": tp["ort_int8"] / tp["ort_fp32"],
        "int8_accuracy_delta_pt": 100 * (acc["ort_int8"] - acc["ort_fp32"]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"inference-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"\nwritten to {out}")


def markdown(r: dict) -> str:
    tp, lat = r["throughput_batch32_img_s"], r["latency_single_image_incl_preprocessing"]
    acc, ratio = r["accuracy_validation"], r["ratios"]
    rows = [
        "| measure | value |",
        "| --- | --- |",
        f"| PyTorch eager, batch 32 (NCHW / channels_last) | {tp['torch_eager_nchw']:.1f} / "
        f"{tp['torch_eager_channels_last']:.1f} img/s |",
        f"| ONNX Runtime fp32, batch 32 | {tp['ort_fp32']:.1f} img/s "
        f"(**{ratio['ort_fp32_vs_torch_eager_nchw']:.1f}x** PyTorch NCHW, "
        f"{ratio['ort_fp32_vs_torch_best']:.1f}x its best) |",
        f"| ONNX Runtime int8, batch 32 | {tp['ort_int8']:.1f} img/s "
        f"(**{ratio['int8_speedup_vs_fp32']:.2f}x** fp32) |",
        f"| single image incl. decode + preprocessing, fp32 p50 / p95 | "
        f"**{lat['ort_fp32']['p50_ms']:.1f}** / {lat['ort_fp32']['p95_ms']:.1f} ms |",
        f"| single image incl. decode + preprocessing, int8 p50 / p95 | "
        f"{lat['ort_int8']['p50_ms']:.1f} / {lat['ort_int8']['p95_ms']:.1f} ms |",
        f"| of which decode + preprocess / model run (p50, fp32) | "
        f"{lat['fp32_parts']['decode_preprocess_p50_ms']:.1f} / "
        f"{lat['fp32_parts']['model_p50_ms']:.1f} ms |",
        f"| model run alone, batch 1, int8 (p50) | {lat['int8_parts']['model_p50_ms']:.1f} ms |",
        f"| validation accuracy fp32 / int8 ({acc['n_images']} images) | {acc['ort_fp32']:.3f} / "
        f"{acc['ort_int8']:.3f} (**{ratio['int8_accuracy_delta_pt']:+.1f} pt**) |",
        f"| max abs dprob PyTorch vs ORT fp32 (batch 32) | "
        f"{r['parity_batch32_max_abs_dprob']:.1e} |",
        f"| threads / load average (1 min) | {r['machine']['threads']} / "
        f"{r['machine']['load_avg_1m']:.1f} |",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
