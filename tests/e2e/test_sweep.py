"""A real 4-point sweep on DVC's experiment queue (issue 11): `visionops sweep --run -j 1` in a
scratch git + DVC project, each point a whole `dvc.yaml` run in DVC's temporary copy of the repo.

The store is params' relative `sqlite:///mlruns/mlflow.db` (no MLFLOW_TRACKING_URI), so this
also proves the queued runs land in the project's `mlruns/`, not in the deleted copy.
Tiny data (3 classes x 14 generated JPEGs, a 64 px network from scratch, 1 + 1 epochs): 7-11
minutes on 2 busy cores (load 8-12), nearly all of it the 24 stage processes starting up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.project_factory import VENV_BIN, make_project

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GRID = {"train.head_lr": [0.001, 0.01], "train.head_epochs": [1, 2]}
NAMES = {
    "t-head_lr-0.001-head_epochs-1",
    "t-head_lr-0.001-head_epochs-2",
    "t-head_lr-0.01-head_epochs-1",
    "t-head_lr-0.01-head_epochs-2",
}


def sweep_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        {"DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
    )
    return env


def visionops(root: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "visionops.cli", *args],
        cwd=root,
        env=sweep_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    root = make_project(tmp_path_factory.mktemp("sweep") / "proj")
    (root / "sweep.yaml").write_text(yaml.safe_dump({"grid": GRID}, sort_keys=False))
    started = time.perf_counter()
    proc = visionops(root, "sweep", "--name", "t", "--run", "-j", "1")
    print(f"\n4-point sweep: {time.perf_counter() - started:.0f} s\n{proc.stdout}")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    return root, proc


def test_every_point_ran_and_the_table_is_best_first(swept) -> None:
    root, proc = swept
    lines = proc.stdout.splitlines()
    rows = [line.split() for line in lines[1:5]]
    assert {r[0] for r in rows} == NAMES and all(r[-1] == "Success" for r in rows), proc.stdout
    scores = [float(r[3]) for r in rows]  # test macro_f1 (register.metric)
    assert scores == sorted(scores, reverse=True)
    assert "dvc exp show --only-changed" in proc.stdout and "dvc exp apply t-" in proc.stdout
    again = visionops(root, "sweep", "--show", "t")
    assert again.returncode == 0 and {ln.split()[0] for ln in again.stdout.splitlines()[1:5]} == (
        NAMES
    )


def test_dvc_exp_show_has_numbers_for_each_experiment(swept) -> None:
    root, _ = swept
    shown = subprocess.run(
        ["dvc", "exp", "show", "--json"],
        cwd=root,
        env=sweep_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    found = {}
    for commit in json.loads(shown.stdout):
        for exp in commit.get("experiments") or []:
            rev = exp["revs"][0]
            found[rev["name"]] = rev["data"]
    assert set(found) == NAMES
    for name, data in found.items():
        train = data["params"]["params.yaml"]["data"]["train"]
        assert name == f"t-head_lr-{train['head_lr']}-head_epochs-{train['head_epochs']}"
        test = data["metrics"]["artifacts/evaluate/scores.json"]["data"]
        val = data["metrics"]["artifacts/train/metrics.json"]["data"]
        for value in (test["macro_f1"], test["accuracy"], val["val_macro_f1"]):
            assert isinstance(value, float) and 0.0 <= value <= 1.0, (name, data["metrics"])


def test_mlflow_runs_and_versions_are_tagged_and_champion_untouched(swept) -> None:
    root, _ = swept
    assert not list((root / ".dvc" / "tmp" / "exps").glob("tmp*")), "a queued copy was left"
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"  # params' relative store, in the project
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("visionops")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    assert {r.data.tags.get("experiment") for r in runs} == NAMES
    for run in runs:
        name = run.data.tags["experiment"]
        assert run.info.run_name.startswith(name + " lite1 ")
        assert name.startswith(f"t-head_lr-{run.data.params['train.head_lr']}-")
        assert "best_val_macro_f1" in run.data.metrics and "test_macro_f1" in run.data.metrics
        assert not [m for m in run.data.metrics if m.startswith("best_best")]
    versions = client.search_model_versions("name = 'visionops-classifier'")
    assert {v.tags.get("experiment") for v in versions} == NAMES
    model = client.get_registered_model("visionops-classifier")
    assert not model.aliases, model.aliases  # no @champion even with none before: sandboxed
