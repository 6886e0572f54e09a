"""Image-folder generators for the data tests: small, distinct, real files written with PIL."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(
    path: Path,
    size: tuple[int, int] | None = None,
    mode: str = "RGB",
    fmt: str | None = None,
    seed: int | None = None,
    **save_kwargs,
) -> Path:
    """Write a noisy image and return its path.

    Content is a function of ``seed``, by default of the last three path parts
    (``data/cat/img_0001.png``), so reruns write the same bytes and different names differ.
    ``size`` defaults to a 32–64 px rectangle; ``fmt`` defaults from the suffix.
    """
    if seed is None:
        key = "/".join(path.parts[-3:]).encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    w, h = size or (int(rng.integers(32, 65)), int(rng.integers(32, 65)))
    base = rng.integers(0, 256, size=3)
    noise = rng.integers(-40, 41, size=(h, w, 3))
    rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **save_kwargs)
    return path


def make_dataset(
    root: Path,
    counts: dict[str, int],
    split: str | None = None,
    suffix: str = ".png",
    prefix: str = "img",
) -> list[Path]:
    """``root/[split/]<label>/<prefix>_<i><suffix>`` for each label; returns the files written."""
    written = []
    for label, n in counts.items():
        folder = root / split / label if split else root / label
        for i in range(n):
            written.append(write_image(folder / f"{prefix}_{i:04d}{suffix}"))
    return written


def tree_digest(root: Path) -> str:
    """Hash of names, bytes, symlink targets, modes and mtimes of everything under ``root``."""
    digest = hashlib.sha256()
    if not root.exists():
        return "missing"
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = Path(dirpath, name)
            st = full.lstat()
            digest.update(
                f"{full.relative_to(root).as_posix()}|{st.st_mode}|{st.st_mtime_ns}|".encode()
            )
            if full.is_symlink():
                digest.update(os.readlink(full).encode())
            elif full.is_file():
                digest.update(full.read_bytes())
    return digest.hexdigest()
