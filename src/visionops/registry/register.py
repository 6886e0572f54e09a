"""Stage ``register``: log the ONNX model to MLflow, register a version, champion or challenger.

1. ``mlflow.onnx.log_model`` into the training's run (``artifacts/train/run.json``) with a
   tensor signature, a real preprocessed test image as input example and execution providers
   that load here (CUDA only if it really runs); then a new version of
   ``register.model_name``.
2. Version tags carry the lineage: git commit, data version, params hash (as exported), the
   ``dvc.lock`` hashes of every stage's outputs, the test metrics from ``evaluate``, the parity
   result from ``export``, the ONNX file's sha256 and the training run id.
3. Champion/challenger: the current ``@champion`` (if any) and the new version are both scored
   by ONNX Runtime on the *current* test split (labels matched by name, so a champion with
   another class list is scored fairly: unknown predictions are wrong). The new version takes
   ``@champion`` only if it beats the champion by more than ``register.min_improvement`` on
   ``register.metric``; otherwise it gets ``@challenger``. The decision and both scores go into
   version tags and ``artifacts/register/decision.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from visionops.config import Config
from visionops.data.split import split_rows
from visionops.errors import VisionOpsError
from visionops.evaluate.metrics import label_scores
from visionops.evaluate.stage import training_run
from visionops.export.onnx_model import OnnxClassifier
from visionops.images import load_one
from visionops.io import write_json
from visionops.paths import stage_paths
from visionops.registry.model_uri import resolve_registry_model
from visionops.tracking import lineage_tags, setup_tracking, tracking_uri

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class RegisterResult:
    decision: dict

    def summary(self) -> str:
        d = self.decision
        versus = (
            f" vs champion version {d['champion_version']} {d['champion_score']:.4f}"
            if d["champion_score"] is not None
            else ""
        )
        return (
            f"register: {d['model_name']} version {d['version']} -> @{d['alias']} "
            f"({d['metric']} {d['new_score']:.4f}{versus}; {d['reason']})"
        )


def _read_json(path: Path, stage: str) -> dict:
    if not path.exists():
        raise VisionOpsError(f"{path}: missing; run `visionops {stage}` (or `dvc repro`) first")
    return json.loads(path.read_text(encoding="utf-8"))


def dvc_lock_hashes(root: Path) -> dict[str, str]:
    """``{"dvc.<stage>": "<out name>:<md5> ..."}`` from ``dvc.lock`` ({} when absent)."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return {}
    try:
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    except yaml.YAMLError:
        log.warning("%s is not valid YAML; no dvc.lock hashes in the version tags", lock)
        return {}
    tags = {}
    for stage, entry in stages.items():
        outs = [
            f"{Path(o['path']).name}:{o.get('md5') or o.get('hash') or '?'}"
            for o in (entry or {}).get("outs", [])
        ]
        if outs:
            tags[f"dvc.{stage}"] = " ".join(outs)[:4900]
    return tags


def predicted_labels(predictor: OnnxClassifier, files: list[Path]) -> list[str | None]:
    return [p.label for p in predictor.iter_predict(files, top_k=1)]


