"""Score an :class:`~visionops.export.onnx_model.OnnxClassifier` on labeled images (by name).

Used by ``visionops evaluate-folder`` (any ImageFolder) and by ``register`` (champion vs new
model on the current test split). Torch-free.

Decisions: images whose label the model does not know are left out and counted under
``unknown_labels`` (they cannot be right, and they say nothing about the known classes);
unreadable images are listed under ``unreadable``. Macro averages run over the model's classes
that have at least one labeled image here, so a folder holding a subset of the classes is scored
on that subset.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from visionops.errors import DataError
from visionops.evaluate.metrics import classification_report
from visionops.export.onnx_model import OnnxClassifier
from visionops.images import list_images


def score_labeled(
    predictor: OnnxClassifier,
    files: Sequence[Path],
    labels: Sequence[str],
    progress: bool = False,
    description: str = "scoring",
) -> dict:
    """Accuracy, macro-F1 and the rest of :func:`classification_report` for (file, label) pairs."""
    index = {name: i for i, name in enumerate(predictor.labels)}
    unknown = Counter(lab for lab in labels if lab not in index)
    known = [(f, index[lab]) for f, lab in zip(files, labels, strict=True) if lab in index]
    preds = predictor.iter_predict([f for f, _ in known], top_k=1)
    if progress:
        from tqdm import tqdm

        preds = tqdm(
            preds, total=len(known), desc=description, unit="img", file=sys.stderr, disable=None
        )
    rows, y_true, unreadable = [], [], []
    for (path, y), pred in zip(known, preds, strict=True):
        if pred.error:
            unreadable.append({"path": str(path), "error": pred.error})
        else:
            rows.append(pred.probabilities)
            y_true.append(y)
    probs = np.stack(rows) if rows else np.zeros((0, len(predictor.labels)), np.float32)
    report = classification_report(
        np.asarray(y_true, np.int64), probs, list(predictor.labels), present_only=True
    )
    report.update(
        n_files=len(files),
        unknown_labels=dict(sorted(unknown.items())),
        unreadable=unreadable,
        missing_classes=sorted(set(predictor.labels) - set(labels)),
    )
    return report


def image_folder(folder: Path) -> tuple[list[Path], list[str]]:
    """(files, labels) of an ImageFolder: ``folder/<label>/**`` (hidden entries skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; expected <folder>/<label>/<image> (ImageFolder)")
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"{folder}: no class sub-folders; expected <folder>/<label>/<image> (ImageFolder)"
        )
    files, labels = [], []
    for d in class_dirs:
        for f in list_images([d]):
            files.append(f)
            labels.append(d.name)
    if not files:
        raise DataError(f"{folder}: the class folders hold no files")
    return files, labels
