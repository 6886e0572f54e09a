"""Stage ``register``: log the ONNX model to MLflow, register a version, champion or challenger.

1. Checks: the ONNX file names the training run it was exported from (metadata
   ``visionops.train_run_id``), which must be the run in ``artifacts/train/run.json``; the same
   ONNX content (sha256) already registered is that version again, not a new one.
2. ``mlflow.onnx.log_model`` into the training's run with a tensor signature, a real test
   image as input example and execution providers that load here, plus ``seen_images.txt``
   (sha256 of every train/val image: :mod:`visionops.data.image_sets`) in the model's files,
   and ``model.int8.onnx`` when export's int8 gate passed (tag ``int8``: passed/failed/none).
3. Champion vs new model on the current test images neither has seen, and the decision
   (:mod:`visionops.registry.comparison`): no promotion blind, on too few images, or from an
   experiment.
4. One ``create_model_version`` call carries lineage (git commit + what is dirty, data version,
   params hash, ``dvc.lock`` hashes), test metrics, parity, the seen-set digest and the decision
   with ``decision.state = pending``; then the alias moves (:mod:`visionops.registry.champion`)
   and the state becomes ``done``. A run killed in between is completed or marked abandoned by
   the next one (:mod:`visionops.registry.recovery`). ``artifacts/register/decision.json`` is
   written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from visionops.config import Config
from visionops.data.image_sets import digest, read_split, seen_by_training
from visionops.errors import VisionOpsError
from visionops.evaluate.stage import read_train_run, training_run
from visionops.export.onnx_meta import TRAIN_RUN_ID
from visionops.export.onnx_model import OnnxClassifier
from visionops.failpoints import failpoint
from visionops.io import write_json
from visionops.locks import acquire, project_lock_path
from visionops.paths import stage_paths
from visionops.registry import comparison
from visionops.registry.champion import CHALLENGER, CHAMPION, current_champion, move_champion
from visionops.registry.decision_record import decision_from_record, decision_tags
from visionops.registry.log_model import log_onnx_model, passed_int8
from visionops.registry.recovery import DONE, finish_interrupted
from visionops.registry.version_record import description, int8_record, version_tags
from visionops.tracking import lineage_tags, setup_tracking, tracking_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisterResult:
    decision: dict

    def summary(self) -> str:
        d = self.decision
        new = "n/a" if d["new_score"] is None else f"{d['new_score']:.4f}"
        versus = (
            f" vs champion version {d['champion_version']} {d['champion_score']:.4f}"
            f" on {d['eval_images']} test images neither has seen"
            if d["champion_score"] is not None
            else ""
        )
        again = " (already registered: same ONNX content)" if d.get("already_registered") else ""
        alias = f"@{d['alias']}" if d["alias"] else "no alias"
        return (
            f"register: {d['model_name']} version {d['version']} -> {alias}{again} "
            f"({d['metric']} {new}{versus}; {d['reason']})"
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


def check_train_run(config: Config, new: OnnxClassifier, seen: frozenset[str]) -> None:
    """The ONNX must come from the training in ``run.json`` (or neither names a run), and the
    train/val split must still be the one that training recorded."""
    run = read_train_run(config) or {}
    recorded = (run.get("seen_images") or {}).get("sha")
    if recorded and recorded != digest(seen):
        p = stage_paths(config)
        raise VisionOpsError(
            f"{p.split_file('train')} / {p.split_file('val')} changed after training (the "
            f"training recorded seen-images set {recorded}, the split now gives {digest(seen)}): "
            "retrain with `visionops train` (or `dvc repro`) before registering"
        )
    exported = new.metadata.get(TRAIN_RUN_ID) or None
    trained = run.get("run_id")
    if exported != trained:
        raise VisionOpsError(
            f"{stage_paths(config).onnx_model} was exported from training run {exported} but "
            f"{stage_paths(config).train_run} names run {trained}: the export is stale. Run "
            "`visionops export` (or `dvc repro`) so the model and its training match"
        )


def _tag_values(prefix: str, data: dict) -> dict[str, str]:
    return {
        f"{prefix}.{k}": (f"{v:.6g}" if isinstance(v, float) else str(v))
        for k, v in data.items()
        if isinstance(v, int | float | bool | str)
    }


def create_version(client, name: str, info, run_id: str, tags: dict, text: str) -> str:
    """Create the registered model if needed, then the version, tags and description at once."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name)
        except MlflowException:  # created meanwhile by another process
            client.get_registered_model(name)
    mv = client.create_model_version(
        name, info.model_uri, run_id=run_id, tags=tags, description=text, model_id=info.model_id
    )
    log.info("registered %s version %s", name, mv.version)
    return str(mv.version)


