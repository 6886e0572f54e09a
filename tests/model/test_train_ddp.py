"""``torchrun --nproc-per-node 2`` on the CPU (gloo): one epoch, one MLflow run, rank 0 writes."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import pytest
import yaml

from visionops.paths import stage_paths

pytestmark = [pytest.mark.model, pytest.mark.slow]


def test_ddp_with_two_cpu_processes_runs_one_epoch(toy_project, tmp_path) -> None:
    # the on-the-fly path: no frozen-feature cache, the whole network trains
    config = toy_project(
        **{
            "train.head_epochs": 0,
            "train.finetune_epochs": 1,
            "train.feature_views": 0,
            "train.finetune_blocks": "all",
        }
    )
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            config.model_dump(mode="json", by_alias=True, exclude={"root"}), sort_keys=False
        )
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "visionops.cli",
            "train",
            "--params",
            str(params),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    paths = stage_paths(config)
    metrics = json.loads(paths.train_metrics.read_text())
    assert metrics["epochs"] == 1
    run_id = json.loads(paths.train_run.read_text())["run_id"]
    client = mlflow.MlflowClient(json.loads(paths.train_run.read_text())["tracking_uri"])
    runs = client.search_runs([client.get_run(run_id).info.experiment_id])
    assert len(runs) == 1  # rank 1 never opened a run
    assert "DDP rank 0/2" in runs[0].data.params["resolved.device"]
    assert runs[0].data.metrics["train_acc"] >= 0.0
