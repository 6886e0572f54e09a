"""int8 recipes measured against fp32 on every validation and test image of a project.

    .venv/bin/python benchmarks/int8_recipes.py --project /tmp/int8            # the default table
    .venv/bin/python benchmarks/int8_recipes.py --project /tmp/int8 \\
        --recipe entropy,256,per-channel,stem+head --recipe minmax,512        # chosen recipes

The project must have its split CSVs and ``artifacts/export/model.onnx`` (or pass ``--model``:
any fp32 export with the same class names). The images are decoded once (val + test, and the
calibration pool from train, drawn like export does), fp32 runs once, then each recipe is
quantized (export's own code:
:func:`visionops.export.quantize.quantize_int8`) and compared with fp32: top-1 agreement,
accuracy delta, speed-up (batch 32, alternating rounds). Results go to stdout as a Markdown
table and to ``--out`` as JSON, with the load average before and after each recipe.

A recipe is ``method,images[,per-tensor|per-channel][,group+group][,re=REGEX]``: method minmax |
entropy | percentile | percentile=99.99; groups stem, head, depthwise, se, and nodes whose name
REGEX finds, are kept in fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_RECIPES = [
    "minmax,128",  # what export did before issue 12
    "minmax,32",
    "minmax,512",
    "minmax,128,per-tensor",
    "entropy,128",
    "percentile,128",
    "percentile=99.99,128",
    "minmax,128,stem",
    "minmax,128,head",
    "minmax,128,stem+head",
    "minmax,128,depthwise",
]


def parse_recipe(text: str):
    from visionops.export.quantize import Recipe

    parts = [p.strip() for p in text.split(",") if p.strip()]
    method, images = parts[0], int(parts[1])
    percentile = 99.999
    if method.startswith("percentile="):
        method, percentile = "percentile", float(method.split("=", 1)[1])
    per_channel, keep, matching = True, (), ""
    for part in parts[2:]:
        if part in ("per-tensor", "per-channel"):
            per_channel = part == "per-channel"
        elif part.startswith("re="):
            matching = part[3:]
        else:
            keep = tuple(part.split("+"))
    return Recipe(method, images, per_channel, keep, percentile, matching)


def decode(files: list[Path], spec) -> np.ndarray:
    from visionops.images import preprocess_batches

    out = []
    for _, batch, errors in preprocess_batches(files, spec, 32, workers=2):
        if errors:
            raise SystemExit(f"unreadable: {[files[i] for i in errors]}")
        out.append(batch)
    return np.concatenate(out)


def predict(session, x: np.ndarray) -> np.ndarray:
    from visionops.export.onnx_meta import INPUT

    return np.concatenate(
        [session.run(None, {INPUT: x[i : i + 32]})[0].argmax(1) for i in range(0, len(x), 32)]
    )


def sensitivity(fp32: Path, metadata: dict, calibration, x, recipe, top: int) -> list[dict]:
    """The ``top`` activations with the most quantization noise (lowest SQNR of the tensor
    before vs after its QDQ pair, dB) in ``recipe``'s model, on ``x``, with the node that makes
    each and the error accumulated up to there vs fp32 (``xmodel``, dB)."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from visionops.export.onnx_meta import INPUT
    from visionops.export.quantize import quantize_int8, quiet_quantizer

    with tempfile.TemporaryDirectory() as work, quiet_quantizer():
        w = Path(work)
        quantize_int8(fp32, w / "q.onnx", calibration, metadata, recipe)
        quant_pre_process(str(fp32), str(w / "pre.onnx"), skip_symbolic_shape=True)
        modify_model_output_intermediate_tensors(w / "pre.onnx", w / "f_aug.onnx")
        modify_model_output_intermediate_tensors(w / "q.onnx", w / "q_aug.onnx")
        batches = [{INPUT: b} for b in np.array_split(x, max(1, len(x) // 8))]
        floats = collect_activations(str(w / "f_aug.onnx"), batches)
        qdq = collect_activations(str(w / "q_aug.onnx"), batches)
        errors = compute_activation_error(create_activation_matching(qdq, floats))
        producer = {o: n for n in onnx.load(str(w / "pre.onnx")).graph.node for o in n.output}
    rows = [
        {
            "tensor": name,
            "node": getattr(producer.get(name), "name", "(input)"),
            "op": getattr(producer.get(name), "op_type", "-"),
            "qdq_sqnr_db": e["qdq_err"],
            "xmodel_sqnr_db": e.get("xmodel_err"),
        }
        for name, e in errors.items()
    ]
    return sorted(rows, key=lambda r: r["qdq_sqnr_db"])[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, required=True, help="a project after export")
    parser.add_argument("--model", type=Path, help="fp32 .onnx (default: the project's export)")
    parser.add_argument("--recipe", action="append", help="recipe to measure (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8_recipes.json"))
    parser.add_argument(
        "--sensitivity",
        type=int,
        default=0,
        metavar="N",
        help="instead: list the N noisiest activations of the first recipe (32 val+test images)",
    )
    args = parser.parse_args()

    from visionops.config import load_config
    from visionops.data.split import split_rows
    from visionops.export.int8_files import onnx_metadata
    from visionops.export.int8_gate import compare
    from visionops.export.onnx_meta import parse_metadata
    from visionops.export.quantize import quantize_int8, speedup
    from visionops.offline import apply_offline_env
    from visionops.onnxrt import build_session
    from visionops.paths import stage_paths

    apply_offline_env()
    config = load_config(args.project / "params.yaml")
    p = stage_paths(config)
    recipes = [parse_recipe(r) for r in (args.recipe or DEFAULT_RECIPES)]
    fp32 = args.model or p.onnx_model
    metadata = onnx_metadata(fp32)
    labels, spec, _ = parse_metadata(metadata)
    index = {n: i for i, n in enumerate(labels)}
    files, y = [], []
    for split in ("val", "test"):
        f, lab = split_rows(p.split_file(split), config.data_dir)
        files += f
        y += [index.get(label, -1) for label in lab]
    y = np.array(y)
    train, _ = split_rows(p.split_file("train"), config.data_dir)
    pool = max(r.images for r in recipes)
    pick = np.random.default_rng(config.base.seed).permutation(len(train))[:pool]
    started = time.perf_counter()
    x, calibration = decode(files, spec), decode([train[i] for i in pick], spec)
    print(f"decoded {len(x)} val+test and {len(calibration)} calibration images in "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)  # fmt: skip
    if args.sensitivity:
        for r in sensitivity(fp32, metadata, calibration, x[:32], recipes[0], args.sensitivity):
            xmodel = r["xmodel_sqnr_db"] or float("nan")
            print(
                f"{r['qdq_sqnr_db']:6.1f} dB  (vs fp32 {xmodel:6.1f} dB)  {r['op']:<10} {r['node']}"
            )
        return 0
    fp32_session, _ = build_session(fp32, "cpu")
    p32 = predict(fp32_session, x)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for i, recipe in enumerate(recipes):
            load_before = os.getloadavg()[0]
            out = Path(work) / f"r{i}.int8.onnx"
            info = quantize_int8(fp32, out, calibration, metadata, recipe)
            int8_session, _ = build_session(out, "cpu")
            numbers = compare(p32, predict(int8_session, x), y)
            ips32, ips8, ratio = speedup(fp32_session, int8_session, x[:32])
            row = {
                "recipe": recipe.describe(),
                **numbers,
                "speedup": ratio,
                "fp32_img_s": ips32,
                "int8_img_s": ips8,
                "quantize_s": info.seconds,
                "kept_fp32": info.kept_fp32,
                "scales_raised": info.scales_raised,
                "load": [load_before, os.getloadavg()[0]],
            }
            rows.append(row)
            print(
                f"{row['recipe']}: agreement {row['agreement']:.4f} ({row['changed']} changed), "
                f"delta {100 * row['accuracy_delta']:+.2f} pt, {ratio:.2f}x, "
                f"quantize {info.seconds:.0f} s, load {load_before:.1f}",
                file=sys.stderr,
                flush=True,
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"n_images": len(y), "rows": rows}, indent=1))
    print(f"\n{len(y)} val+test images; fp32 accuracy {rows[0]['accuracy_fp32']:.4f}\n")
    print("| recipe | top-1 agreement | changed | accuracy delta | speed-up | quantize | load |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['recipe']} | {100 * r['agreement']:.2f} % | {r['changed']} | "
            f"{100 * r['accuracy_delta']:+.2f} pt | {r['speedup']:.2f}x | "
            f"{r['quantize_s']:.0f} s | {r['load'][0]:.1f}-{r['load'][1]:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
