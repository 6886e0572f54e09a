"""What ``validate`` warns about but keeps: junk-looking images and class folders that collide.

**Junk** (blank frames, "image not found" graphics, other placeholders): an image whose most
common colour covers at least :data:`FLAT_SHARE` of it, or whose gray levels barely vary
(std below :data:`MIN_CONTRAST`), measured on the 64 x 64 copy the scan makes
(:func:`visionops.data.signals.flatness`). On ``clothing-small`` (3,409 photos) no photo reaches
either bound (largest one-colour share 0.62, smallest gray std 7.4); a generated blank frame
(gray std 0) and an "image not found" graphic (95 % one colour) do
(``tests/data/test_near_duplicates.py``). A screenshot full of text does not (52 %, std 63).
They stay usable (a product shot on a white sheet can be legitimately flat): they are listed in
the report and head the review queue's outliers; a person excludes them in ``visionops review``.
Busier junk (a screenshot full of colour) is left to the outlier ranking, which compares images
with the trained model's embeddings (:mod:`visionops.curate.issues`).

**Class names** that differ only in case or spacing (``Cats/`` and ``cats/``, ``dog /`` and
``dog``; ``_`` and ``-`` count as spaces: ``T-Shirt`` and ``t_shirt``) silently become two
classes; the warning names both folders.
"""

from __future__ import annotations

import re
from collections import defaultdict

import pandas as pd

FLAT_SHARE = 0.85  # share of pixels in one colour (4 bits per channel)
MIN_CONTRAST = 4.0  # gray-level std, 0-255


def junk_reasons(df: pd.DataFrame) -> pd.Series:
    """Per row: why it looks like junk ("" when it does not or is unusable)."""
    flat = pd.to_numeric(df.get("flat"), errors="coerce")
    contrast = pd.to_numeric(df.get("contrast"), errors="coerce")
    usable = df["usable"].astype(bool)
    reasons = pd.Series("", index=df.index, dtype=object)
    blank = usable & (contrast < MIN_CONTRAST)
    one_colour = usable & (flat >= FLAT_SHARE) & ~blank
    reasons[blank] = "near-blank: gray std " + contrast[blank].round(1).astype(str)
    reasons[one_colour] = (
        "mostly one colour: " + (flat[one_colour] * 100).round().astype(int).astype(str) + " %"
    )
    return reasons


def _name_key(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name).strip().casefold()


def colliding_class_names(classes: list[str]) -> list[list[str]]:
    """Groups of class folder names equal up to case and spacing (each group sorted)."""
    by_key: dict[str, list[str]] = defaultdict(list)
    for name in classes:
        by_key[_name_key(name)].append(name)
    return sorted(sorted(names) for names in by_key.values() if len(names) > 1)
