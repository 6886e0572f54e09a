"""Where each stage writes its outputs, declared once.

``dvc.yaml`` names the same files (through ``${base.artifacts_dir}``);
``tests/unit/test_dvc_yaml.py`` checks that the two agree, so a stage and its DVC
declaration cannot drift apart.

DVC metrics are only the small flat files of numbers (``train/metrics.json``,
``evaluate/scores.json``), so ``dvc metrics show`` fits a terminal; the richer JSON reports
(strings, per-class tables, hashes) are plain outputs that people and later stages read.
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
    def validation_report(self) -> Path:  # JSON: counts, per class, expectations
        return self.root / "validate" / "report.json"

    @property
    def validation_summary(self) -> Path:  # Markdown for people
        return self.root / "validate" / "summary.md"

    # split
    def split_file(self, split: str) -> Path:  # train / val / test CSV: path,label,sha256
        return self.root / "split" / f"{split}.csv"

    @property
    def split_counts(self) -> Path:  # JSON: per split per class, deviation from target
        return self.root / "split" / "counts.json"

    # train
    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def checkpoint_best(self) -> Path:
        return self.root / "train" / "best.pt"

    @property
    def train_metrics(self) -> Path:  # JSON, DVC metrics: flat numbers (validation split)
        return self.root / "train" / "metrics.json"

    @property
    def train_history(self) -> Path:  # CSV one row per epoch, DVC plots (learning curves)
        return self.root / "train" / "history.csv"

    @property
    def train_run(self) -> Path:  # JSON: mlflow run id + tracking uri, read by later stages
        return self.root / "train" / "run.json"

    @property
    def train_plots(self) -> Path:  # PNG learning curves, DVC image plot
        return self.root / "train" / "curves.png"

    # evaluate
    @property
    def evaluate_dir(self) -> Path:
        return self.root / "evaluate"

    @property
    def evaluate_metrics(self) -> Path:  # JSON: every test metric, per_class (read by register)
        return self.root / "evaluate" / "metrics.json"

    @property
    def evaluate_scores(self) -> Path:  # JSON, DVC metrics: the headline test numbers, flat
        return self.root / "evaluate" / "scores.json"

    @property
    def evaluate_predictions(self) -> Path:  # CSV one row per test image, DVC confusion plot
        return self.root / "evaluate" / "predictions.csv"

    @property
    def evaluate_per_class(self) -> Path:  # CSV one row per class
        return self.root / "evaluate" / "per_class.csv"

    @property
    def evaluate_label_issues(self) -> Path:  # CSV misclassified test images, worst first
        return self.root / "evaluate" / "label_issues.csv"

    @property
    def evaluate_plots(self) -> Path:  # PNG folder, DVC image plots
        return self.root / "evaluate" / "plots"

    # export
    @property
    def onnx_model(self) -> Path:
        return self.root / "export" / "model.onnx"

    @property
    def export_report(self) -> Path:  # JSON: parity, opset, int8 figures, lineage
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
