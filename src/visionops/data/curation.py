"""``curation.csv``: people's decisions about images, kept apart from ``data/``.

One row per image, keyed by the content hash (so renaming or moving a file keeps its decision)::

    sha256,action,label,path,decided_at
    3f2a...,relabel,cat,dog/IMG_0042.jpg,2025-01-31T10:02:11Z
    9b1c...,exclude,,cat/placeholder.png,2025-01-31T10:02:40Z
    c0de...,keep,,cat/IMG_0007.jpg,2025-01-31T10:03:02Z

``action`` is ``keep`` (reviewed, fine: it leaves the review queue), ``relabel`` (train it as
``label``) or ``exclude`` (never train, validate or test on it). ``path`` is where the image was
when decided (for people; the hash is what counts). The file lives at the project root next to
``params.yaml``, is tracked by git, and is a dependency of the ``validate`` stage in
``dvc.yaml``: the next ``dvc repro`` trains on the curated set, and ``data.dvc`` + ``curation.csv``
together are the data version. ``data/`` itself is never edited.

The file always exists (a header-only one ships with the project, because DVC needs its
dependencies to exist); a missing file still means "no decisions". Writes are atomic (temp file +
rename), so a crash leaves the previous version. Rows are sorted by hash: diffs stay small.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from visionops.config import Config
from visionops.errors import DataError
from visionops.io import write_text

CURATION_FILE = "curation.csv"
FIELDS = ["sha256", "action", "label", "path", "decided_at"]
ACTIONS = ("keep", "relabel", "exclude")
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Decision:
    sha256: str
    action: str
    label: str = ""
    path: str = ""
    decided_at: str = ""


def curation_path(config: Config) -> Path:
    """``<project root>/curation.csv`` (the folder holding ``params.yaml``)."""
    return config.path(CURATION_FILE)


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_curation(path: Path) -> dict[str, Decision]:
    """Decisions by sha256; ``{}`` when the file is absent. DataError names a bad line."""
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return {}
    reader = csv.DictReader(io.StringIO(text))
    missing = set(FIELDS[:2]) - set(reader.fieldnames or [])
    if missing:
        raise DataError(
            f"{path}: header must be {','.join(FIELDS)} (missing {', '.join(sorted(missing))}). "
            "Fix: restore the header line"
        )
    decisions: dict[str, Decision] = {}
    for line, row in enumerate(reader, start=2):
        sha = (row.get("sha256") or "").strip().lower()
        action = (row.get("action") or "").strip().lower()
        label = (row.get("label") or "").strip()
        where = f"{path}:{line}"
        if not _SHA.match(sha):
            raise DataError(f"{where}: sha256 {sha!r} is not a 64-character hex content hash")
        if action not in ACTIONS:
            raise DataError(f"{where}: action {action!r} unknown; use one of {', '.join(ACTIONS)}")
        if action == "relabel" and not label:
            raise DataError(f"{where}: relabel needs the new label in the label column")
        decisions[sha] = Decision(
            sha, action, label if action == "relabel" else "", row.get("path") or "",
            row.get("decided_at") or "",
        )  # fmt: skip
    return decisions


def write_curation(path: Path, decisions: dict[str, Decision]) -> Path:
    """Write every decision, sorted by hash, atomically (the header even when empty)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for sha in sorted(decisions):
        writer.writerow(asdict(decisions[sha]))
    return write_text(path, buf.getvalue())


@dataclass
class CurationSummary:
    """What ``validate`` applied: counts per action and decisions about absent images."""

    relabeled: int = 0
    excluded: int = 0
    kept: int = 0
    not_found: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def apply_curation(
    df: pd.DataFrame, decisions: dict[str, Decision], classes: list[str], source: Path
) -> tuple[pd.DataFrame, CurationSummary]:
    """Relabel and exclude manifest rows by content hash.

    Adds ``folder_label`` (the class folder, unchanged) and ``curation`` (the action applied).
    A relabel to a label that is not a class folder is a DataError: the file and the fix are
    named, nothing is guessed.
    """
    df = df.copy()
    df["folder_label"] = df["label"]
    df["curation"] = ""
    summary = CurationSummary()
    if not decisions:
        return df, summary
    unknown = sorted(
        {d.label for d in decisions.values() if d.action == "relabel" and d.label not in classes}
    )
    if unknown:
        raise DataError(
            f"{source}: relabel to {', '.join(map(repr, unknown))}, which is not a class folder "
            f"(classes: {', '.join(classes)}). Fix: create the folder, or change those rows"
        )
    hashes = df["sha256"].fillna("")
    found = set(hashes)
    summary.not_found = sum(1 for sha in decisions if sha not in found)
    for sha, d in decisions.items():
        rows = hashes == sha
        if not rows.any():
            continue
        df.loc[rows, "curation"] = d.action
        if d.action == "relabel":
            df.loc[rows, "label"] = d.label
            summary.relabeled += int((rows & df["usable"]).sum())
        elif d.action == "exclude":
            usable = rows & df["usable"]
            df.loc[usable, "usable"] = False
            when = f" on {d.decided_at}" if d.decided_at else ""
            df.loc[usable, "problem"] = f"excluded: by {source.name}{when}"
            summary.excluded += int(usable.sum())
        else:
            summary.kept += int((rows & df["usable"]).sum())
    return df, summary
