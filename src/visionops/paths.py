"""Where each stage writes its outputs, declared once.

``dvc.yaml`` names the same files (through ``${base.artifacts_dir}``);
``tests/unit/test_dvc_yaml.py`` checks that the two agree, so a stage and its DVC
declaration cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visionops.config import Config


@dataclass(frozen=True)
class StagePaths:
    """All stage outputs under ``artifacts/``; build with :func:`stage_paths`."""

    root: Path

    # validate
    @property
    def manifest(self) -> Path:  # every scanned file, usable or not
        return self.root / "validate" / "manifest.csv"

    @property
    def validation_report(self) -> Path:  # JSON, DVC metrics
        return self.root / "validate" / "report.json"

    @property
    def validation_summary(self) -> Path:  # Markdown for people
        return self.root / "validate" / "summary.md"

    # split
    def split_file(self, split: str) -> Path:  # train / val / test CSV: path,label,sha256
        return self.root / "split" / f"{split}.csv"

    @property
    def split_counts(self) -> Path:  # JSON, DVC metrics
        return self.root / "split" / "counts.json"

    # train
    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def checkpoint_best(self) -> Path:
        return self.root / "train" / "best.pt"

    @property
    def train_metrics(self) -> Path:  # JSON, DVC metrics
        return self.root / "train" / "metrics.json"

    @property
    def train_history(self) -> Path:  # CSV one row per epoch, DVC plots
        return self.root / "train" / "history.csv"

    @property
    def train_run(self) -> Path:  # JSON: mlflow run id + tracking uri, read by later stages
        return self.root / "train" / "run.json"

    @property
    def train_plots(self) -> Path:  # PNG learning curves
        return self.root / "train" / "curves.png"

    # evaluate
    @property
    def evaluate_dir(self) -> Path:
        return self.root / "evaluate"

    @property
    def evaluate_metrics(self) -> Path:  # JSON, DVC metrics (accuracy, macro_f1, ...)
        return self.root / "evaluate" / "metrics.json"

    # export
    @property
    def onnx_model(self) -> Path:
        return self.root / "export" / "model.onnx"

    @property
    def export_report(self) -> Path:  # JSON: parity, opset, int8 figures
        return self.root / "export" / "report.json"

    # register
    @property
    def register_decision(self) -> Path:  # JSON: version, champion decision, both scores
        return self.root / "register" / "decision.json"


def stage_paths(config: Config) -> StagePaths:
    return StagePaths(config.artifacts_dir)


SPLITS = ("train", "val", "test")


def display_path(path: Path, root: Path) -> str:
    """``path`` relative to the project root when inside it (reports stay portable)."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
