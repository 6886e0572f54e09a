"""register: a real MLflow SQLite store in tmp, real ONNX Runtime, hand-built ONNX models.

Champion/challenger both ways: a worse model never takes @champion, a better one does, and the
margin (register.min_improvement) is honoured. No torch needed: the models are toy colour
classifiers whose quality is set by how their classes map to colour channels.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tests.toy_onnx import CHANNEL, TOY_SPEC, colour_model
from tests.toy_project import make_project
from visionops.config import Config, load_config
from visionops.errors import VisionOpsError
from visionops.inference import Predictor
from visionops.io import write_json
from visionops.paths import stage_paths
from visionops.registry import register as register
from visionops.registry.lineage import describe
from visionops.tracking import setup_tracking, tracking_uri

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
LABELS = ["blue", "green", "red"]
PERFECT = CHANNEL
MEDIOCRE = {"blue": 2, "green": 0, "red": 0}  # blue right; red images come out "green" (a tie)
WORSE = {"blue": 0, "green": 2, "red": 1}  # every colour lands on another class


def install_model(cfg: Config, channel_of: dict[str, int]) -> None:
    """What export and evaluate would have left: model.onnx, report.json, metrics.json."""
    p = stage_paths(cfg)
    colour_model(p.onnx_model, LABELS, channel_of=channel_of, spec=TOY_SPEC)
    write_json(
        p.export_report,
        {
            "opset": 17,
            "sha256": hashlib.sha256(p.onnx_model.read_bytes()).hexdigest(),
            "parity": {
                "passed": True,
                "n_images": 9,
                "top1_agreement": 1.0,
                "max_abs_diff_prob": 1e-6,
                "limit": 1e-4,
            },
            "val_accuracy_onnx": 1.0,
            "git_commit": "0123abc",
            "data_version": "d41d8cd9",
            "params_hash": "feedbeef",
        },
    )
    write_json(p.evaluate_metrics, {"accuracy": 0.5, "macro_f1": 0.4, "per_class": {}})


@pytest.fixture
def project(tmp_path: Path) -> Config:
    cfg = make_project(tmp_path / "proj", per_split={"test": 3})
    (cfg.root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train:\n    cmd: visionops train\n    outs:\n"
        "    - path: artifacts/train/best.pt\n      md5: 0123456789abcdef\n      size: 10\n"
    )
    return cfg


@pytest.fixture
def tracked(project: Config) -> Config:
    """The project plus the training's MLflow run (artifacts/train/run.json)."""
    cfg = project
    setup_tracking(cfg)
    with mlflow.start_run(run_name="train") as run:
        mlflow.log_params({"train.head_epochs": 2, "model.backbone": "toy"})
    write_json(
        stage_paths(cfg).train_run, {"run_id": run.info.run_id, "tracking_uri": tracking_uri(cfg)}
    )
    return cfg


def registered(cfg: Config, channel_of: dict[str, int], margin: float = 0.0) -> dict:
    install_model(cfg, channel_of)
    cfg = load_config(cfg.root / "params.yaml", overrides={"register.min_improvement": margin})
    decision = register.run(cfg).decision
    on_disk = json.loads(stage_paths(cfg).register_decision.read_text())
    assert on_disk == json.loads(json.dumps(decision))
    return decision


def test_champion_moves_only_for_a_real_improvement(tracked: Config) -> None:
    project = tracked
    name, uri = project.register.model_name, tracking_uri(project)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    first = registered(project, MEDIOCRE)
    assert (first["version"], first["alias"], first["champion_score"]) == ("1", "champion", None)
    assert 0.2 < first["new_score"] < 0.7  # macro-F1

    worse = registered(project, WORSE)
    assert (worse["version"], worse["alias"], worse["promoted"]) == ("2", "challenger", False)
    assert worse["champion_version"] == "1"
    assert worse["champion_score"] == pytest.approx(first["new_score"])
    assert worse["new_score"] == 0.0

    # Better, but not by more than the margin.
    held = registered(project, PERFECT, margin=1.0 - first["new_score"] + 1e-9)
    assert (held["alias"], held["new_score"]) == ("challenger", 1.0)

    better = registered(project, PERFECT)
    assert (better["version"], better["alias"], better["champion_version"]) == (
        "4",
        "champion",
        "1",
    )
    assert str(client.get_model_version_by_alias(name, "champion").version) == "4"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "3"

    tags = client.get_model_version(name, "4").tags
    assert tags["git_commit"] == "0123abc" and tags["data_version"] == "d41d8cd9"
    assert tags["params_hash"] == "feedbeef"
    assert tags["dvc.train"] == "best.pt:0123456789abcdef"
    assert tags["test.accuracy"] == "0.5" and tags["parity.passed"] == "True"
    assert tags["decision"] == "champion" and tags["decision.champion_version"] == "1"
    assert client.get_model_version(name, "2").tags["decision"] == "challenger"

    predictor = Predictor(f"models:/{name}@champion", tracking_uri=uri)
    assert (predictor.model_name, predictor.model_version) == (name, "4")
    assert predictor.labels == LABELS

    lineage = describe(f"models:/{name}@champion", uri)
    train_run = json.loads(stage_paths(project).train_run.read_text())["run_id"]
    assert lineage["version"] == "4" and lineage["aliases"] == ["champion"]
    assert lineage["run_id"] == train_run
    assert lineage["git_commit"] == "0123abc"
    assert lineage["params"]["train.head_epochs"] == "2"
    assert lineage["metrics"]["register_test_macro_f1"] == 1.0

    with pytest.raises(VisionOpsError, match="not found in the MLflow registry"):
        Predictor(f"models:/{name}@nobody", tracking_uri=uri)


def test_register_needs_the_export(project: Config) -> None:
    with pytest.raises(VisionOpsError, match="run `visionops export` first"):
        register.run(project)
