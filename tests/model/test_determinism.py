"""Same data + params + seed => the same model, whatever the caches held; one training at a time.

Issue 10 (5): a run that filled the frozen-feature cache trained with other dropout masks than a
run that found it full (the cache fill drew from torch's global RNG), so the two ended with other
weights. Here one toy project is trained three times — caches cold, caches warm, and warm but
killed after epoch 2 and resumed — and the final weights must be bit-identical. The lock tests
start real ``visionops train`` processes against a lock held elsewhere, and kill a holder with
SIGKILL (leaving a forked child of it running) to show a dead holder never blocks the next
training.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import visionops.train as train_stage
from visionops.paths import stage_paths
from visionops.train.checkpoint import load_checkpoint
from visionops.train.data import read_splits
from visionops.train.lock import TrainingRunning, train_lock, train_lock_path
from visionops.train.resume import run_key

pytestmark = [pytest.mark.model, pytest.mark.slow]

# dropout and un-frozen BatchNorm (stochastic depth on) make every epoch draw random numbers:
# the draws a cold cache used to shift
RANDOM = {"model.dropout": 0.3, "train.freeze_bn": False}


class Crash(RuntimeError):
    pass


def _train(config, label: str, keep: Path, crash_after: int | None = None) -> dict:
    """Train; return the final weights (``last.pt`` after the last epoch), the best weights and
    the history rows. With ``crash_after`` the run dies after that epoch and is run again."""
    _, train, val = read_splits(config)
    last = config.cache_dir / "checkpoints" / run_key(config, train, val) / "last.pt"
    final = keep / f"{label}-final.pt"
    epochs = config.train.head_epochs + config.train.finetune_epochs

    def on_epoch_end(epoch: int) -> None:
        if epoch == epochs:
            shutil.copy(last, final)  # finish_run deletes the resume folder
        if epoch == crash_after:
            raise Crash("killed")

    if crash_after is not None:
        with pytest.raises(Crash):
            train_stage.run(config, on_epoch_end=on_epoch_end)
        assert last.exists()
    result = train_stage.run(config, on_epoch_end=on_epoch_end)
    assert result.resumed_from == crash_after
    paths = stage_paths(config)
    rows = list(csv.DictReader(paths.train_history.open()))
    out = {
        "final": load_checkpoint(final)["model_state"],
        "best": load_checkpoint(paths.checkpoint_best)["model_state"],
        "history": [
            {k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows
        ],
    }
    shutil.rmtree(paths.checkpoint_best.parent)
    return out


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_cold_warm_and_resumed_runs_give_identical_weights(toy_project, tmp_path) -> None:
    config = toy_project(**RANDOM)
    keep = tmp_path / "kept"
    keep.mkdir()
    features = config.cache_dir / "features"
    assert not features.exists()

    cold = _train(config, "cold", keep)
    assert len(list(features.glob("*/done.json"))) == 1  # the cold run filled it
    warm = _train(config, "warm", keep)
    resumed = _train(config, "resumed", keep, crash_after=2)  # mid fine-tuning

    assert len(cold["history"]) == 3
    for other in (warm, resumed):
        assert other["history"] == cold["history"]
        assert not _same_weights(cold["final"], other["final"])
        assert not _same_weights(cold["best"], other["best"])


# --------------------------------------------------------------------------- the train lock

# Holds the train lock, then forks a child (like a decoding or DataLoader worker) that outlives
# it: a child must not keep a killed parent's lock alive.
HOLD = """
import os, sys, time
from visionops.config import load_config
from visionops.train.lock import train_lock
with train_lock(load_config(sys.argv[1])):
    child = os.fork()
    if child == 0:
        time.sleep(600)
        os._exit(0)
    print("held", child, flush=True)
    time.sleep(600)
"""


def _params_file(config, tmp_path: Path) -> Path:
    params = tmp_path / "params.yaml"
    dumped = config.model_dump(mode="json", by_alias=True, exclude={"root"})
    params.write_text(yaml.safe_dump(dumped, sort_keys=False))
    return params


def _visionops_train(params: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "visionops.cli", "train", "--params", str(params)],
        cwd=params.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_second_training_stops_at_once_and_a_killed_holder_blocks_nothing(
    toy_project, tmp_path
) -> None:
    config = toy_project(**{"train.finetune_epochs": 0, "train.feature_views": 1})
    params = _params_file(config, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(params)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = None
    try:
        word, child_pid = holder.stdout.readline().split()
        assert word == "held"
        child = int(child_pid)

        second = _visionops_train(params)

        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr  # one line, no traceback
        assert lines[0].startswith(f"error: another `visionops train` (pid {holder.pid}, started ")
        assert "is running in this project; wait for it to finish" in lines[0]
        assert not stage_paths(config).checkpoint_best.exists()

        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        assert holder.returncode == -signal.SIGKILL
        os.kill(child, 0)  # its forked child still runs
        assert train_lock_path(config).exists()  # the dead holder's file stays; its lock does not

        third = _visionops_train(params)

        assert third.returncode == 0, third.stderr[-3000:]
        assert stage_paths(config).checkpoint_best.exists()
    finally:
        for pid in (holder.pid, child):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        holder.wait(timeout=30)


def test_train_refuses_while_the_lock_is_held_in_process(toy_project) -> None:
    config = toy_project()
    with train_lock(config), pytest.raises(TrainingRunning, match=rf"pid {os.getpid()}, started"):
        train_stage.run(config)
    assert not (config.cache_dir / "images").exists()  # stopped before any work
    with train_lock(config):  # released on the way out, and free again
        pass
