"""A throw-away project in a tmp folder: params.yaml, colour images, split CSVs, a checkpoint.

Used by the evaluate/export/register tests so they do not need the validate/split/train stages
to run first. The checkpoint is a real ``visionops.train`` model (EfficientNet-Lite0 with random
weights at 64 px) saved with the keys ``visionops.train.checkpoint.load_model`` reads.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import yaml

from tests.toy_onnx import colour_image
from visionops.config import Config, load_config
from visionops.paths import stage_paths

SMALL = {
    "model": {
        "backbone": "efficientnet_lite0",
        "pretrained": False,
        "image_size": 64,
        "resize": 72,
    },
    "train": {"batch_size": 8},
}


def make_project(
    root: Path,
    per_split: dict[str, int] | None = None,
    classes: tuple[str, ...] = ("blue", "green", "red"),
    params: dict | None = None,
) -> Config:
    """Write params.yaml + data/<label>/*.png + artifacts/split/{train,val,test}.csv."""
    per_split = per_split or {"train": 4, "val": 3, "test": 3}
    raw = {k: dict(v) for k, v in SMALL.items()}
    for section, values in (params or {}).items():
        raw.setdefault(section, {}).update(values)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    cfg = load_config(root / "params.yaml")
    p = stage_paths(cfg)
    seed = 0
    for split, n in per_split.items():
        rows = []
        for label in classes:
            for i in range(n):
                seed += 1
                rel = f"{label}/{split}_{i}.png"
                path = colour_image(cfg.data_dir / rel, label, size=(80, 70), seed=seed)
                rows.append(
                    {
                        "path": rel,
                        "label": label,
                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                    }
                )
        out = p.split_file(split)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "label", "sha256"])
            writer.writeheader()
            writer.writerows(rows)
    return cfg


def make_checkpoint(
    cfg: Config,
    classes: tuple[str, ...] = ("blue", "green", "red"),
    metrics: dict | None = None,
    seed: int = 0,
    fit: bool = True,
) -> Path:
    """A classifier saved as artifacts/train/best.pt (the train stage's format).

    Random Lite0 weights give near-constant logits (pooled features ~1e-9), useless for parity;
    ``fit`` recalibrates BatchNorm on the training images and fits the head on them (~3 s), so
    the model separates the colours and its probabilities are far from uniform.
    """
    import torch

    from visionops.train.checkpoint import save_checkpoint
    from visionops.train.models import create_model, preprocess_spec

    torch.manual_seed(seed)
    m = cfg.model
    model = create_model(
        m.backbone,
        len(classes),
        pretrained=False,
        dense_units=m.dense_units,
        dropout=m.dropout,
        image_size=m.image_size,
    )
    model.eval()
    spec = preprocess_spec(m.backbone, m.image_size, m.resize)
    if fit:
        _fit(model, cfg, spec, classes)
    path = stage_paths(cfg).checkpoint_best
    save_checkpoint(
        path,
        {
            "model_state": model.state_dict(),
            "backbone": m.backbone,
            "class_names": list(classes),
            "model_params": m.model_dump(mode="json"),
            "preprocess": spec.to_dict(),
            "epoch": 1,
            "metrics": metrics or {},
        },
    )
    return path


def _fit(model, cfg: Config, spec, classes: tuple[str, ...]) -> None:
    import torch
    from torch import nn

    from visionops.data.split import split_rows
    from visionops.images import preprocess_batches

    files, labels = split_rows(stage_paths(cfg).split_file("train"), cfg.data_dir)
    _, x, _ = next(preprocess_batches(files, spec, batch_size=len(files)))
    x = torch.from_numpy(x)
    y = torch.tensor([classes.index(lab) for lab in labels])
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average: one pass sets the batch statistics
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    with torch.no_grad():
        features = model.pooled(x)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=0.01)
    for _ in range(40):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model.head(features), y).backward()
        optimizer.step()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