def _find_same_content(client, name: str, sha: str):
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}' and tags.onnx_sha256 = '{sha}'")
    except MlflowException:
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def run(config: Config) -> RegisterResult:
    import mlflow
    from mlflow import MlflowClient

    p = stage_paths(config)
    if not p.onnx_model.exists():
        raise VisionOpsError(f"{p.onnx_model}: missing; run `visionops export` first")
    export_report = _read_json(p.export_report, "export")
    test_metrics = _read_json(p.evaluate_metrics, "evaluate")
    test_rows = read_split(p.split_file("test"), config.data_dir)
    seen = seen_by_training(p.split_file("train"), p.split_file("val"), config.data_dir)
    name, metric, reg = config.register.model_name, config.register.metric, config.register
    new = OnnxClassifier(p.onnx_model)
    check_train_run(config, new, seen)
    # As exported (the model was built then); keys an older export lacks come from now.
    lineage = {k: export_report.get(k, v) for k, v in lineage_tags(config).items()}
    if lineage.get("git_dirty"):
        log.warning(
            "the work tree has uncommitted changes (%s): this version's lineage names commit %s "
            "plus those changes. Commit them (or run the flow with commit: true) to keep it "
            "reproducible", lineage["git_dirty"], lineage.get("git_commit"),
        )  # fmt: skip

    run_id, uri = training_run(config)
    if run_id:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    else:  # no training run to attach to: a "register" run in the project's experiment
        setup_tracking(config)
        uri = tracking_uri(config)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    sha = hashlib.sha256(p.onnx_model.read_bytes()).hexdigest()

    lock = project_lock_path(config.root, config.path(config.base.artifacts_dir), "register.lock")
    waiting = "another `visionops register` in this project (%s) is running; waiting for it"
    with acquire(lock, timeout_s=600, on_wait=lambda h: log.info(waiting, h.describe())):
        finish_interrupted(client, name, uri)
        same = _find_same_content(client, name, sha)
        if same is not None:
            decision = decision_from_record(client, name, same, uri)
            write_json(p.register_decision, decision)
            return RegisterResult(decision)

        predicted = comparison.predict_labels(new, test_rows)
        classes = comparison.score_classes(new, test_rows)
        test_scores = comparison.score_rows(test_rows, predicted, classes)
        champion = current_champion(client, name)
        compared = comparison.compare(predicted, seen, test_rows, classes, champion, uri, metric)
        experiment = comparison.experiment_name()
        alias, reason = comparison.decide(
            compared, metric, reg.min_improvement, reg.min_eval_images, name,
            experiment, reg.promote_experiments,
        )  # fmt: skip
        if alias != CHAMPION or compared.champion_version is not None:
            log.info("register decision: %s", reason)

        decision = {
            "model_name": name,
            "alias": alias,
            "promoted": alias == CHAMPION,
            "reason": reason,
            "metric": metric,
            "min_improvement": reg.min_improvement,
            "min_eval_images": reg.min_eval_images,
            "new_score": compared.new_scores.get(metric),
            "new_scores": {k: v for k, v in compared.new_scores.items() if k != "per_class"},
            "champion_version": compared.champion_version,
            "champion_score": compared.champion_score,
            "eval_images": compared.eval_images,
            "eval_set_sha": compared.eval_set_sha,
            "test_images": len(test_rows),
            "test_scores": {k: v for k, v in test_scores.items() if k != "per_class"},
            "seen_images": len(seen),
            "seen_images_sha": digest(seen),
            "experiment": experiment,
            "tracking_uri": uri,
            "lineage": lineage,
        }
        int8 = passed_int8(config, export_report, sha)
        record = {
            **{k: str(v) for k, v in lineage.items()},
            **dvc_lock_hashes(config.root),
            **_tag_values("test", {k: v for k, v in test_metrics.items() if k != "per_class"}),
            **_tag_values("parity", export_report["parity"]),
            "onnx_sha256": sha,
            "opset": str(export_report.get("opset", "")),
            "backbone": new.metadata.get("visionops.backbone", ""),
            "seen_images.sha": digest(seen),
            "seen_images.count": str(len(seen)),
            **int8_record(export_report.get("int8"), int8 is not None),
            **decision_tags(decision),
        }
        info, run_id = log_onnx_model(
            config, run_id, new, lineage, seen, [r.path for r in test_rows],
            {f"register_test_{metric}": test_scores[metric]}, record, int8,
        )  # fmt: skip
        decision["run_id"] = run_id
        # One call: the version is born with its tags, decision (state pending) and description.
        version = create_version(
            client, name, info, run_id,
            version_tags(record, metric), description(decision, record),
        )  # fmt: skip
        decision.update(version=version, model_uri=f"models:/{name}/{version}", state=DONE)
        failpoint("register.after_version")
        if alias == CHAMPION:
            move_champion(client, name, version, "register", reason)
        elif alias == CHALLENGER:
            client.set_registered_model_alias(name, CHALLENGER, version)
        client.set_model_version_tag(name, version, "decision.state", DONE)
        write_json(p.register_decision, decision)
    return RegisterResult(decision)
