"""The trained model's view of every image: pooled embeddings and logits, cached.

Runs the checkpoint (``artifacts/train/best.pt``) in eval mode through the shared preprocessing
(:func:`visionops.images.preprocess_batches`); ``embedding`` is the backbone's pooled output, the
head's input. Results are cached in ``artifacts/curate/embeddings.npz`` under a key hashing the
checkpoint's bytes and the images' content hashes, so reopening ``visionops review`` after a
training run recomputes them once and otherwise not at all.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionops.errors import DataError
from visionops.images import preprocess_batches
from visionops.io import write_with

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embeddings:
    features: np.ndarray  # (N, F) float32
    logits: np.ndarray  # (N, C) float32, columns = class_names
    class_names: list[str]
    seconds: float
    cached: bool


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embed_images(
    checkpoint: Path, files: list[Path], hashes: list[str], cache: Path, batch_size: int = 32
) -> Embeddings:
    """Embeddings and logits of ``files`` (same order); DataError names an unreadable file."""
    from visionops.evaluate.stage import load_checkpoint

    started = time.perf_counter()
    key = hashlib.sha256((_file_hash(checkpoint) + "\n" + "\n".join(hashes)).encode()).hexdigest()
    if cache.exists():
        with np.load(cache, allow_pickle=False) as saved:
            if str(saved["key"]) == key:
                return Embeddings(
                    saved["features"],
                    saved["logits"],
                    [str(n) for n in saved["class_names"]],
                    time.perf_counter() - started,
                    True,
                )
    import torch

    model, _, names, spec = load_checkpoint(checkpoint)
    feats, logits = [], []
    done = 0
    with torch.inference_mode():
        for _, batch, errors in preprocess_batches(files, spec, batch_size, workers=2):
            if errors:
                i, why = next(iter(errors.items()))
                raise DataError(
                    f"{files[i]}: {why}; data/ changed since validate: rerun `dvc repro`"
                )
            pooled = model.pooled(torch.from_numpy(batch))
            feats.append(pooled.float().numpy())
            logits.append(model.head(pooled).float().numpy())
            done += len(batch)
            log.debug("embedded %d/%d images", done, len(files))
    result = Embeddings(
        np.concatenate(feats),
        np.concatenate(logits),
        list(names),
        time.perf_counter() - started,
        False,
    )

    def save(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.savez(
                fh,
                key=key,
                features=result.features,
                logits=result.logits,
                class_names=np.array(result.class_names),
            )

    write_with(cache, save)
    log.info(
        "embedded %d images in %.1f s (%.0f img/s)",
        len(files),
        result.seconds,
        len(files) / max(result.seconds, 1e-9),
    )
    return result
