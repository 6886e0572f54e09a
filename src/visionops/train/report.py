"""What a training run leaves behind: history CSV, metrics JSON, curves PNG, run.json, MLflow.

Only rank 0 calls these. File names come from :mod:`visionops.paths` (and match ``dvc.yaml``).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from visionops.io import write_text, write_with

log = logging.getLogger(__name__)

HISTORY_COLUMNS = [
    "epoch",
    "phase",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_macro_f1",
    "lr",
    "images_per_s",
    "seconds",
]


def write_history(path: Path, history: list[dict[str, Any]]) -> Path:
    """One row per epoch (DVC plots read epoch, train/val loss and accuracy, val_macro_f1)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row.get(k)) for k in HISTORY_COLUMNS})
    return write_text(path, buffer.getvalue())


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def curves_png(path: Path, history: list[dict[str, Any]], best_epoch: int, metric: str) -> Path:
    """Loss (left) and accuracy / macro-F1 (right) per epoch; the head/fine-tune boundary and
    the selected epoch are marked."""
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    left.plot(epochs, [r["val_loss"] for r in history], "o-", label="val loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    right.plot(epochs, [r["train_acc"] for r in history], "o-", label="train accuracy")
    right.plot(epochs, [r["val_acc"] for r in history], "o-", label="val accuracy")
    right.plot(epochs, [r["val_macro_f1"] for r in history], "o-", label="val macro-F1")
    right.set_xlabel("epoch")
    right.set_ylabel("score")
    for ax in (left, right):
        switch = [r["epoch"] for r in history if r["phase"] == "finetune"]
        if switch and switch[0] > epochs[0]:
            ax.axvline(switch[0] - 0.5, color="grey", ls=":", label="fine-tuning starts")
        ax.axvline(best_epoch, color="green", ls="--", alpha=0.6, label=f"best ({metric})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("learning curves")
    return write_with(
        path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    )


def log_epoch(row: dict[str, Any]) -> None:
    import mlflow

    step = int(row["epoch"])
    mlflow.log_metrics(
        {k: float(row[k]) for k in HISTORY_COLUMNS if k not in ("epoch", "phase", "seconds")},
        step=step,
    )
