"""The int8 gate: an int8 model is kept only when it predicts what fp32 predicts.

An accuracy delta on a few hundred test images cannot see a 1-pt loss (issue 12: +0.2 pt on
export's test split, -1.1 pt on new images), so the gate counts how often int8's top-1 differs
from fp32's on **every validation and test image**, and also bounds the accuracy delta:

    passed = agreement >= export.int8_min_agreement  and  delta >= -export.int8_max_drop

Output, always the folder ``artifacts/export/int8/`` (one DVC output whatever the verdict):
``gate.json`` (the numbers and the reason, also the ``int8`` block of ``export/report.json``) and,
only when the gate passed, ``model.int8.onnx``, published atomically and stamped in its metadata
(:data:`GATE_KEY`) with its verdict and the sha256 of the fp32 ``model.onnx`` it came from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from visionops.config import Config
from visionops.data.split import split_rows
from visionops.errors import VisionOpsError
from visionops.export.int8_files import GATE_FILE, GATE_KEY, INT8_DIR, INT8_FILE, onnx_metadata
from visionops.export.onnx_meta import CLASS_NAMES, INPUT, write_metadata
from visionops.export.quantize import Recipe, quantize_int8, speedup
from visionops.images import PreprocessSpec, preprocess_batches
from visionops.io import atomic_path, write_json
from visionops.onnxrt import build_session, default_threads
from visionops.paths import display_path, stage_paths

log = logging.getLogger(__name__)

GATE_SPLITS = ("val", "test")


def int8_dir(config: Config) -> Path:
    return stage_paths(config).onnx_model.parent / INT8_DIR


def recipe_of(config: Config) -> Recipe:
    e = config.export
    return Recipe(
        calibration=e.int8_calibration,
        images=e.int8_calibration_images,
        per_channel=True,
        keep_fp32=tuple(e.int8_keep_fp32),
    )


def compare(fp32_pred: np.ndarray, int8_pred: np.ndarray, y: np.ndarray) -> dict:
    """Top-1 agreement of int8 with fp32 over all images, and both accuracies over the images
    whose label the model knows (``y >= 0``)."""
    known = y >= 0
    acc32 = float(np.mean(fp32_pred[known] == y[known])) if known.any() else float("nan")
    acc8 = float(np.mean(int8_pred[known] == y[known])) if known.any() else float("nan")
    return {
        "n_images": len(y),
        "agreement": float(np.mean(fp32_pred == int8_pred)) if len(y) else 0.0,
        "changed": int(np.sum(fp32_pred != int8_pred)),
        "accuracy_fp32": acc32,
        "accuracy_int8": acc8,
        "accuracy_delta": acc8 - acc32,
    }


def decide(numbers: dict, min_agreement: float, max_drop: float) -> tuple[bool, str]:
    """(passed, one-line reason) for the numbers of :func:`compare`."""
    n, agree, delta = numbers["n_images"], numbers["agreement"], numbers["accuracy_delta"]
    if n == 0:
        return False, "no validation or test images to compare int8 with fp32 on"
    why = []
    if agree < min_agreement:
        why.append(
            f"top-1 agreement with fp32 {agree:.2%} ({numbers['changed']} of {n} images "
            f"changed) < export.int8_min_agreement {min_agreement:.2%}"
        )
    if not delta >= -max_drop:  # NaN (no known labels) fails too
        why.append(
            f"accuracy delta {100 * delta:+.2f} pt < -export.int8_max_drop "
            f"({-100 * max_drop:.2f} pt)"
        )
    if why:
        return False, "; ".join(why)
    return True, (
        f"top-1 agreement {agree:.2%} on {n} val+test images (>= {min_agreement:.2%}), "
        f"accuracy {100 * delta:+.2f} pt (>= {-100 * max_drop:.2f} pt)"
    )


def _predict_both(fp32_session, int8_session, files: list[Path], spec, batch_size: int):
    """(fp32 top-1, int8 top-1) for ``files``, each image decoded once for both models."""
    p32, p8 = [], []
    for _, batch, errors in preprocess_batches(files, spec, batch_size, workers=2):
        if errors:
            i, why = next(iter(errors.items()))
            raise VisionOpsError(f"{files[i]}: {why}; rerun `dvc repro` (data/ changed)")
        p32.append(fp32_session.run(None, {INPUT: batch})[0].argmax(1))
        p8.append(int8_session.run(None, {INPUT: batch})[0].argmax(1))
    if not p32:
        return np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(p32), np.concatenate(p8)


def _calibration(config: Config, spec: PreprocessSpec, n: int) -> np.ndarray:
    """``n`` training images (a seeded random subset), preprocessed like inference."""
    files, _ = split_rows(stage_paths(config).split_file("train"), config.data_dir)
    pick = np.random.default_rng(config.base.seed).permutation(len(files))[:n]
    batches = [b for _, b, _ in preprocess_batches([files[i] for i in pick], spec, 32, 2)]
    batches = [b for b in batches if b is not None]
    if not batches:
        raise VisionOpsError("no readable training images to calibrate int8 with")
    return np.concatenate(batches)


class _Rejected(Exception):
    """The gate failed: leave no int8 model behind (atomic_path drops the temporary file)."""


def run_int8(
    config: Config, fp32_session, fp32: Path, metadata: dict[str, str], spec: PreprocessSpec
) -> dict:
    """Quantize, gate, and write ``int8/`` (see the module docstring); returns the report
    block. ``export.int8: auto`` never fails the export: any error is a failed gate."""
    folder = int8_dir(config)
    model_path, gate_path = folder / INT8_FILE, folder / GATE_FILE
    model_path.unlink(missing_ok=True)
    gate_path.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    e = config.export
    block: dict = {"enabled": e.int8 != "off", "passed": False, "path": None}
    if e.int8 == "off":
        block["reason"] = "export.int8 is off"
    else:
        try:
            block.update(_quantize_and_gate(config, fp32_session, fp32, metadata, spec))
        except Exception as exc:  # noqa: BLE001 - int8 is an extra; fp32 stays valid
            why = f"{type(exc).__name__}: {exc}"
            log.warning("int8 not kept: %s (the fp32 model is unaffected)", why)
            block["reason"] = f"the int8 gate could not run: {why}"
    write_json(gate_path, block)
    return block


def _quantize_and_gate(config: Config, fp32_session, fp32: Path, metadata, spec) -> dict:
    e, p = config.export, stage_paths(config)
    started = time.perf_counter()
    recipe = recipe_of(config)
    calibration = _calibration(config, spec, recipe.images)
    names = {n: i for i, n in enumerate(json.loads(metadata[CLASS_NAMES]))}
    files, y, sizes = [], [], {}
    for split in GATE_SPLITS:
        f, labels = split_rows(p.split_file(split), config.data_dir)
        files += f
        y += [names.get(label, -1) for label in labels]
        sizes[split] = len(f)
    target = int8_dir(config) / INT8_FILE
    block: dict = {}
    try:
        with atomic_path(target) as tmp:
            info = quantize_int8(fp32, tmp, calibration, metadata, recipe)
            int8_session, _ = build_session(tmp, device="cpu")
            log.info("int8 gate: %d val+test images through fp32 and int8", len(files))
            p32, p8 = _predict_both(fp32_session, int8_session, files, spec, 32)
            numbers = compare(p32, p8, np.array(y, dtype=int))
            passed, reason = decide(numbers, e.int8_min_agreement, e.int8_max_drop)
            ips32, ips8, ratio = speedup(fp32_session, int8_session, calibration[:32], seconds=0.5)
            changed = np.nonzero(p32 != p8)[0][:10]
            block = {
                "passed": passed,
                "reason": reason,
                **numbers,
                "images": sizes,
                "examples_changed": [display_path(files[i], config.root) for i in changed],
                "min_agreement": e.int8_min_agreement,
                "max_drop": e.int8_max_drop,
                "recipe": recipe.describe(),
                "calibration_images": info.calibration_images,
                "kept_fp32": info.kept_fp32,
                "scales_raised": info.scales_raised,
                "throughput_fp32_img_s": ips32,
                "throughput_int8_img_s": ips8,
                "speedup": ratio,
                "threads": default_threads(),
                "size_mb": tmp.stat().st_size / 2**20,
                "fp32_sha256": hashlib.sha256(fp32.read_bytes()).hexdigest(),
                "seconds": time.perf_counter() - started,
            }
            if not passed:
                raise _Rejected
            stamp = {k: block[k] for k in ("passed", "agreement", "accuracy_delta", "speedup")}
            stamp.update(n_images=block["n_images"], fp32_sha256=block["fp32_sha256"])
            write_metadata(tmp, {**onnx_metadata(tmp), GATE_KEY: json.dumps(stamp)})
        block["path"] = display_path(target, config.root)
    except _Rejected:
        block["path"] = None
    return block


def summary(block: dict) -> str:
    """One line for export's summary."""
    if not block.get("enabled"):
        return "int8: off (export.int8)"
    if "agreement" not in block:
        return f"int8: not kept ({block.get('reason')})"
    verdict = f"kept -> {block['path']}" if block["passed"] else f"not kept: {block['reason']}"
    return (
        f"int8: top-1 agreement {block['agreement']:.2%} on {block['n_images']} val+test images, "
        f"accuracy {100 * block['accuracy_delta']:+.2f} pt, {block['speedup']:.2f}x faster; "
        f"{verdict}"
    )
