"""PNG plots a person can open anywhere; ``dvc plots show`` shows them too (image plots in
``dvc.yaml``), next to the Vega charts it draws from ``history.csv`` and ``predictions.csv``.

Built on ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot): no global backend switch,
no GUI, safe in worker threads. Every file is written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from visionops.io import write_with


def _save(fig: Figure, path: Path, dpi: int = 110) -> Path:
    return write_with(
        path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    )


def confusion_matrix_png(
    cm: np.ndarray, class_names: Sequence[str], path: Path, normalize: bool = False
) -> Path:
    """Rows = true class, columns = predicted; ``normalize`` divides each row by its support."""
    n = len(class_names)
    values = cm.astype(np.float64)
    if normalize:
        values = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.55 * n + 2)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(values.max(), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else " (counts)"))
    if n <= 30:
        threshold = values.max() / 2 if values.max() else 0.5
        for i in range(n):
            for j in range(n):
                text = f"{values[i, j]:.2f}" if normalize else str(int(values[i, j]))
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if values[i, j] > threshold else "black",
                )
    return _save(fig, path)


#: One reliability panel's data: (mean confidence, accuracy, count) per bin and the ECE, as
#: :func:`visionops.evaluate.metrics.calibration_bins` returns them.
Bins = tuple[np.ndarray, np.ndarray, np.ndarray, float]


def reliability_png(
    mean_conf: np.ndarray,
    mean_acc: np.ndarray,
    counts: np.ndarray,
    ece: float,
    path: Path,
    note: str = "",
    before: Bins | None = None,
) -> Path:
    """Reliability diagram: accuracy vs confidence per bin, with the bin counts underneath;
    ``note`` goes into the title. With ``before`` (the bins of the uncalibrated probabilities)
    the same file shows two panels, before temperature scaling on the left, served on the right,
    so the plots folder (and ``dvc plots``) keeps one reliability image either way."""
    panels = [(mean_conf, mean_acc, counts, ece, note)]
    if before is not None:
        panels.insert(0, (*before, "before temperature scaling"))
    fig = Figure(figsize=(5 * len(panels), 6))
    axes = fig.subplots(
        2, len(panels), sharex=True, squeeze=False, gridspec_kw={"height_ratios": [3, 1]}
    )
    for column, (conf, acc, count, score, title) in enumerate(panels):
        _reliability_panel(axes[0, column], axes[1, column], conf, acc, count, score, title)
    return _save(fig, path)


def _reliability_panel(ax, ax2, mean_conf, mean_acc, counts, ece: float, note: str) -> None:
    n_bins = len(counts)
    centers = (np.arange(n_bins) + 0.5) / n_bins
    filled = counts > 0
    ax.bar(
        centers[filled],
        mean_acc[filled],
        width=1 / n_bins,
        edgecolor="black",
        alpha=0.8,
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.scatter(
        mean_conf[filled],
        mean_acc[filled],
        color="red",
        s=12,
        zorder=3,
        label="bin (confidence, accuracy)",
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability ({note + ', ' if note else ''}ECE = {ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    ax2.bar(centers, counts, width=1 / n_bins, edgecolor="black", color="grey")
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("confidence of the top-1 prediction")
    ax2.set_ylabel("images")


def curve_png(
    x: np.ndarray, y: np.ndarray, path: Path, *, kind: str, score: float, positive: str
) -> Path:
    """ROC (``kind="roc"``: FPR vs TPR) or precision-recall (``kind="pr"``) for a binary task."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    if kind == "roc":
        ax.plot(x, y, label=f"AUC = {score:.3f}")
        ax.plot([0, 1], [0, 1], "--", color="grey")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.set_title(f"ROC (positive: {positive})")
    else:
        ax.step(x, y, where="post", label=f"AP = {score:.3f}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"precision-recall (positive: {positive})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    return _save(fig, path)


@dataclass(frozen=True)
class GalleryItem:
    image: Image.Image  # RGB, any size (shown as a thumbnail)
    true_label: str
    pred_label: str
    pred_prob: float
    true_prob: float
    name: str = ""  # file name, so the image can be found and fixed


def gallery_png(items: Sequence[GalleryItem], path: Path, title: str, cols: int = 4) -> Path:
    """A grid of thumbnails captioned ``true / predicted (probability)``."""
    cols = max(1, min(cols, len(items))) if items else 1
    rows = max(1, -(-len(items) // cols))
    fig = Figure(figsize=(3 * cols, 3.5 * rows))
    fig.suptitle(title)
    for k in range(rows * cols):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.axis("off")
        if k >= len(items):
            if not items and k == 0:
                ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
            continue
        item = items[k]
        thumb = item.image.copy()
        thumb.thumbnail((256, 256))
        ax.imshow(np.asarray(thumb))
        name = item.name if len(item.name) <= 28 else "..." + item.name[-25:]
        ax.set_title(
            f"{name}\ntrue: {item.true_label} ({item.true_prob:.2f})\n"
            f"pred: {item.pred_label} ({item.pred_prob:.2f})",
            fontsize=9,
            color="darkred",
        )
    return _save(fig, path, dpi=90)
