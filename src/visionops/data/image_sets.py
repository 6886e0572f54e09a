"""Which images a model has seen, and the test images that neither of two models has seen.

A model "has seen" the images it was trained and selected on: the rows of ``split/train.csv``
and ``split/val.csv``. They are recorded by *content* (the sha256 column the validate stage
writes), so a renamed or moved file is still the same image. ``register`` stores the set as
``seen_images.txt`` (one sha256 per line, sorted) inside the registered model's artifacts and a
short digest as the version tag ``seen_images.sha``; the champion/challenger comparison then
runs only on current test images whose hash is in neither model's set. Without this, a changed
``base.seed`` or split ratio puts the champion's training images into the new test split and
the champion wins on images it memorised.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from visionops.errors import DataError

SEEN_FILE = "seen_images.txt"


@dataclass(frozen=True)
class SplitRow:
    path: Path
    label: str
    sha256: str


def read_split(split_csv: Path, data_dir: Path) -> list[SplitRow]:
    """Rows of a split CSV (``path,label,sha256``) with the image path resolved."""
    if not split_csv.exists():
        raise DataError(f"{split_csv}: missing; run `visionops split` (or `dvc repro split`)")
    with split_csv.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"path", "label", "sha256"} <= set(rows[0]):
        raise DataError(
            f"{split_csv}: needs columns path,label,sha256 (got {', '.join(rows[0])}); "
            "rerun `visionops validate` and `visionops split`"
        )
    return [SplitRow(data_dir / r["path"], r["label"], r["sha256"]) for r in rows]


def seen_by_training(train_csv: Path, val_csv: Path, data_dir: Path) -> frozenset[str]:
    """Content hashes of the images a model trains (train) and is selected (val) on."""
    return frozenset(
        r.sha256 for csv_path in (train_csv, val_csv) for r in read_split(csv_path, data_dir)
    )


def digest(hashes: Iterable[str]) -> str:
    """16 hex chars naming a set of image hashes (order and duplicates do not matter)."""
    blob = "\n".join(sorted(set(hashes))).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_hashes(path: Path, hashes: Iterable[str]) -> Path:
    path.write_text("".join(f"{h}\n" for h in sorted(set(hashes))), encoding="utf-8")
    return path


def read_hashes(path: Path) -> frozenset[str] | None:
    """The set stored by :func:`write_hashes`, or None when the file is absent."""
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").split()
    return frozenset(line for line in lines if line)


def unseen(rows: list[SplitRow], *seen: frozenset[str]) -> list[SplitRow]:
    """The rows whose image is in none of the ``seen`` sets."""
    taken = frozenset().union(*seen)
    return [r for r in rows if r.sha256 not in taken]
