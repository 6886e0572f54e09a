"""Toy projects for the train tests: generated images, split CSVs, tiny from-scratch models.

``toy_project(counts=...)`` writes ``data/<class>/*.png`` (classes are separable by colour and a
stripe orientation, with noise), ``artifacts/split/{train,val,test}.csv`` as the split stage
would, and returns a ``Config`` with a small, fast training setup (efficientnet_lite0 with
random weights at 64 px, 1 + 2 epochs, 2 cached views) and the MLflow SQLite store in tmp.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionops.config import Config, build_config

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 30)]


def _image(label: int, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    base = np.array(COLOURS[label % len(COLOURS)], dtype=np.float32)
    arr = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255)
    if label % 2:  # stripes: vertical for odd labels
        arr[:, ::8] *= 0.3
    else:
        arr[::8, :] *= 0.3
    return Image.fromarray(arr.astype(np.uint8))


def write_toy_data(root: Path, counts: dict[str, dict[str, int]], seed: int = 0) -> None:
    """``counts[split][label]`` images per split; writes data/ and artifacts/split/*.csv."""
    rng = np.random.default_rng(seed)
    labels = sorted({label for per in counts.values() for label in per})
    split_dir = root / "artifacts" / "split"
    split_dir.mkdir(parents=True, exist_ok=True)
    for split, per in counts.items():
        rows = ["path,label,sha256"]
        for label, n in per.items():
            folder = root / "data" / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                size = (int(rng.integers(64, 96)), int(rng.integers(64, 110)))
                path = folder / f"{i:03d}.png"
                _image(labels.index(label), rng, size).save(path)
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
                rows.append(f"{split}/{label}/{path.name},{label},{sha}")
        (split_dir / f"{split}.csv").write_text("\n".join(rows) + "\n")


FAST = {
    "model.pretrained": True,
    "model.image_size": 64,
    "model.resize": 72,
    "model.dropout": 0.0,
    "train.batch_size": 16,
    "train.head_epochs": 1,
    "train.finetune_epochs": 2,
    "train.finetune_blocks": 4,
    "train.head_lr": 0.01,
    "train.finetune_lr": 0.003,
    "train.warmup_epochs": 0.0,
    "train.feature_views": 2,
    "train.early_stopping_patience": 0,
}


@pytest.fixture
def toy_project(tmp_path: Path) -> Callable[..., Config]:
    def build(counts: dict[str, dict[str, int]] | None = None, **overrides) -> Config:
        counts = counts or {
            "train": {"a": 24, "b": 24, "c": 24},
            "val": {"a": 8, "b": 8, "c": 8},
            "test": {"a": 2, "b": 2, "c": 2},
        }
        if not (tmp_path / "artifacts" / "split" / "train.csv").exists():
            write_toy_data(tmp_path, counts)
        raw: dict = {
            "base": {
                "workers": 1,
                "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
                "mlflow_artifacts_dir": str(tmp_path / "mlruns" / "artifacts"),
            }
        }
        for dotted, value in {**FAST, **overrides}.items():
            *sections, key = dotted.split(".")
            node = raw
            for section in sections:
                node = node.setdefault(section, {})
            node[key] = value
        return build_config(raw, root=tmp_path)

    return build
