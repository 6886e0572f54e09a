"""A tiny training under a tiny ``base.cache_max_gb`` prunes, streams, and still learns (issue 14
item 6). Real image cache, real locks, real MLflow store in tmp; a few seconds."""

from __future__ import annotations

import os
import time

import mlflow
import pytest
import torch

import visionops.train as train_stage
from visionops.paths import stage_paths
from visionops.tracking import tracking_uri
from visionops.train.checkpoint import load_checkpoint

pytestmark = [pytest.mark.model, pytest.mark.slow]


def test_a_tiny_budget_prunes_old_folders_streams_and_still_trains(toy_project, capsys) -> None:
    # decoded toy images take ~2 MB; 2 views of features + the frozen graph ~15 MB: 6 MB holds
    # the images but not the features
    config = toy_project(**{"base.cache_max_gb": 0.006, "train.finetune_epochs": 1})
    old = config.cache_dir / "features" / "0123456789abcdef0123"
    old.mkdir(parents=True)
    (old / "train_acts.npy").write_bytes(b"\0" * 5_000_000)
    (old / "done.json").write_text("{}")
    three_days_ago = time.time() - 3 * 86_400
    os.utime(old, (three_days_ago, three_days_ago))

    result = train_stage.run(config)

    out = capsys.readouterr().out
    assert f"cache: removed {old} (0.005 GB, least recently used" in out
    assert not old.exists()
    lines = [line for line in out.splitlines() if line.startswith("cache: streaming")]
    assert len(lines) == 1, out
    assert "base.cache_max_gb = 0.006 GB" in lines[0] and "train.feature_views" in lines[0]
    assert not [p for p in (config.cache_dir / "features").iterdir()]  # no feature store
    images = config.cache_dir / "images" / "r72-bilinear"
    assert (images / ".last_used").exists()
    assert result.val_accuracy >= 0.8, result.summary()
    run = mlflow.MlflowClient(tracking_uri(config)).get_run(result.run_id)
    assert run.data.params["resolved.feature_cache"] == "streaming"


def test_a_streamed_run_trains_exactly_as_feature_views_0(toy_project) -> None:
    """Streaming is ``feature_views: 0``, not a third path: same weights, same resume key."""
    streamed_cfg = toy_project(**{"train.streaming": "always", "train.finetune_epochs": 1})
    streamed = train_stage.run(streamed_cfg)
    best = stage_paths(streamed_cfg).checkpoint_best
    a = load_checkpoint(best)["model_state"]
    plain = train_stage.run(toy_project(**{"train.feature_views": 0, "train.finetune_epochs": 1}))
    b = load_checkpoint(best)["model_state"]
    assert streamed.best_epoch == plain.best_epoch
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
