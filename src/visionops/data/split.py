"""Stage ``split``: assign every usable image to train/val/test, hash-stably.

The rule. For an image with content hash ``h`` (sha256 hex) and ``seed``::

    u = int(sha256(f"{seed}:{h}")) / 2**256            # uniform in [0, 1)
    train if u < r_train; val if u < r_train + r_val; else test

so an image's split depends only on its bytes, the seed and the ratios. Adding, removing or
relabelling *other* images never moves it, and copies of the same bytes always land together.

Near-duplicates travel together: for an image in a near-duplicate group (``dup_group`` in the
manifest, :mod:`visionops.data.near_duplicates`) ``h`` is the group's key, the smallest sha256 of
its members, so a JPEG and its PNG or resized copy can never sit in train and test. The price:
adding a near-copy of an existing image can change its group's key and so move that group
(and only it).
Classes are stratified in expectation: the rule is applied per image and the hash is independent
of the label, so each class is split with the same ratios.

The trade-off (measured, not hoped for). Exact per-class quotas ("within ±1 image of target")
and stability under additions cannot both hold: if the split of an image may not change when
*any* set of other images is added, then its split equals the split it gets when it is alone,
i.e. a function of the image only; with random-looking hashes per-class counts are then
binomial, ``|n_split - r * n_class|`` has standard deviation ``sqrt(n r (1 - r))`` (1.6 images
for 20 images at r = 0.15, 3.8 for 100). Any rule that rebalances (rank within class, quotas)
moves images when data arrives, which would leak test images into train. We keep stability
(test-set honesty) and report the per-class deviation from target in ``counts.json`` so it is
visible; ``tests/data/test_split.py`` checks it stays within the binomial bound.

Pre-split layout (``data/train|val|validation|test/<label>/``): a folder's split is honoured;
splits without a folder are carved out of ``train/`` by the same rule over the ratios of
``train`` and the missing splits, renormalised (e.g. with ``train/`` + ``validation/`` only,
test = u >= 0.70 / 0.85 within ``train/``). The validate stage already dropped copies of the same
content in two split folders (test, then val wins), so content never straddles splits.

Outputs: ``artifacts/split/{train,val,test}.csv`` (``path,label,sha256``, sorted by path, path
relative to ``data/``) and ``counts.json`` (per split per class, totals, deviation from target).
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from visionops.config import Config
from visionops.errors import DataError
from visionops.io import write_json, write_with
from visionops.paths import SPLITS, stage_paths

log = logging.getLogger(__name__)

_SPLIT_RANK = {"test": 0, "val": 1, "train": 2}  # which copy survives if validate did not dedupe


@dataclass
class SplitResult:
    """Rows per split and the per-class counts written to ``counts.json``."""

    counts: dict[str, dict[str, int]]
    layout: str
    warnings: list[str] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        totals = ", ".join(f"{s} {sum(self.counts[s].values())}" for s in SPLITS)
        classes = len(self.counts["train"])
        lines = [f"split ({self.layout} layout): {totals} images over {classes} classes"]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines.append(f"  counts: {self.outputs.get('counts')}")
        return "\n".join(lines)


def hash_uniform(sha256: str, seed: int) -> float:
    """The image's position in [0, 1): a function of its content hash and the seed only."""
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return int.from_bytes(digest, "big") / 2**256


def split_of(u: float, ratios: dict[str, float]) -> str:
    """Walk the cumulative ``ratios`` (insertion order) and return the split ``u`` falls in."""
    edge = 0.0
    names = [s for s, r in ratios.items() if r > 0]
    for name in names[:-1]:
        edge += ratios[name]
        if u < edge:
            return name
    return names[-1]


def split_keys(images: pd.DataFrame) -> pd.Series:
    """The hash the split rule uses per row: the near-duplicate group key, else the sha256."""
    if "dup_group" not in images:
        return images["sha256"]
    group = images["dup_group"].fillna("").astype(str)
    return group.where(group != "", images["sha256"])


def assign_splits(images: pd.DataFrame, ratios: dict[str, float], seed: int) -> pd.Series:
    """Split name per row of ``images`` (columns ``sha256``, optional ``split_hint`` and
    ``dup_group``).

    Rows without a hint use ``ratios``. With hints (pre-split), hinted val/test rows keep their
    split and train rows are carved among train and the splits that have no rows at all.
    """
    u = split_keys(images).map(lambda h: hash_uniform(h, seed))
    hints = images["split_hint"] if "split_hint" in images else pd.Series(None, index=images.index)
    hints = hints.where(hints.notna() & (hints != ""), None)
    if hints.isna().all():
        return u.map(lambda x: split_of(x, ratios))
    present = set(hints.dropna())
    pool = {s: r for s, r in ratios.items() if s == "train" or s not in present}
    total = sum(pool.values())
    carve = {s: r / total for s, r in pool.items()}
    carved = u.map(lambda x: split_of(x, carve))
    return hints.where(hints.isin(["val", "test"]), carved)