def current_champion(client, name: str):
    """The ModelVersion behind ``@champion``, or None (no model, or no alias yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def decide(new: float, champion: float | None, margin: float) -> tuple[str, str]:
    """(alias, reason): champion only when ``new > champion + margin`` (or no champion)."""
    if champion is None:
        return CHAMPION, "no champion yet"
    if new > champion + margin:
        return CHAMPION, f"beats the champion by {new - champion:+.4f} (> {margin:g})"
    return CHALLENGER, f"does not beat the champion by more than {margin:g} ({new - champion:+.4f})"


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


def _tag_values(prefix: str, data: dict) -> dict[str, str]:
    return {
        f"{prefix}.{k}": (f"{v:.6g}" if isinstance(v, float) else str(v))
        for k, v in data.items()
        if isinstance(v, int | float | bool | str)
    }


def run(config: Config) -> RegisterResult:
    import mlflow
    import onnx
    from mlflow import MlflowClient

    p = stage_paths(config)
    if not p.onnx_model.exists():
        raise VisionOpsError(f"{p.onnx_model}: missing; run `visionops export` first")
    export_report = _read_json(p.export_report, "export")
    test_metrics = _read_json(p.evaluate_metrics, "evaluate")
    files, labels = split_rows(p.split_file("test"), config.data_dir)
    name, metric = config.register.model_name, config.register.metric

    run_id, uri = training_run(config)
    if run_id:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    else:  # no training run to attach to: a "register" run in the project's experiment
        setup_tracking(config)
        uri = tracking_uri(config)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    new = OnnxClassifier(p.onnx_model)
    # The new model's classes (+ any test label): a class with no test image counts as F1 = 0,
    # exactly as in evaluate's metrics.json, so the two stages report the same macro-F1.
    classes = sorted(set(labels) | set(new.labels))
    new_scores = label_scores(labels, predicted_labels(new, files), classes)

    lineage = {k: export_report.get(k) or v for k, v in lineage_tags(config).items()}
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
        mlflow.log_artifact(str(p.export_report), "export")
        mlflow.log_metrics(
            {
                "export_parity_max_abs_diff_prob": export_report["parity"]["max_abs_diff_prob"],
                "export_val_accuracy_onnx": export_report["val_accuracy_onnx"],
                f"register_test_{metric}": new_scores[metric],
            }
        )
        run_id = mlflow.active_run().info.run_id  # the new "register" run when there was none

    tags = {
        **{k: str(v) for k, v in lineage.items()},
        **dvc_lock_hashes(config.root),
        **_tag_values("test", {k: v for k, v in test_metrics.items() if k != "per_class"}),
        **_tag_values("parity", export_report["parity"]),
        "onnx_sha256": str(export_report.get("sha256", "")),
        "opset": str(export_report.get("opset", "")),
        "backbone": new.metadata.get("visionops.backbone", ""),
        "train_run_id": run_id,
    }
    version = mlflow.register_model(info.model_uri, name, tags=tags).version

    champion = current_champion(client, name)
    champion_score, champion_version = None, None
    if champion is not None and str(champion.version) != str(version):
        champion_version = str(champion.version)
        try:
            log.info("scoring champion version %s on %d test images", champion_version, len(files))
            champion_uri = f"models:/{name}/{champion_version}"
            old = OnnxClassifier(
                resolve_registry_model(champion_uri, uri).path, source=champion_uri
            )
            champion_score = label_scores(labels, predicted_labels(old, files), classes)[metric]
        except VisionOpsError as exc:
            log.warning(
                "champion version %s cannot be scored (%s); promoting", champion_version, exc
            )
    alias, reason = decide(new_scores[metric], champion_score, config.register.min_improvement)
    if champion_version and champion_score is None:
        reason = f"champion version {champion_version} could not be loaded or scored"
    client.set_registered_model_alias(name, alias, str(version))

    decision = {
        "model_name": name,
        "version": str(version),
        "model_uri": f"models:/{name}/{version}",
        "alias": alias,
        "promoted": alias == CHAMPION,
        "reason": reason,
        "metric": metric,
        "min_improvement": config.register.min_improvement,
        "new_score": new_scores[metric],
        "new_scores": new_scores,
        "champion_version": champion_version,
        "champion_score": champion_score,
        "test_images": len(files),
        "run_id": run_id,
        "tracking_uri": uri,
        "lineage": lineage,
    }
    for key, value in {
        "decision": alias,
        "decision.reason": reason,
        "decision.metric": metric,
        "decision.new_score": f"{new_scores[metric]:.6g}",
        "decision.champion_version": champion_version or "none",
        "decision.champion_score": "none" if champion_score is None else f"{champion_score:.6g}",
        "decision.min_improvement": f"{config.register.min_improvement:g}",
    }.items():
        client.set_model_version_tag(name, str(version), key, value)
    write_json(p.register_decision, decision)
    return RegisterResult(decision)
