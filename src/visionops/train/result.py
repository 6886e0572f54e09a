"""Plain records of a training run: the phases, the resumable trainer state, the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionops.stats import wilson_interval


@dataclass(frozen=True)
class Phase:
    name: str  # head | finetune
    epochs: int
    lr: float
    first_unit: int  # first trainable backbone unit; len(body) = head only
    early_stop: bool = False  # only the last phase stops early (fine-tuning starts from the head)


@dataclass
class TrainerState:
    """Saved in ``last.pt`` under ``trainer``: where to pick up after a crash."""

    phase_index: int = 0
    phase_epoch: int = 0  # epochs completed in the current phase
    phase_done: bool = False  # early-stopped
    epoch: int = 0  # epochs completed overall
    best_score: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs of this phase without beating the phase's best score
    phase_best: float = -1.0
    # Val loss of the best epochs: it breaks ties on the score (train/selection.py). A state
    # saved before issue 14 lacks them and starts from inf: its next tie replaces the best.
    best_loss: float = float("inf")
    phase_best_loss: float = float("inf")
    history: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None


@dataclass
class TrainResult:
    class_names: list[str]
    best_epoch: int
    epochs: int
    selection_metric: str
    val_accuracy: float
    val_macro_f1: float
    val_loss: float
    seconds: float
    run_id: str | None
    resumed_from: int | None
    imbalance: str
    device: str
    checkpoint: Path
    # train/calibrate.py calibration_record (temperature, val NLL before/after); None when off.
    # Not in metrics(): the DVC metrics stay flat and few (MLflow gets them, tracking.py).
    calibration: dict[str, Any] | None = None
    val_images: int = 0

    def metrics(self) -> dict[str, float | int]:
        """The DVC metrics file (numbers only)."""
        return {
            "val_accuracy": round(self.val_accuracy, 6),
            "val_macro_f1": round(self.val_macro_f1, 6),
            "val_loss": round(self.val_loss, 6),
            "best_epoch": self.best_epoch,
            "epochs": self.epochs,
            "seconds": round(self.seconds, 1),
        }

    def summary(self) -> str:
        resumed = f", resumed after epoch {self.resumed_from}" if self.resumed_from else ""
        return "\n".join(
            [
                f"train: best epoch {self.best_epoch}/{self.epochs}: val accuracy "
                f"{self.val_accuracy:.4f}{self._interval()}, macro-F1 {self.val_macro_f1:.4f} "
                f"(selected on {self.selection_metric}; {self.imbalance})",
                f"  {self.seconds:.0f} s on {self.device}{resumed}",
                *self._calibration_line(),
                f"  checkpoint: {self.checkpoint}",
                f"  MLflow run: {self.run_id}",
            ]
        )

    def _interval(self) -> str:
        """`` [low, high] on n images``: the Wilson 95% interval of the val accuracy."""
        if not self.val_images:
            return ""
        right = round(self.val_accuracy * self.val_images)
        low, high = wilson_interval(right, self.val_images)
        return f" [{low:.3f}, {high:.3f}] (95%, {self.val_images} images)"

    def _calibration_line(self) -> list[str]:
        c = self.calibration
        if not c:
            return []
        return [
            f"  calibration: temperature {c['temperature']:.3f} (val NLL "
            f"{c['val_nll_before']:.4f} -> {c['val_nll_after']:.4f})"
        ]


@dataclass
class OverfitResult:
    steps: int
    accuracy: float
    loss: float
    images: int
    seconds: float

    def summary(self) -> str:
        verdict = "the setup learns" if self.accuracy >= 0.999 else "NOT memorised: check the setup"
        return (
            f"overfit-batch: {self.images} images, train accuracy {self.accuracy:.3f}, loss "
            f"{self.loss:.4f} after {self.steps} steps ({self.seconds:.0f} s): {verdict}"
        )
