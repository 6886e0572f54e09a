"""Training data: split CSVs -> a uint8 image cache -> augmented / eval tensors.

Decoding a JPEG costs far more than augmenting a decoded image (measured here: 14.0 ms/img from
JPEG vs 5.7 ms from a uint8 cache), so each image is decoded once — EXIF-upright, RGB, short side
resized to ``model.resize`` with :func:`visionops.images.resize_short_side` — and stored whole
(not centre-cropped: random crops must see the top and bottom of tall photos) as ``.npy`` under
``<cache_dir>/images/r<resize>-<interpolation>/<sha[:2]>/<sha256>.npy``. The key is the content
hash from the split CSV, so the cache is shared by runs, params and copies of the same image.

The eval transform is a centre crop of the cached array followed by the normalisation of
:func:`visionops.images.normalize`: the same pixels as :func:`visionops.images.preprocess`, the
transform ONNX inference uses. Datasets yield uint8 tensors (4x less to move between processes
and devices); batches are normalised on the device, or inside the exported frozen-layer graph.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision.transforms import v2

from visionops.config import AugmentParams, Config
from visionops.errors import DataError
from visionops.images import PreprocessSpec, normalize, open_image, resize_short_side
from visionops.io import write_with
from visionops.paths import stage_paths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitData:
    """One split: absolute file paths, content hashes, integer labels (index into class_names)."""

    name: str
    paths: list[Path]
    sha256: list[str]
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.paths)


def read_splits(config: Config) -> tuple[list[str], SplitData, SplitData]:
    """``(class_names, train, val)`` from the split stage's CSVs; DataError names what is wrong."""
    paths = stage_paths(config)
    frames = {}
    for split in ("train", "val"):
        csv = paths.split_file(split)
        if not csv.exists():
            raise DataError(f"{csv}: missing; run `visionops split` (or dvc repro split) first")
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        missing = {"path", "label", "sha256"} - set(df.columns)
        if missing:
            raise DataError(
                f"{csv}: missing column(s) {sorted(missing)}; expected path,label,sha256"
            )
        frames[split] = df
    class_names = sorted(frames["train"]["label"].unique())
    if len(class_names) < 2:
        raise DataError(
            f"{paths.split_file('train')}: needs at least 2 classes, found {class_names}"
        )
    if frames["val"].empty:
        raise DataError(f"{paths.split_file('val')}: no validation images; raise split.val")
    unknown = sorted(set(frames["val"]["label"]) - set(class_names))
    if unknown:
        raise DataError(
            f"{paths.split_file('val')}: label(s) {unknown} have no training image; add images "
            "of those classes or remove them"
        )
    index = {name: i for i, name in enumerate(class_names)}

    def build(split: str) -> SplitData:
        df = frames[split]
        return SplitData(
            split,
            [config.data_dir / p for p in df["path"]],
            list(df["sha256"]),
            np.asarray([index[label] for label in df["label"]], dtype=np.int64),
        )

    return class_names, build("train"), build("val")


# --------------------------------------------------------------------------- uint8 cache


class ImageCache:
    """Decoded images (uint8 HWC, short side ``resize``) on disk, keyed by sha256."""

    def __init__(self, root: Path, resize: int, interpolation: str = "bilinear") -> None:
        self.root = Path(root) / "images" / f"r{resize}-{interpolation}"
        self.resize = resize
        self.interpolation = interpolation

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.npy"

    def load(self, sha256: str) -> np.ndarray:
        return np.load(self.path_for(sha256))

    def fill(self, paths: Sequence[Path], shas: Sequence[str], workers: int = 0) -> int:
        """Decode every image not cached yet (in ``workers`` processes; 0 = one per core).

        Returns how many were decoded. A file that no longer decodes raises DataError naming it.
        """
        # one job per distinct hash: copies of an image are decoded once
        todo = {
            s: str(p) for p, s in zip(paths, shas, strict=True) if not self.path_for(s).exists()
        }
        if not todo:
            return 0
        started = time.perf_counter()
        workers = workers or os.cpu_count() or 1
        jobs = [
            (p, str(self.path_for(s)), self.resize, self.interpolation) for s, p in todo.items()
        ]
        if workers == 1 or len(jobs) < 32:
            for job in jobs:
                _decode_one(job)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                list(pool.map(_decode_one, jobs, chunksize=16))
        log.info(
            "image cache: decoded %d image(s) in %.1f s into %s",
            len(jobs),
            time.perf_counter() - started,
            self.root,
        )
        return len(jobs)


def _decode_one(job: tuple[str, str, int, str]) -> None:
    source, target, resize, interpolation = job
    try:
        img = resize_short_side(open_image(source), resize, interpolation)
    except Exception as exc:
        raise DataError(
            f"{source}: cannot be decoded any more ({exc}); rerun `visionops validate`"
        ) from None
    array = np.asarray(img, dtype=np.uint8)
    write_with(Path(target), lambda tmp: np.save(tmp, array))  # tmp ends in .npy


# --------------------------------------------------------------------------- transforms


def eval_array(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Centre crop + normalise a cached image: identical to ``images.preprocess`` on the file."""
    return normalize(center_crop_array(image, spec.image_size), spec)


def train_transform(spec: PreprocessSpec, augment: AugmentParams) -> v2.Compose:
    """uint8 CHW tensor -> augmented uint8 CHW tensor (``image_size`` square; torch's RNG)."""
    steps: list[torch.nn.Module] = [
        v2.RandomResizedCrop(spec.image_size, scale=tuple(augment.crop_scale), antialias=True),
    ]
    if augment.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if augment.color_jitter > 0:
        j = augment.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4)))
    if augment.randaugment:
        steps.append(v2.RandAugment())
    return v2.Compose(steps)


def normalize_batch(x: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 normalised with the spec, the same arithmetic as
    :func:`visionops.images.normalize` (scale to [0, 1], subtract mean, divide by std)."""
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def center_crop_array(image: np.ndarray, size: int) -> np.ndarray:
    """HWC centre crop with :func:`visionops.images.center_crop`'s rounding."""
    h, w = image.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[top : top + size, left : left + size]


class ImageDataset(torch.utils.data.Dataset):
    """Items ``(uint8 CHW tensor, label)`` read from the cache; normalise batches with
    :func:`normalize_batch` (on the device, or inside an exported graph).

    ``augment=None`` gives the eval view (centre crop). With ``seeds`` (one int per item) the
    augmentation of item i is drawn from its own seed, so a cached "view" can be recomputed
    exactly.
    """

    def __init__(
        self,
        cache: ImageCache,
        data: SplitData,
        spec: PreprocessSpec,
        augment: AugmentParams | None = None,
        seeds: Sequence[int] | None = None,
    ) -> None:
        self.cache = cache
        self.data = data
        self.spec = spec
        self.transform = train_transform(spec, augment) if augment is not None else None
        self.seeds = seeds

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.cache.load(self.data.sha256[i])
        label = int(self.data.labels[i])
        if self.transform is None:
            crop = center_crop_array(image, self.spec.image_size)
            return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))), label
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.seeds is None:
            return self.transform(tensor), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seeds[i]))
            return self.transform(tensor), label
