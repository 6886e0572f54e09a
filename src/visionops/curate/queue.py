"""The review queue: one card per thing a person should decide, most suspicious first.

Three kinds, in this order: **label issue** (cleanlab's candidates, worst first), **outlier**
(images validate found flat, i.e. blank frames and placeholders, then the embedding ranking:
far from every class, most outlying first), **near-duplicate** (a validate group; conflicts,
i.e. groups whose labels differ, first). Without a trained model only validate's findings are
queued. A card holds one image, or all members of a group; a
decision on a card applies to all its images. The same image may sit on two cards (a junk frame
is often both a label issue and an outlier): decisions are per image, so both show it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from visionops.curate.issues import QUEUE_ISSUES, QUEUE_OUTLIERS, IssuesResult
from visionops.errors import DataError


@dataclass
class Card:
    id: str
    kind: str  # "label issue" | "outlier" | "near-duplicate"
    rank: int  # within its kind, 1 = most suspicious
    images: list[dict]  # {sha256, path, label, split}
    predicted: str = ""
    p_predicted: float | None = None
    p_label: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def read_manifest(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(
            f"{path}: no manifest. Fix: run `dvc repro split` (or `visionops validate`)"
        )
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in ("dup_group", "suspect"):
        if col not in df:
            df[col] = ""
    return df


def _image(row) -> dict:
    return {
        "sha256": row.sha256,
        "path": row.path,
        "label": row.label,
        "split": getattr(row, "split", ""),
    }


def build_queue(manifest: pd.DataFrame, issues: IssuesResult | None) -> list[Card]:
    cards: list[Card] = []
    predictions: dict[str, tuple[str, float]] = {}
    if issues is not None:
        for row in issues.outliers.itertuples():
            predictions[row.sha256] = (row.predicted, float(row.p_predicted))
        for row in issues.label_issues.head(QUEUE_ISSUES).itertuples():
            note = "flagged by cleanlab" if row.flagged else f"predicted as {row.predicted}"
            cards.append(
                Card(
                    f"issue-{row.rank}",
                    "label issue",
                    int(row.rank),
                    [_image(row)],
                    row.predicted,
                    float(row.p_predicted),
                    float(row.p_label),
                    note,
                    {"quality": float(row.quality)},
                )
            )
    usable_rows = manifest[manifest["usable"].str.lower() == "true"]
    # Outliers: what validate found flat (blank, placeholder) first, then the embedding ranking.
    outliers = []
    for row in usable_rows[usable_rows["suspect"] != ""].sort_values("path").itertuples():
        guess = predictions.get(row.sha256, ("", None))
        outliers.append(([_image(row)], *guess, None, f"validate: {row.suspect}", {}))
    flat = {img[0]["sha256"] for img, *_ in outliers}
    if issues is not None:
        for row in issues.outliers.head(QUEUE_OUTLIERS).itertuples():
            if row.sha256 in flat:
                continue
            outliers.append(
                (
                    [_image(row)],
                    row.predicted,
                    float(row.p_predicted),
                    float(row.p_label),
                    f"outlier score {row.outlier_score:.3f} (lower = farther from every class)",
                    {"outlier_score": float(row.outlier_score)},
                )
            )
    for rank, (images, predicted, p, p_label, note, extra) in enumerate(outliers, start=1):
        cards.append(
            Card(f"outlier-{rank}", "outlier", rank, images, predicted, p, p_label, note, extra)
        )
    usable = usable_rows[usable_rows["dup_group"] != ""]
    groups = []
    for _, g in usable.groupby("dup_group", sort=False):
        g = g.sort_values("path")
        groups.append((g["label"].nunique() == 1, -len(g), g["path"].iloc[0], g))
    for rank, (same, _, _, g) in enumerate(sorted(groups, key=lambda t: t[:3]), start=1):
        first = g["sha256"].iloc[0]
        predicted, p = predictions.get(first, ("", None))
        labels = sorted(set(g["label"]))
        cards.append(
            Card(
                f"dup-{rank}",
                "near-duplicate",
                rank,
                [_image(r) for r in g.itertuples()],
                predicted,
                p,
                None,
                f"{len(g)} near-identical images"
                + ("" if same else f"; labels differ: {' vs '.join(labels)}"),
            )
        )
    return cards
