"""Checkpoints: atomic save, resume state, and ``load_model`` for the later stages.

A checkpoint is a ``torch.save`` dict of tensors and plain Python values only, so it loads with
``weights_only=True`` (no pickled code runs on load). Keys:

- always: ``model_state``, ``backbone``, ``class_names``, ``model_params`` (the ``model:`` section),
  ``preprocess`` (``PreprocessSpec.to_dict()``), ``epoch`` (1-based, epochs completed), ``metrics``;
- ``last`` only (resume): ``optimizer_state``, ``scheduler_state``, ``rng`` (python, numpy, torch,
  cuda), ``trainer`` (phase, best score and val loss, patience, history, MLflow run id), ``key``
  (the hash of params + data this run belongs to; a ``last`` with another key is never resumed);
- the running ``best`` (resume folder) only: ``val_logits`` (N, C) of its epoch;
- the published ``artifacts/train/best.pt`` with ``train.calibrate``: ``calibration``
  (``temperature`` fitted on those logits, val NLL before/after; :mod:`visionops.train.calibrate`).
  ``load_model`` returns the raw network; export and evaluate apply the temperature.

Writes go to a temporary file beside the target and are renamed over it (``visionops.io``), so a
crash or a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionops.errors import VisionOpsError
from visionops.io import write_with


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` (parents created)."""
    return write_with(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint on the CPU; VisionOpsError if missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise VisionOpsError(f"{path}: no checkpoint there; run `visionops train` first")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...
        raise VisionOpsError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc}); delete it and "
            "train again"
        ) from None


def load_model(path: Path | str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the trained classifier from a checkpoint: ``(model in eval mode, checkpoint)``.

    No pretrained weights are fetched: the architecture is built empty and filled from
    ``model_state``. The model takes (N, 3, H, W) float32 normalised as ``checkpoint["preprocess"]``
    says and returns logits (N, len(checkpoint["class_names"])).
    """
    from visionops.train.models import create_model

    ckpt = load_checkpoint(path)
    params = ckpt.get("model_params", {})
    model = create_model(
        ckpt["backbone"],
        num_classes=len(ckpt["class_names"]),
        pretrained=False,
        dense_units=int(params.get("dense_units", 0)),
        dropout=float(params.get("dropout", 0.0)),
        image_size=int(ckpt.get("preprocess", {}).get("image_size", params.get("image_size", 224))),
    )
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    return model, ckpt


def rng_state() -> dict[str, Any]:
    """Every RNG the trainer draws from, in plain types (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    """random.setstate wants nested tuples back (a round trip may give lists)."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value
