"""The Prefect run report shows each test score with its 95% interval (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visionops.config import build_config
from visionops.orchestrate.run_report import PipelineRun, build_report
from visionops.orchestrate.stages import StageResult

pytestmark = pytest.mark.unit


def report_for(tmp_path: Path, metrics: dict) -> str:
    cfg = build_config({}, root=tmp_path)
    path = cfg.artifacts_dir / "evaluate" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))
    return build_report(cfg, PipelineRun(stages=[StageResult("evaluate", "ran", 1.0, "dvc")]))


def test_scores_carry_their_interval(tmp_path: Path) -> None:
    text = report_for(
        tmp_path,
        {
            "accuracy": 1.0,
            "macro_f1": 1.0,
            "ece": 0.03,
            "n_images": 37,
            "accuracy_ci_low": 0.90594,
            "accuracy_ci_high": 1.0,
            "macro_f1_ci_low": 1.0,
            "macro_f1_ci_high": 1.0,
            "per_class": {"a": {"f1": 1.0}},
        },
    )
    assert "On 37 test images; 95% intervals: accuracy Wilson" in text
    assert "| metric | value | 95% interval |" in text
    assert "| accuracy | 1.0000 | [0.9059, 1.0000] |" in text
    assert "| macro_f1 | 1.0000 | [1.0000, 1.0000] |" in text
    assert "| ece | 0.0300 | — |" in text
    assert "ci_low" not in text and "ci_high" not in text  # folded in, not rows of their own


def test_metrics_without_intervals_keep_the_old_table(tmp_path: Path) -> None:
    """A metrics.json written before issue 14 (a skipped evaluate) still shows."""
    text = report_for(tmp_path, {"accuracy": 0.5, "n_images": 4})
    assert "| metric | value |\n" in text and "| accuracy | 0.5000 |" in text
    assert "95%" not in text
