"""A real `dvc repro` of the whole DAG in a scratch git+DVC project, then a no-op second run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.project_factory import make_project, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("dvcproj") / "proj")
    run(["dvc", "repro"], root, timeout=900)
    return root


def test_every_stage_leaves_its_outputs(reproduced: Path) -> None:
    art = reproduced / "artifacts"
    for rel in (
        "validate/report.json",
        "validate/manifest.csv",
        "split/train.csv",
        "split/test.csv",
        "split/counts.json",
        "train/best.pt",
        "train/history.csv",
        "evaluate/metrics.json",
        "export/model.onnx",
        "register/decision.json",
    ):
        assert (art / rel).is_file(), rel
    metrics = json.loads((art / "evaluate" / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "macro_f1" in metrics
    lock = yaml.safe_load((reproduced / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"validate", "split", "train", "evaluate", "export", "register"}


def test_second_repro_is_a_noop(reproduced: Path) -> None:
    proc = run(["dvc", "repro"], reproduced)
    assert "Data and pipelines are up to date" in proc.stdout + proc.stderr, proc.stdout
    status = run(["dvc", "status"], reproduced)
    assert "up to date" in status.stdout


def test_metrics_show_reads_declared_metrics(reproduced: Path) -> None:
    shown = run(["dvc", "metrics", "show", "--json"], reproduced).stdout
    assert "accuracy" in shown and "macro_f1" in shown