def _read_manifest(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: manifest not found. Fix: run `visionops validate` first")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"path", "label", "sha256", "usable"} - set(df.columns)
    if missing:
        raise DataError(
            f"{path}: missing column(s) {sorted(missing)}. Fix: re-run `visionops validate`"
        )
    if "split_hint" not in df:
        df["split_hint"] = ""
    return df[df["usable"].str.lower() == "true"].copy()


def _dedupe(images: pd.DataFrame) -> pd.DataFrame:
    """One row per content hash (validate normally did this already; this keeps split honest)."""
    labels = images.groupby("sha256")["label"].nunique()
    clash = labels[labels > 1].index
    if len(clash):
        paths = images.loc[images["sha256"].isin(clash), "path"].sort_values().tolist()
        raise DataError(
            f"same image under two labels: {', '.join(paths[:10])}. "
            f"Fix: re-run `visionops validate` and fix the reported files"
        )
    ranked = images.assign(_rank=images["split_hint"].map(_SPLIT_RANK).fillna(3))
    ranked = ranked.sort_values(["_rank", "path"], kind="stable")
    return ranked.drop_duplicates("sha256").drop(columns="_rank")


def _counts(images: pd.DataFrame, ratios: dict[str, float], layout: str) -> dict:
    classes = sorted(images["label"].unique())
    table = images.groupby(["split", "label"]).size()
    counts: dict = {s: {c: int(table.get((s, c), 0)) for c in classes} for s in SPLITS}
    counts["total"] = {s: sum(counts[s].values()) for s in SPLITS}
    counts["total"]["all"] = int(len(images))
    if layout == "flat":  # target = ratio * class size; meaningless when folders fix the split
        per_class = images.groupby("label").size()
        counts["deviation_from_target"] = {
            s: {c: round(counts[s][c] - ratios[s] * int(per_class[c]), 2) for c in classes}
            for s in SPLITS
        }
    return counts


def run(config: Config) -> SplitResult:
    """Read the validate manifest, assign splits, write the split CSVs and ``counts.json``."""
    paths = stage_paths(config)
    ratios = {"train": config.split.train, "val": config.split.val, "test": config.split.test}
    images = _dedupe(_read_manifest(paths.manifest))
    if images.empty:
        raise DataError(f"{paths.manifest}: no usable images. Fix: see {paths.validation_summary}")
    layout = "presplit" if (images["split_hint"] != "").any() else "flat"
    if layout == "presplit" and not (images["split_hint"] == "train").any():
        raise DataError(
            f"{config.data_dir}/train: no usable images in the train folder. Fix: "
            f"put class folders under {config.data_dir}/train/"
        )
    images["split"] = assign_splits(images, ratios, config.base.seed)

    classes = sorted(images["label"].unique())
    in_train = set(images.loc[images["split"] == "train", "label"])
    lacking = [c for c in classes if c not in in_train]
    if lacking:
        raise DataError(
            f"class(es) with no training image: {', '.join(lacking)}. Fix: add images "
            f"to {config.data_dir}/<class>/ (or to train/<class>/ if data is pre-split)"
        )
    warnings = []
    for split in ("val", "test"):
        have = set(images.loc[images["split"] == split, "label"])
        if missing := [c for c in classes if c not in have]:
            warnings.append(
                f"{split} has no image of class(es) {', '.join(missing)}; "
                f"its metrics will not cover them (add images to those classes)"
            )
    for w in warnings:
        log.warning(w)

    for split in SPLITS:
        rows = images.loc[images["split"] == split, ["path", "label", "sha256"]]
        rows = rows.sort_values("path", kind="stable")
        write_with(paths.split_file(split), lambda tmp, r=rows: r.to_csv(tmp, index=False))
    counts = _counts(images, ratios, layout)
    write_json(paths.split_counts, counts)
    return SplitResult(
        counts={s: counts[s] for s in SPLITS},
        layout=layout,
        warnings=warnings,
        outputs={**{s: paths.split_file(s) for s in SPLITS}, "counts": paths.split_counts},
    )


def split_rows(split_csv: Path, data_dir: Path) -> tuple[list[Path], list[str]]:
    """(files, labels) of a split CSV (``path,label,sha256``, paths relative to ``data_dir``)."""
    if not split_csv.exists():
        raise DataError(f"{split_csv}: missing; run `visionops split` (or `dvc repro split`)")
    with split_csv.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{split_csv}: has no rows; the split left this subset empty")
    if not {"path", "label"} <= set(rows[0]):
        raise DataError(f"{split_csv}: needs columns path,label (got {', '.join(rows[0])})")
    return [data_dir / r["path"] for r in rows], [r["label"] for r in rows]
