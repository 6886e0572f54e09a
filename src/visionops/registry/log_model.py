"""Log the ONNX model into the training's MLflow run, with what registering it needs.

A tensor signature, a real preprocessed test image as input example, execution providers that
load here (CUDA only if it really runs), explicit pip requirements, and ``seen_images.txt``
(:mod:`visionops.data.image_sets`) and ``visionops_record.json``
(:mod:`visionops.registry.version_record`) among the model's own files, so they travel with
every registered version of it; likewise ``model.int8.onnx`` when export's int8 gate passed
for this very ``model.onnx`` (:func:`passed_int8`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from visionops.config import Config
from visionops.data.image_sets import SEEN_FILE, write_hashes
from visionops.export.int8_files import INT8_DIR, INT8_FILE, gate_stamp
from visionops.export.onnx_model import OnnxClassifier
from visionops.images import load_one
from visionops.paths import stage_paths
from visionops.registry.version_record import RECORD_FILE

log = logging.getLogger(__name__)


def passed_int8(config: Config, export_report: dict, fp32_sha: str) -> Path | None:
    """Export's ``int8/model.int8.onnx`` when its gate passed and it was made from the
    ``model.onnx`` with sha256 ``fp32_sha`` (its stamp says so); else None."""
    path = stage_paths(config).onnx_model.parent / INT8_DIR / INT8_FILE
    if not ((export_report.get("int8") or {}).get("passed") and path.is_file()):
        return None
    stamp = gate_stamp(path) or {}
    if not stamp.get("passed") or stamp.get("fp32_sha256") != fp32_sha:
        log.warning(
            "%s does not carry a passed gate for this model.onnx (stale or copied in); "
            "registering the fp32 model only. Run `visionops export` again", path,
        )  # fmt: skip
        return None
    return path


def _signature_and_example(predictor: OnnxClassifier, files: list[Path]):
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size = predictor.spec.image_size
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size), "input")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(predictor.labels)), "logits")]),
    )
    example = next(
        (
            a
            for a in (load_one(f, predictor.spec, predictor.max_pixels) for f in files[:5])
            if not isinstance(a, str)
        ),
        np.zeros((3, size, size), np.float32),
    )
    return signature, {"input": example[None]}


def log_onnx_model(
    config: Config,
    run_id: str | None,
    new: OnnxClassifier,
    lineage: dict,
    seen: frozenset[str],
    files: list[Path],
    metrics: dict[str, float],
    record: dict[str, str],
    int8: Path | None = None,
):
    """Log the ONNX model (+ seen_images.txt, the version record and, given, the int8 model as
    ``model.int8.onnx``) into the training run; returns (model info, run id)."""
    import mlflow
    import onnx
    from mlflow import MlflowClient

    p = stage_paths(config)
    export_report = json.loads(p.export_report.read_text(encoding="utf-8"))
    signature, example = _signature_and_example(new, files)
    providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if new.provider.startswith("CUDA")
        else ["CPUExecutionProvider"]
    )
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else "register"):
        info = mlflow.onnx.log_model(
            onnx.load(str(p.onnx_model)),
            name="model",
            signature=signature,
            input_example=example,
            onnx_execution_providers=providers,
            save_as_external_data=False,
            metadata={"visionops": lineage},
            # Explicit requirements skip MLflow's inference (a subprocess that re-imports the
            # model's world: ~20 s here) and name exactly what the pyfunc needs.
            pip_requirements=mlflow.onnx.get_default_pip_requirements(),
        )
        with tempfile.TemporaryDirectory() as tmp:
            seen_file = write_hashes(Path(tmp) / SEEN_FILE, seen)
            record_file = Path(tmp) / RECORD_FILE
            record_file.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
            client = MlflowClient(mlflow.get_tracking_uri())
            client.log_model_artifact(info.model_id, str(seen_file))
            client.log_model_artifact(info.model_id, str(record_file))
            if int8 is not None:  # same logged model, same version: a second file, not a model
                client.log_model_artifact(info.model_id, str(int8))
        mlflow.log_artifact(str(p.export_report), "export")
        mlflow.log_metrics(
            {
                "export_parity_max_abs_diff_prob": export_report["parity"]["max_abs_diff_prob"],
                "export_val_accuracy_onnx": export_report["val_accuracy_onnx"],
                **{
                    f"export_int8_{k}": v
                    for k, v in (export_report.get("int8") or {}).items()
                    if k in ("agreement", "accuracy_delta", "speedup")
                },
                **metrics,
            }
        )
        return info, mlflow.active_run().info.run_id  # the new "register" run when there was none
