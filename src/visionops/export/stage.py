"""Stage ``export``: best checkpoint -> self-describing ONNX, admitted only through a parity gate.

1. ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``, explicit opset), input
   ``input`` (N, 3, H, W) and output ``logits`` (N, C) with a dynamic batch axis;
   When the checkpoint carries a temperature (``train.calibrate``), the exported graph divides
   the logits by it (:class:`visionops.train.calibrate.TemperatureScaled`): the output is
   calibrated logits, their softmax the calibrated probabilities;
2. ``metadata_props``: class names, PreprocessSpec, backbone, git commit, data version, params
   hash, temperature (:mod:`visionops.export.onnx_meta`), then ``onnx.checker`` (full check);
3. the batch axis is run at sizes 1, 3 and 17 in ONNX Runtime (and rows must not depend on the
   batch they are in);
4. parity gate on the real validation images, both sides fed by the inference preprocessing:
   100% top-1 agreement and max |Δprob| <= ``export.parity_max_abs_diff``. Parity is not
   correctness (a broken model exports faithfully), so the ONNX model's validation accuracy must
   also match what training recorded for the checkpoint;
5. int8 (``export.int8: auto``, :mod:`visionops.export.int8_gate`): quantized with the recipe
   in ``params.yaml`` and kept as ``int8/model.int8.onnx`` only when its top-1 agrees with fp32
   on every val and test image (``export.int8_min_agreement``) and accuracy drops by at most
   ``export.int8_max_drop``; ``int8/gate.json`` says why either way. A failing gate never fails
   the export.

Any failure raises and leaves no ``model.onnx`` behind: the file is built beside the target and
renamed into place only after every check passed.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionops.config import Config
from visionops.data.split import split_rows
from visionops.errors import VisionOpsError
from visionops.evaluate.stage import load_checkpoint, read_train_run
from visionops.export.int8_files import INT8_FILE
from visionops.export.int8_gate import run_int8
from visionops.export.int8_gate import summary as int8_summary
from visionops.export.onnx_meta import (
    INPUT,
    OUTPUT,
    TEMPERATURE,
    build_metadata,
    write_metadata,
)
from visionops.images import PreprocessSpec, preprocess_batches
from visionops.io import atomic_path, write_json
from visionops.onnxrt import build_session, softmax
from visionops.paths import display_path, stage_paths
from visionops.tracking import lineage_tags
from visionops.train.calibrate import checkpoint_temperature, scaled_model

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 3, 17)


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    report: dict

    def summary(self) -> str:
        r, par = self.report, self.report["parity"]
        text = (
            f"export: {self.onnx_path} (opset {r['opset']}, batch sizes "
            f"{'/'.join(map(str, r['dynamic_batch_checked']))} OK); parity on {par['n_images']} "
            f"val images: top-1 agreement {par['top1_agreement']:.1%}, max |dprob| "
            f"{par['max_abs_diff_prob']:.2e}; ONNX val accuracy {r['val_accuracy_onnx']:.3f}"
        )
        if r.get("int8"):
            text += "\n" + int8_summary(r["int8"])
        return text


def export_onnx(model, path: Path, image_size: int, opset: int) -> None:
    """TorchScript-based export (``dynamo=False``: max |Δlogit| ~1e-5 at opset 17 here)."""
    import torch

    dummy = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )


def check_dynamic_batch(session, image_size: int, n_classes: int) -> list[int]:
    """Run batch sizes 1, 3, 17; each row's logits must not depend on its batch (<= 1e-4)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((max(BATCH_SIZES), 3, image_size, image_size)).astype(np.float32)
    reference = None
    for n in BATCH_SIZES:
        try:
            out = session.run(None, {INPUT: x[:n]})[0]
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise VisionOpsError(f"exported model fails at batch size {n}: {exc}") from None
        if out.shape != (n, n_classes):
            raise VisionOpsError(
                f"exported model returns shape {out.shape} for batch {n}, expected ({n}, "
                f"{n_classes}); the batch axis is not dynamic"
            )
        if reference is None:
            reference = out[0]
        elif np.max(np.abs(out[0] - reference)) > 1e-4:
            raise VisionOpsError(
                f"exported model's output for an image changes with batch size {n}; is the "
                "model in eval mode (BatchNorm/Dropout)?"
            )
    return list(BATCH_SIZES)


def parity_check(model, session, files: list[Path], spec: PreprocessSpec, batch_size: int) -> dict:
    """PyTorch eval vs ONNX Runtime on the same preprocessed images."""
    import torch

    torch_probs, ort_probs, max_logit = [], [], 0.0
    with torch.inference_mode():
        for _, batch, errors in preprocess_batches(files, spec, batch_size, workers=2):
            if errors:
                i, why = next(iter(errors.items()))
                raise VisionOpsError(f"{files[i]}: {why}; rerun `dvc repro` (data/ changed)")
            t = model(torch.from_numpy(batch)).float().numpy()
            o = session.run(None, {INPUT: batch})[0]
            max_logit = max(max_logit, float(np.max(np.abs(t - o))))
            torch_probs.append(softmax(t))
            ort_probs.append(softmax(o))
    tp, op = np.concatenate(torch_probs), np.concatenate(ort_probs)
    agree = tp.argmax(1) == op.argmax(1)
    return {
        "n_images": len(files),
        "top1_agreement": float(agree.mean()),
        "max_abs_diff_prob": float(np.max(np.abs(tp - op))),
        "max_abs_diff_logit": max_logit,
        "disagreements": [str(files[i]) for i in np.nonzero(~agree)[0][:10]],
        "_torch_pred": tp.argmax(1),
        "_onnx_probs": op,
    }


