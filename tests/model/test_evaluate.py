"""evaluate: a real Lite0 checkpoint on the test split, outputs on disk and in the MLflow run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from tests.toy_onnx import colour_image
from tests.toy_project import make_checkpoint, make_project
from visionops.config import Config
from visionops.errors import DataError, VisionOpsError
from visionops.evaluate import stage as evaluate
from visionops.evaluate.write_reports import write_reports
from visionops.io import write_json
from visionops.paths import stage_paths
from visionops.tracking import setup_tracking, tracking_uri

pytestmark = pytest.mark.model
CLASSES = ("blue", "green", "red")
PLOTS = {
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
    "reliability.png",
    "top_losses.png",
}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory):
    cfg = make_project(
        tmp_path_factory.mktemp("evaluate") / "proj", per_split={"train": 4, "test": 4}
    )
    make_checkpoint(cfg, CLASSES)
    setup_tracking(cfg)
    with mlflow.start_run(run_name="train") as run:
        pass
    write_json(
        stage_paths(cfg).train_run, {"run_id": run.info.run_id, "tracking_uri": tracking_uri(cfg)}
    )
    return cfg, evaluate.run(cfg)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_metrics_json_for_dvc(evaluated) -> None:
    cfg, result = evaluated
    metrics = json.loads(stage_paths(cfg).evaluate_metrics.read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    for key in ("accuracy", "macro_f1", "macro_precision", "macro_recall", "ece", "log_loss"):
        assert metrics[key] >= 0.0, key
    assert metrics["n_images"] == 12 and metrics["n_classes"] == 3
    assert set(metrics["per_class"]) == set(CLASSES)
    assert "top5_accuracy" not in metrics  # only with more than 5 classes
    assert "accuracy" in result.summary()


def test_per_class_and_label_issues(evaluated) -> None:
    cfg, result = evaluated
    out = stage_paths(cfg).evaluate_dir
    per_class = read_csv(out / "per_class.csv")
    assert [r["class"] for r in per_class] == list(CLASSES)
    assert sum(int(r["support"]) for r in per_class) == 12
    issues = read_csv(out / "label_issues.csv")
    wrong = round((1 - result.metrics["accuracy"]) * 12)
    assert len(issues) == wrong
    losses = [float(r["loss"]) for r in issues]
    assert losses == sorted(losses, reverse=True)
    assert [int(r["rank"]) for r in issues] == list(range(1, wrong + 1))
    for row in issues:
        assert row["label"] != row["predicted"]
        assert (cfg.data_dir / row["path"]).exists()  # relative to data/, like the split CSVs


def test_plots_written(evaluated) -> None:
    cfg, _ = evaluated
    plots = stage_paths(cfg).evaluate_dir / "plots"
    assert {p.name for p in plots.iterdir()} == PLOTS  # no ROC/PR: not a binary task
    for p in plots.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_logged_to_the_training_run(evaluated) -> None:
    cfg, result = evaluated
    # The store evaluate logged into is the one run.json names (what the stage itself reads).
    uri = json.loads(stage_paths(cfg).train_run.read_text())["tracking_uri"]
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result.run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert "test_f1/red" in run.data.metrics
    # issue 14: the 95% intervals travel with the scores (12 test images: wide)
    low, high = run.data.metrics["test_accuracy_ci_low"], run.data.metrics["test_accuracy_ci_high"]
    assert low <= result.metrics["accuracy"] <= high and high - low > 0.2
    assert "test_macro_f1_ci_low" in run.data.metrics
    logged = {f.path for f in client.list_artifacts(result.run_id, "evaluate")}
    assert {"evaluate/metrics.json", "evaluate/label_issues.csv", "evaluate/plots"} <= logged


def test_binary_and_many_class_reports_without_a_model(tmp_path: Path) -> None:
    """write_reports alone: ROC/PR for 2 classes, top-5 for > 5 classes."""
    cfg = make_project(tmp_path / "proj", per_split={"test": 1}, classes=("blue", "red"))
    files = [cfg.data_dir / "blue/test_0.png", cfg.data_dir / "red/test_0.png"] * 3
    y = np.array([0, 1] * 3)
    probs = np.array(
        [[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.8, 0.2], [0.1, 0.9]], dtype=np.float32
    )
    metrics = write_reports(cfg, files, y, probs, ["blue", "red"])
    plots = stage_paths(cfg).evaluate_dir / "plots"
    assert {"roc.png", "pr.png"} <= {p.name for p in plots.iterdir()}
    assert 0 <= metrics["roc_auc"] <= 1 and "average_precision" in metrics

    names = [f"c{i}" for i in range(7)]
    colour_image(cfg.data_dir / "x.png", "red")
    probs7 = np.full((7, 7), 0.04, dtype=np.float32)
    probs7[np.arange(7), (np.arange(7) + 1) % 7] = 0.5  # always wrong ...
    probs7[np.arange(7), np.arange(7)] = 0.3  # ... but the true class is the runner-up
    metrics = write_reports(cfg, [cfg.data_dir / "x.png"] * 7, np.arange(7), probs7, names)
    assert metrics["accuracy"] == 0.0 and metrics["top5_accuracy"] == 1.0
    assert not (plots / "roc.png").exists()  # stale binary plots are cleared


def test_clear_errors(tmp_path: Path) -> None:
    cfg: Config = make_project(tmp_path / "proj", per_split={"test": 1})
    with pytest.raises(VisionOpsError, match="no checkpoint; run `visionops train`"):
        evaluate.run(cfg)
    make_checkpoint(cfg, ("blue", "green"), fit=False)
    with pytest.raises(DataError, match="labels red are not among the checkpoint's classes"):
        evaluate.run(cfg)
