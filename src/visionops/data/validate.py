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

Outputs (``visionops.paths``): ``manifest.csv`` — every file, usable or not, with the ``usable``
and ``problem`` columns (the split stage keeps ``usable == True``); ``report.json`` (DVC metrics);
``summary.md`` for people. ``data/`` is only ever read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from visionops.config import Config
from visionops.data.expectations import ExpectationsResult, check_manifest, preload_in_background
from visionops.data.inspect_file import allowed_formats
from visionops.data.scan import scan_images
from visionops.errors import DataError
from visionops.io import write_json, write_text, write_with
from visionops.paths import stage_paths

log = logging.getLogger(__name__)

_SHOWN = 10  # offending files named in an error message
_LISTED = 50  # files listed per warning kind in the report
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
    duration_s: float = 0.0
    outputs: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        skipped = sum(self.warnings.values())
        lines = [
            f"validate: {self.usable} usable images in {len(self.per_class)} classes "
            f"({self.files} files, {skipped} skipped) in {self.duration_s:.1f} s",
        ]
        lines += [f"  skipped {n}: {kind}" for kind, n in self.warnings.items()]
        if self.normalized:
            shown = ", ".join(f"{k} {v}" for k, v in self.normalized.items())
            lines.append(f"  normalised when loaded: {shown}")
        gx = "passed" if self.expectations.success else "FAILED"
        lines.append(f"  great-expectations: {self.expectations.evaluated} expectations {gx}")
        lines.append(f"  report: {self.outputs.get('summary')}")
        return "\n".join(lines)


def _kind(problem: str) -> str:
    return problem.split(":", 1)[0]


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


def _report(df: pd.DataFrame, result: ValidationResult) -> dict:
    skipped = df[~df["usable"]]
    warnings = {}
    for kind, group in skipped.groupby(skipped["problem"].map(_kind), sort=True):
        warnings[kind] = {
            "count": int(len(group)),
            "files": [
                f"{p} — {msg}"
                for p, msg in zip(group["path"][:_LISTED], group["problem"][:_LISTED], strict=True)
            ],
        }
    usable = df[df["usable"]]
    report = {
        "data_dir": str(result.data_dir),
        "layout": result.layout,
        "files": result.files,
        "usable": result.usable,
        "skipped": int(len(skipped)),
        "classes": len(result.per_class),
        "per_class": result.per_class,
        "modes": {m: int(n) for m, n in usable["mode"].value_counts().sort_index().items()},
        "normalized": result.normalized,
        "warnings": warnings,
        "errors": result.errors,
        "expectations": result.expectations.to_dict(),
        "duration_seconds": round(result.duration_s, 2),
    }
    if result.layout == "presplit":
        report["per_split_folder"] = {
            s: int(n) for s, n in usable["split_hint"].value_counts().sort_index().items()
        }
    return report


def _markdown(report: dict) -> str:
    status = "FAILED" if report["errors"] else "passed"
    out = [
        f"# Data validation {status}",
        "",
        f"`{report['data_dir']}` ({report['layout']} layout): **{report['usable']} usable images** "
        f"in **{report['classes']} classes**; {report['files']} files scanned, "
        f"{report['skipped']} skipped, in {report['duration_seconds']} s.",
        "",
    ]
    if report["errors"]:
        out += ["## Errors (the stage failed)", ""] + [f"- {e}" for e in report["errors"]] + [""]
    out += ["## Images per class", "", "| class | usable images |", "| --- | ---: |"]
    out += [f"| {c} | {n} |" for c, n in report["per_class"].items()] + [""]
    if report["normalized"]:
        out += ["## Normalised when loaded (kept)", ""]
        out += [f"- {k}: {v}" for k, v in report["normalized"].items()] + [""]
    if report["warnings"]:
        out += ["## Skipped files (warnings)", ""]
        for kind, info in report["warnings"].items():
            out += [f"### {kind} ({info['count']})", ""] + [f"- `{f}`" for f in info["files"]]
            if info["count"] > len(info["files"]):
                out.append(f"- … {info['count'] - len(info['files'])} more in manifest.csv")
            out.append("")
    gx = report["expectations"]
    out += [
        "## great-expectations",
        "",
        f"{gx['evaluated']} expectations on the usable rows: "
        f"{'all passed' if gx['success'] else 'FAILED'}",
    ]
    out += [f"- {line}" for line in gx["failed"]]
    return "\n".join(out) + "\n"


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
    df = mark_duplicates(df)
    errors = find_errors(df, classes, params.min_images_per_class, data_dir)

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

    skipped = df.loc[~df["usable"], "problem"].map(_kind).value_counts().sort_index()
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
    )
    paths = stage_paths(config)
    write_with(paths.manifest, lambda tmp: df.to_csv(tmp, index=False))
    result.duration_s = time.perf_counter() - started
    report = _report(df, result)
    write_json(paths.validation_report, report)
    write_text(paths.validation_summary, _markdown(report))
    result.outputs = {
        "manifest": paths.manifest,
        "report": paths.validation_report,
        "summary": paths.validation_summary,
    }
    for kind, n in result.warnings.items():
        log.warning("skipped %d file(s): %s (see %s)", n, kind, paths.validation_summary)
    if errors:
        raise DataError(" | ".join(errors) + f" (full report: {paths.validation_summary})")
    return result