def _recorded_val_accuracy(ckpt: dict) -> float | None:
    metrics = ckpt.get("metrics") or {}
    for key in ("val_acc", "val_accuracy", "accuracy"):
        if isinstance(metrics.get(key), int | float):
            return float(metrics[key])
    return None


def run(config: Config) -> ExportResult:
    p = stage_paths(config)
    target = p.onnx_model
    target.unlink(missing_ok=True)  # a failed export must not leave the previous model around
    target.with_name(INT8_FILE).unlink(missing_ok=True)  # where versions before issue 12 put it
    val_files, val_labels = split_rows(p.split_file("val"), config.data_dir)
    model, ckpt, names, spec = load_checkpoint(p.checkpoint_best)
    import torch

    model = model.to("cpu", dtype=torch.float32).to(memory_format=torch.contiguous_format).eval()
    # Calibration is part of the model: the graph divides the logits by the temperature fitted
    # on val, so every consumer of the file (Predictor, serve, register) gets calibrated
    # probabilities, and the parity gate below compares this same wrapped model with ORT.
    temperature = checkpoint_temperature(ckpt)
    model = scaled_model(model, temperature)
    lineage = lineage_tags(config)
    train_run_id = (read_train_run(config) or {}).get("run_id") or ""
    metadata = build_metadata(
        names,
        spec,
        str(ckpt.get("backbone", config.model.backbone)),
        git_commit=lineage["git_commit"],
        data_version=lineage["data_version"],
        params_hash=lineage["params_hash"],
        train_run_id=train_run_id,
        opset=config.export.opset,
        num_classes=len(names),
        **{TEMPERATURE: f"{temperature:.9g}"},
    )
    limit = config.export.parity_max_abs_diff
    with atomic_path(target) as tmp:
        started = time.perf_counter()
        export_onnx(model, tmp, spec.image_size, config.export.opset)
        write_metadata(tmp, metadata)
        session, _ = build_session(tmp, device="cpu")
        sizes = check_dynamic_batch(session, spec.image_size, len(names))
        log.info("parity gate: %d val images through PyTorch and ONNX Runtime", len(val_files))
        parity = parity_check(model, session, val_files, spec, config.train.batch_size)
        passed = parity["top1_agreement"] == 1.0 and parity["max_abs_diff_prob"] <= limit
        if not passed:
            raise VisionOpsError(
                f"parity gate failed on {parity['n_images']} val images: top-1 agreement "
                f"{parity['top1_agreement']:.2%} (need 100%), max |dprob| "
                f"{parity['max_abs_diff_prob']:.2e} (limit export.parity_max_abs_diff={limit:g}); "
                f"first disagreements: {parity['disagreements'][:3]}; no model.onnx written"
            )
        index = {n: i for i, n in enumerate(names)}
        y = np.array([index.get(lab, -1) for lab in val_labels])
        onnx_acc = float(np.mean(parity["_onnx_probs"].argmax(1) == y))
        torch_acc = float(np.mean(parity["_torch_pred"] == y))
        recorded = _recorded_val_accuracy(ckpt)
        if recorded is not None and onnx_acc < recorded - max(0.05, 3 / len(y)):
            raise VisionOpsError(
                f"the exported model scores {onnx_acc:.3f} on val but training recorded "
                f"{recorded:.3f} for {p.checkpoint_best}: parity holds, so the checkpoint's "
                "model is rebuilt wrongly (layers, activations, weights); no model.onnx written"
            )
        seconds = time.perf_counter() - started
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    report = {
        "onnx_path": display_path(target, config.root),
        "opset": config.export.opset,
        "input": INPUT,
        "output": OUTPUT,
        "image_size": spec.image_size,
        "num_classes": len(names),
        "dynamic_batch_checked": sizes,
        "size_mb": target.stat().st_size / 2**20,
        "sha256": digest,
        "export_seconds": seconds,
        "parity": {
            "passed": True,
            "n_images": parity["n_images"],
            "top1_agreement": parity["top1_agreement"],
            "max_abs_diff_prob": parity["max_abs_diff_prob"],
            "max_abs_diff_logit": parity["max_abs_diff_logit"],
            "limit": limit,
        },
        "temperature": temperature,
        "val_accuracy_onnx": onnx_acc,
        "val_accuracy_torch": torch_acc,
        "val_accuracy_recorded": recorded,
        "train_run_id": train_run_id,
        **lineage,
    }
    report["int8"] = run_int8(config, session, target, metadata, spec)
    write_json(p.export_report, report)
    return ExportResult(target, report)
