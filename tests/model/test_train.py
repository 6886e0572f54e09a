"""The train stage end to end on generated images: learns, tracks, resumes, weights, overfits.

Real components throughout: the uint8 cache, ONNX Runtime for the frozen layers, a real MLflow
SQLite store in tmp, real checkpoints. Tiny from-scratch models at 64 px keep it fast.
"""

from __future__ import annotations

import csv
import json
import re

import mlflow
import pytest
import torch

import visionops.train as train_stage
from visionops.paths import stage_paths
from visionops.tracking import tracking_uri
from visionops.train.checkpoint import load_checkpoint, load_model
from visionops.train.data import read_splits
from visionops.train.lr_find import run as lr_find
from visionops.train.resume import run_key

pytestmark = [pytest.mark.model, pytest.mark.slow]


def test_separable_toy_set_is_learned_and_tracked(toy_project) -> None:
    config = toy_project()
    result = train_stage.run(config)

    assert result.val_accuracy >= 0.9, result.summary()
    # the printed val accuracy carries its 95% interval (a toy val split is a few dozen images)
    _, _, val = read_splits(config)
    assert f"(95%, {len(val)} images)" in result.summary().splitlines()[0], result.summary()
    paths = stage_paths(config)
    model, ckpt = load_model(paths.checkpoint_best)
    assert ckpt["class_names"] == ["a", "b", "c"] and ckpt["epoch"] == result.best_epoch
    assert ckpt["preprocess"]["image_size"] == 64
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)

    rows = list(csv.DictReader(paths.train_history.open()))
    assert [r["phase"] for r in rows] == ["head", "finetune", "finetune"]
    assert {
        "epoch",
        "train_loss",
        "val_loss",
        "train_acc",
        "val_acc",
        "val_macro_f1",
        "lr",
        "images_per_s",
    } <= set(rows[0])
    metrics = json.loads(paths.train_metrics.read_text())
    assert metrics["val_accuracy"] == pytest.approx(result.val_accuracy, abs=1e-6)
    assert paths.train_plots.read_bytes()[:4] == b"\x89PNG"

    run_info = json.loads(paths.train_run.read_text())
    assert run_info["tracking_uri"] == tracking_uri(config)
    run = mlflow.MlflowClient(run_info["tracking_uri"]).get_run(run_info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.batch_size"] == "16"
    assert run.data.params["resolved.imbalance"] == "none"
    assert {"git_commit", "data_version", "params_hash"} <= set(run.data.tags)
    # issue 11: runs tell apart by name (backbone, data version, time); clean summary names
    assert re.fullmatch(r"train lite0 (\w{6}|untracked) \d\d-\d\d \d\d:\d\d", run.info.run_name), (
        run.info.run_name
    )
    assert {"best_val_accuracy", "best_val_macro_f1", "best_epoch", "epochs"} <= set(
        run.data.metrics
    )
    assert not [m for m in run.data.metrics if m.startswith("best_best")]
    assert run.data.metrics["best_epoch"] == result.best_epoch
    history = mlflow.MlflowClient(run_info["tracking_uri"]).get_metric_history(
        run.info.run_id, "val_acc"
    )
    assert [m.step for m in history] == [1, 2, 3]
    artifacts = {
        a.path
        for a in mlflow.MlflowClient(run_info["tracking_uri"]).list_artifacts(
            run.info.run_id, "checkpoint"
        )
    }
    assert "checkpoint/best.pt" in artifacts
    # the resume state is gone once the run is complete
    assert not list((config.cache_dir / "checkpoints").glob("*/last.pt"))


class Crash(RuntimeError):
    pass


def test_interrupted_run_resumes_from_its_saved_epoch(toy_project) -> None:
    config = toy_project(
        counts={"train": {"a": 30, "b": 6}, "val": {"a": 8, "b": 4}},  # 5:1 -> weighted
        **{"train.finetune_epochs": 3, "train.batch_size": 12},
    )

    def crash_after_epoch_2(epoch: int) -> None:
        if epoch == 2:
            raise Crash("killed")

    with pytest.raises(Crash):
        train_stage.run(config, on_epoch_end=crash_after_epoch_2)
    _, train, val = read_splits(config)
    last = config.cache_dir / "checkpoints" / run_key(config, train, val) / "last.pt"
    saved = load_checkpoint(last)
    assert saved["epoch"] == 2 and saved["trainer"]["phase_index"] == 1
    assert not stage_paths(config).checkpoint_best.exists()
    client = mlflow.MlflowClient(tracking_uri(config))
    assert client.get_run(saved["trainer"]["run_id"]).info.status == "FAILED"

    seen: list[int] = []
    result = train_stage.run(config, on_epoch_end=seen.append)

    assert result.resumed_from == 2 and seen == [3, 4] and result.epochs == 4
    assert result.run_id == saved["trainer"]["run_id"]  # the same MLflow run continues
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(result.run_id, "val_acc")] == [1, 2, 3, 4]
    # imbalance: 30 vs 6 is over the 3.0 threshold -> class-weighted loss, macro-F1 selection
    assert run.data.params["resolved.imbalance"] == "weighted_loss"
    assert result.selection_metric == "macro_f1"
    rows = list(csv.DictReader(stage_paths(config).train_history.open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]


def test_overfit_batch_and_lr_find(toy_project) -> None:
    config = toy_project(**{"train.batch_size": 8, "model.dropout": 0.0})
    result = train_stage.run(config, overfit_batch=True)
    assert result.accuracy == 1.0, result.summary()
    assert not stage_paths(config).checkpoint_best.exists()  # a sanity check writes no artifacts

    found = lr_find(config)
    assert 1e-6 <= found.suggested_lr <= 1.0
    assert found.plot.read_bytes()[:4] == b"\x89PNG"
    assert "suggested head LR" in found.summary()
