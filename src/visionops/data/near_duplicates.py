"""Near-duplicate groups: the same photo saved as JPEG and PNG, re-encoded or resized.

Two usable images are linked when their 256-bit perceptual hashes
(:mod:`visionops.data.signals`) differ in at most :data:`MAX_DISTANCE` bits; a group is a
connected component of those links. Copies measured here stay within 18 bits, distinct photos of
``clothing-small`` start at 34, so the threshold sits between the two (see ``docs/CURATE.md``).

What the pipeline does with a group:

* **split**: the group's key (``dup_group``, the smallest sha256 among its members) replaces the
  image's own hash in the split rule, so a group lands in one split: no near-duplicate
  straddles train and test.
* **pre-split folders**: a member in a lower split folder than another member (test, then val,
  then train win, as for exact duplicates) is skipped with a warning, so the test folder stays
  unseen.
* **labels**: a group whose members carry different labels is a *conflict*, reported (not an
  error: the review page shows them side by side for a person to decide).

Cost: all pairs are compared in blocks (XOR + popcount over four 64-bit words), about 0.1 s for
3,400 images; quadratic, so about 1 minute at 100,000.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from visionops.data.signals import HASH_HEX, hash_words

MAX_DISTANCE = 26  # bits of 256: copies measured <= 18, distinct photos >= 34
_BLOCK = 512  # rows compared at once (memory: _BLOCK x N x 4 words)


def near_pairs(hashes: list[str], max_distance: int = MAX_DISTANCE) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every i < j whose hashes differ in at most ``max_distance`` bits."""
    if len(hashes) < 2:
        return []
    words = hash_words(hashes)
    pairs = []
    for start in range(0, len(words), _BLOCK):
        block = words[start : start + _BLOCK]
        dist = np.bitwise_count(block[:, None, :] ^ words[None, :, :]).sum(axis=2)
        rows, cols = np.nonzero(dist <= max_distance)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if i < c:
                pairs.append((i, c, int(dist[r, c])))
    return pairs


def _components(n: int, pairs: list[tuple[int, int, int]]) -> list[int]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in pairs:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(n)]


def group_near_duplicates(df: pd.DataFrame, max_distance: int = MAX_DISTANCE) -> pd.Series:
    """``dup_group`` per row of ``df``: the smallest sha256 of the row's group, "" for a
    singleton or an unusable row. A key that depends on content only: renaming or moving files
    never changes it; adding a new near-copy may (the group then moves together)."""
    groups = pd.Series("", index=df.index, dtype=object)
    ok = df["usable"].astype(bool) & (df["phash"].fillna("").str.len() == HASH_HEX)
    rows = df[ok]
    pairs = near_pairs(rows["phash"].tolist(), max_distance)
    if not pairs:
        return groups
    roots = pd.Series(_components(len(rows), pairs), index=rows.index)
    sizes = roots.map(roots.value_counts())
    keys = rows["sha256"].groupby(roots).transform("min")
    groups[rows.index] = keys.where(sizes > 1, "")
    return groups


def describe_groups(df: pd.DataFrame) -> list[dict]:
    """One dict per group (largest first): key, paths, labels, conflict (labels differ)."""
    grouped = df[df["dup_group"].fillna("") != ""]
    out = []
    for key, g in grouped.groupby("dup_group", sort=False):
        g = g.sort_values("path")
        labels = sorted(set(g["label"]))
        out.append(
            {
                "group": key[:12],
                "key": key,
                "paths": g["path"].tolist(),
                "path_labels": g["label"].tolist(),
                "labels": labels,
                "conflict": len(labels) > 1,
            }
        )
    out.sort(key=lambda d: (not d["conflict"], -len(d["paths"]), d["paths"][0]))
    return out


_SPLIT_RANK = {"test": 0, "val": 1, "train": 2}


def drop_straddlers(df: pd.DataFrame) -> pd.DataFrame:
    """Pre-split layout: within each group keep the members of the highest split folder (test,
    then val, then train); mark the others unusable so no near-copy of a test image is trained
    on. A flat layout has no folder splits and is returned unchanged."""
    hints = df["split_hint"].fillna("")
    in_group = (df["dup_group"].fillna("") != "") & df["usable"] & (hints != "")
    rows = df[in_group]
    if rows.empty:
        return df
    rank = rows["split_hint"].map(_SPLIT_RANK)
    best = rank.groupby(rows["dup_group"]).transform("min")
    losers = rows.index[rank > best]
    if not len(losers):
        return df
    df = df.copy()
    keeper = (
        rows.assign(_rank=rank).sort_values(["_rank", "path"]).groupby("dup_group")["path"].first()
    )
    for i in losers:
        kept = keeper[df.at[i, "dup_group"]]
        df.at[i, "usable"] = False
        df.at[i, "problem"] = (
            f"near-duplicate: of {kept} in another split folder; skipped so the "
            "held-out images stay unseen"
        )
        df.at[i, "dup_group"] = ""
    return df
