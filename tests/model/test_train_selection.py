"""The best epoch under ties (issue 14) and the temperature fitted at the end of a real toy
training: which epoch's weights ``best.pt`` holds, epoch after epoch.

The validation *scores* are scripted (the toy set is learned too fast to tie on its own), by
wrapping the real evaluation: the weights, the logits the temperature is fitted on, the
checkpoints and the MLflow run are all real.
"""

from __future__ import annotations

import dataclasses
import json

import mlflow
import pytest

import visionops.train as train_stage
from visionops.paths import stage_paths
from visionops.train import run_phase
from visionops.train.checkpoint import load_checkpoint
from visionops.train.data import read_splits
from visionops.train.resume import run_key

pytestmark = [pytest.mark.model, pytest.mark.slow]

# (accuracy, val loss) per epoch on the toy's 24 val images (one image = 1/24)
SCRIPT = [
    (12 / 24, 0.9),  # 1: the first epoch is the best so far
    (18 / 24, 1.2),  # 2: six more images right: wins despite a higher loss
    (18 / 24, 1.3),  # 3: tie with a higher loss: best.pt stays epoch 2
    (18 / 24, 1.0),  # 4: tie with a lower loss: the fine-tuned epoch replaces it
]


def test_a_tie_with_lower_val_loss_replaces_the_saved_model(toy_project, monkeypatch) -> None:
    config = toy_project(**{"train.head_epochs": 2, "train.finetune_epochs": 2})
    real = run_phase.evaluate
    calls: list[int] = []

    def scripted(*args, **kwargs):
        stats = real(*args, **kwargs)
        accuracy, loss = SCRIPT[len(calls)]
        calls.append(1)
        return dataclasses.replace(stats, accuracy=accuracy, macro_f1=accuracy, loss=loss)

    monkeypatch.setattr(run_phase, "evaluate", scripted)
    _, train, val = read_splits(config)
    running_best = config.cache_dir / "checkpoints" / run_key(config, train, val) / "best.pt"
    saved: list[int] = []
    result = train_stage.run(
        config, on_epoch_end=lambda epoch: saved.append(load_checkpoint(running_best)["epoch"])
    )

    assert saved == [1, 2, 2, 4]
    assert result.best_epoch == 4 and result.val_loss == 1.0
    ckpt = load_checkpoint(stage_paths(config).checkpoint_best)
    assert ckpt["epoch"] == 4

    # The temperature is fitted on epoch 4's real val logits, which are then dropped.
    assert "val_logits" not in ckpt
    record = ckpt["calibration"]
    assert record["n_images"] == 24 and 0.05 <= record["temperature"] <= 20
    assert record["val_nll_after"] <= record["val_nll_before"]
    assert result.calibration == record and "calibration: temperature" in result.summary()
    run_info = json.loads(stage_paths(config).train_run.read_text())
    metrics = mlflow.MlflowClient(run_info["tracking_uri"]).get_run(run_info["run_id"]).data
    assert metrics.metrics["calibration_temperature"] == pytest.approx(record["temperature"])
    # DVC metrics stay as they were (dvc metrics show keeps its columns)
    assert set(json.loads(stage_paths(config).train_metrics.read_text())) == {
        "val_accuracy",
        "val_macro_f1",
        "val_loss",
        "best_epoch",
        "epochs",
        "seconds",
    }


def test_calibrate_off_leaves_no_temperature(toy_project) -> None:
    config = toy_project(**{"train.finetune_epochs": 0, "train.calibrate": False})
    result = train_stage.run(config)
    ckpt = load_checkpoint(stage_paths(config).checkpoint_best)
    assert "calibration" not in ckpt and "val_logits" not in ckpt
    assert result.calibration is None
