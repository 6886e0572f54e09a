"""Stage ``validate``: scan ``data/``, apply the policy, check the manifest with great-expectations.

Policy (defaults in ``params.yaml`` under ``validate:``):

* **errors** (:class:`~visionops.errors.DataError`, raised *after* the report is written so it
  can be read): ``data/`` missing or without class folders; fewer than 2 classes; a class with
  fewer than ``min_images_per_class`` usable unique images; the same content (sha256) under two
  labels; a failed great-expectations contract.
* **skipped with a warning** (listed in the report, the stage succeeds): see
  :mod:`visionops.data.scan`
  — corrupt/truncated/zero-byte/non-image/too small/too large/hidden/outside a class
  folder/symlink out of ``data/``; plus exact duplicates within a class: the copy whose path sorts
  first is kept (in a pre-split layout the copy in test, then val, then train wins, so identical
  content never sits in two splits), the others get
  ``problem = "duplicate: same content as <path>"``.
* **normalised, not rejected**: non-RGB modes and EXIF rotation stay usable; the report counts
  them; :func:`visionops.images.open_image` converts them when images are loaded.
* **kept with a warning**: near-duplicate groups (:mod:`visionops.data.near_duplicates`; groups
  whose labels differ are conflicts; the split keeps each group together), images that look
  like junk and class folders whose names differ only in case or spacing
  (:mod:`visionops.data.suspects`).
* **people's decisions first**: ``curation.csv`` (:mod:`visionops.data.curation`) relabels and
  excludes images by content hash before any rule above runs.

Outputs (``visionops.paths``): ``manifest.csv`` — every file, usable or not, with the ``usable``
and ``problem`` columns (the split stage keeps ``usable == True``); ``report.json`` (DVC metrics);
``summary.md`` for people, with ``near_duplicates.png`` (thumbnails of the groups). ``data/`` is
only ever read. The manifest adds ``folder_label`` (the class folder; ``label`` is the curated
label), ``curation``, ``dup_group`` (near-duplicate group key, "" alone) and ``suspect``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from visionops.config import Config
from visionops.data.curation import apply_curation, curation_path, read_curation
from visionops.data.expectations import ExpectationsResult, check_manifest, preload_in_background
from visionops.data.inspect_file import allowed_formats
from visionops.data.near_duplicates import (
    MAX_DISTANCE,
    describe_groups,
    drop_straddlers,
    group_near_duplicates,
)
from visionops.data.scan import scan_images
from visionops.data.suspects import colliding_class_names, junk_reasons
from visionops.data.validate_report import (
    LISTED,
    build_report,
    kind_of,
    render_markdown,
    write_contact_sheet,
)
from visionops.errors import DataError
from visionops.io import write_json, write_text, write_with
from visionops.paths import stage_paths

log = logging.getLogger(__name__)

_SHOWN = 10  # offending files named in an error message
_SPLIT_RANK = {"test": 0, "val": 1, "train": 2}  # which copy of a duplicate survives


@dataclass
class ValidationResult:
    """What ``validate`` found; ``summary()`` is what the CLI prints."""

    data_dir: Path
    layout: str
    files: int
    usable: int
    per_class: dict[str, int]
    warnings: dict[str, int]
    normalized: dict[str, int]
    expectations: ExpectationsResult
    errors: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # kept, but a person should look
    near_duplicates: dict = field(default_factory=dict)
    suspect_junk: dict = field(default_factory=dict)
    curation: dict = field(default_factory=dict)
    duration_s: float = 0.0
    outputs: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        skipped = sum(self.warnings.values())
        lines = [
            f"validate: {self.usable} usable images in {len(self.per_class)} classes "
            f"({self.files} files, {skipped} skipped) in {self.duration_s:.1f} s",
        ]
        lines += [f"  skipped {n}: {kind}" for kind, n in self.warnings.items()]
        lines += [f"  warning: {n}" for n in self.notices]
        if self.normalized:
            shown = ", ".join(f"{k} {v}" for k, v in self.normalized.items())
            lines.append(f"  normalised when loaded: {shown}")
        gx = "passed" if self.expectations.success else "FAILED"
        lines.append(f"  great-expectations: {self.expectations.evaluated} expectations {gx}")
        lines.append(f"  report: {self.outputs.get('summary')}")
        return "\n".join(lines)


def mark_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """Keep one usable copy per (label, sha256); mark the others ``duplicate`` (not usable)."""
    usable = df[df["usable"]].copy()
    usable["_rank"] = usable["split_hint"].map(_SPLIT_RANK).fillna(3)
    usable = usable.sort_values(["_rank", "path"], kind="stable")
    first = usable.groupby(["label", "sha256"], sort=False)["path"].transform("first")
    dupes = usable.index[first != usable["path"]]
    df = df.copy()
    df.loc[dupes, "usable"] = False
    df.loc[dupes, "problem"] = "duplicate: same content as " + first[dupes]
    return df


def _name_files(paths: list[str]) -> str:
    shown = ", ".join(paths[:_SHOWN])
    more = f" (+{len(paths) - _SHOWN} more)" if len(paths) > _SHOWN else ""
    return shown + more


def find_errors(
    df: pd.DataFrame, classes: list[str], min_per_class: int, data_dir: Path
) -> list[str]:
    """The stage-failing rules, one line each, naming files and the fix."""
    usable = df[df["usable"]]
    if not classes:
        loose = df.loc[
            df["label"].isna() & ~df["problem"].str.startswith("hidden"), "path"
        ].tolist()
        found = f"; found {len(loose)} loose file(s): {_name_files(loose)}" if loose else ""
        return [
            f"{data_dir}: no class folders{found}. Fix: put images in {data_dir}/<class>/ "
            f"(one sub-folder per class)"
        ]
    errors = []
    if len(classes) < 2:
        errors.append(
            f"{data_dir}: only 1 class ({classes[0]}); a classifier needs at least 2. "
            f"Fix: add a second class folder"
        )
    per_class = usable.groupby("label").size().reindex(classes, fill_value=0)
    small = per_class[per_class < min_per_class]
    if len(small):
        shown = ", ".join(f"{data_dir}/{c} ({n})" for c, n in small.items())
        errors.append(
            f"{len(small)} class(es) below validate.min_images_per_class={min_per_class}"
            f" usable images: {shown}. Fix: add images or remove the folder"
        )
    labels_per_hash = usable.groupby("sha256")["label"].nunique()
    clash = labels_per_hash[labels_per_hash > 1].index
    if len(clash):
        files = usable[usable["sha256"].isin(clash)].sort_values(["sha256", "path"])
        groups = [" = ".join(g["path"]) for _, g in files.groupby("sha256", sort=False)]
        errors.append(
            f"{len(clash)} image(s) appear under two or more labels: "
            f"{'; '.join(groups[:_SHOWN])}"
            f"{f' (+{len(groups) - _SHOWN} more)' if len(groups) > _SHOWN else ''}. "
            f"Fix: keep each image in its one correct class folder"
        )
    return errors


def _normalized_counts(usable: pd.DataFrame) -> dict[str, int]:
    counts = {f"mode {m}": int(n) for m, n in usable["mode"].value_counts().items() if m != "RGB"}
    rotated = int((usable["orientation"].fillna(1) != 1).sum())
    if rotated:
        counts["EXIF orientation"] = rotated
    return counts


SHEET_NAME = "near_duplicates.png"  # beside summary.md, which shows it


def _notices(classes: list[str], groups: list[dict], df: pd.DataFrame, data_dir: Path) -> list[str]:
    """Warnings that keep the images: colliding class names, label conflicts, junk."""
    notices = [
        "class folders differ only in case or spacing and become "
        f"{len(names)} classes: {', '.join(f'{data_dir}/{n}/' for n in names)}. "
        "Fix: merge them into one folder"
        for names in colliding_class_names(classes)
    ]
    conflicts = [g for g in groups if g["conflict"]]
    if conflicts:
        shown = "; ".join(" ~ ".join(g["paths"]) for g in conflicts[:_SHOWN])
        more = f" (+{len(conflicts) - _SHOWN} more)" if len(conflicts) > _SHOWN else ""
        notices.append(
            f"{len(conflicts)} near-duplicate group(s) carry different labels: {shown}{more}. "
            "Fix: decide in `visionops review` (relabel or exclude)"
        )
    junk = int((df["suspect"] != "").sum())
    if junk:
        shown = ", ".join(df.loc[df["suspect"] != "", "path"].head(_SHOWN))
        notices.append(
            f"{junk} image(s) look like junk (blank or mostly one colour): {shown}. "
            "Fix: exclude them in `visionops review` if they are not real examples"
        )
    return notices


def run(config: Config) -> ValidationResult:
    """Scan, judge and report ``config.data_dir``; raise DataError on an error rule."""
    started = time.perf_counter()
    data_dir = config.data_dir
    params = config.validate_
    if not data_dir.is_dir():
        raise DataError(
            f"{data_dir}: data folder not found. Fix: put one sub-folder per class "
            f"there, or run `dvc pull` to fetch the versioned data"
        )
    preload_in_background()  # GX's slow import overlaps the scan
    df = scan_images(data_dir, params, config.base.workers)
    layout, classes = df.attrs["layout"], df.attrs["class_folders"]
    curation_file = curation_path(config)
    df, curated = apply_curation(df, read_curation(curation_file), classes, curation_file)
    df = mark_duplicates(df)
    df["dup_group"] = group_near_duplicates(df)
    df = drop_straddlers(df)
    df["suspect"] = junk_reasons(df)
    errors = find_errors(df, classes, params.min_images_per_class, data_dir)
    groups = describe_groups(df)
    notices = _notices(classes, groups, df, data_dir)

    usable = df[df["usable"]]
    if len(usable):
        gx_result = check_manifest(
            usable, params.min_side, params.max_pixels, allowed_formats(params.extensions)
        )
        if not gx_result.success and not errors:  # else it only echoes the policy errors
            errors.append(
                "great-expectations contract failed on the manifest: "
                + " | ".join(gx_result.failed)
            )
    else:
        gx_result = ExpectationsResult(success=False, evaluated=0, failed=["no usable images"])

    skipped = df.loc[~df["usable"], "problem"].map(kind_of).value_counts().sort_index()
    per_class = usable.groupby("label").size().reindex(classes, fill_value=0)
    result = ValidationResult(
        data_dir=config.base.data_dir,  # as written in params: reports stay clone-independent
        layout=layout,
        files=len(df),
        usable=len(usable),
        per_class={c: int(n) for c, n in per_class.items()},
        warnings={k: int(n) for k, n in skipped.items()},
        normalized=_normalized_counts(usable),
        expectations=gx_result,
        errors=errors,
        notices=notices,
        near_duplicates={
            "groups": len(groups),
            "images": sum(len(g["paths"]) for g in groups),
            "conflicts": sum(g["conflict"] for g in groups),
            "max_distance": MAX_DISTANCE,
            "list": [{k: g[k] for k in ("group", "labels", "conflict", "paths")} for g in groups][
                :LISTED
            ],
        },
        suspect_junk={
            "count": int((df["suspect"] != "").sum()),
            "files": [
                f"{p} — {why}" for p, why in df.loc[df["suspect"] != "", ["path", "suspect"]].values
            ][:LISTED],
        },
        curation=curated.to_dict(),
    )
    paths = stage_paths(config)
    write_with(paths.manifest, lambda tmp: df.to_csv(tmp, index=False))
    sheet = write_contact_sheet(groups, data_dir, paths.validation_summary.with_name(SHEET_NAME))
    result.duration_s = time.perf_counter() - started
    report = build_report(df, result)
    write_json(paths.validation_report, report)
    write_text(paths.validation_summary, render_markdown(report))
    result.outputs = {
        "manifest": paths.manifest,
        "report": paths.validation_report,
        "summary": paths.validation_summary,
    }
    if sheet:
        result.outputs["near_duplicates"] = sheet
    for line in notices:
        log.warning("%s", line)
    for kind, n in result.warnings.items():
        log.warning("skipped %d file(s): %s (see %s)", n, kind, paths.validation_summary)
    if errors:
        raise DataError(" | ".join(errors) + f" (full report: {paths.validation_summary})")
    return result
