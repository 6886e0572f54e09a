"""The ``validate`` stage's report: ``report.json`` (DVC-tracked), ``summary.md`` for people and
``near_duplicates.png``, a contact sheet of the near-duplicate groups (conflicts first).

Kept apart from :mod:`visionops.data.validate`, which decides; this module only writes down what
was decided, so a change of wording never touches the policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw, ImageOps

from visionops.images import open_image
from visionops.io import write_with

LISTED = 50  # files (or groups) listed per warning kind in the report
SHEET_GROUPS = 24  # groups drawn on the contact sheet
_THUMB = 96  # px


def kind_of(problem: str) -> str:
    return problem.split(":", 1)[0]


def build_report(df: pd.DataFrame, result: Any) -> dict:
    """``report.json``; ``result`` is the stage's :class:`~visionops.data.validate.ValidationResult`
    (not imported: validate imports this module)."""
    skipped = df[~df["usable"]]
    warnings = {}
    for kind, group in skipped.groupby(skipped["problem"].map(kind_of), sort=True):
        warnings[kind] = {
            "count": int(len(group)),
            "files": [
                f"{p} — {msg}"
                for p, msg in zip(group["path"][:LISTED], group["problem"][:LISTED], strict=True)
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
        "notices": result.notices,
        "near_duplicates": result.near_duplicates,
        "suspect_junk": result.suspect_junk,
        "curation": result.curation,
        "errors": result.errors,
        "expectations": result.expectations.to_dict(),
        "duration_seconds": round(result.duration_s, 2),
    }
    if result.layout == "presplit":
        report["per_split_folder"] = {
            s: int(n) for s, n in usable["split_hint"].value_counts().sort_index().items()
        }
    return report


def _near_duplicate_lines(near: dict) -> list[str]:
    if not near.get("groups"):
        return []
    out = [
        "## Near-duplicates (kept; each group stays in one split)",
        "",
        f"{near['groups']} group(s) of near-identical images ({near['images']} images, "
        f"perceptual hash within {near['max_distance']} of 256 bits); "
        f"**{near['conflicts']} with different labels** (conflicts: decide in `visionops review`).",
        "",
        "![near-duplicate groups](near_duplicates.png)",
        "",
        "| group | labels | images |",
        "| --- | --- | --- |",
    ]
    for g in near["list"]:
        labels = " ≠ ".join(g["labels"]) if g["conflict"] else g["labels"][0]
        out.append(f"| {g['group']} | {labels} | {', '.join(f'`{p}`' for p in g['paths'])} |")
    if near["groups"] > len(near["list"]):
        out.append(f"| … | | {near['groups'] - len(near['list'])} more in manifest.csv |")
    return [*out, ""]


def render_markdown(report: dict) -> str:
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
    if report["notices"]:
        out += ["## Warnings (kept)", ""] + [f"- {n}" for n in report["notices"]] + [""]
    out += ["## Images per class", "", "| class | usable images |", "| --- | ---: |"]
    out += [f"| {c} | {n} |" for c, n in report["per_class"].items()] + [""]
    curation = report["curation"]
    if any(curation.values()):
        out += [
            "## Curation (curation.csv)",
            "",
            f"relabelled {curation['relabeled']}, excluded {curation['excluded']}, "
            f"reviewed and kept {curation['kept']}; {curation['not_found']} decision(s) about "
            "images no longer in the data.",
            "",
        ]
    out += _near_duplicate_lines(report["near_duplicates"])
    junk = report["suspect_junk"]
    if junk["count"]:
        out += [f"## Looks like junk ({junk['count']}, kept: review them)", ""]
        out += [f"- `{f}`" for f in junk["files"]] + [""]
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


def _thumb(path: Path) -> Image.Image:
    try:
        img = open_image(path)
        img.thumbnail((_THUMB, _THUMB))
    except Exception:  # noqa: BLE001 - a file changed since the scan: draw a grey square
        img = Image.new("RGB", (_THUMB, _THUMB), (200, 200, 200))
    return ImageOps.pad(img, (_THUMB, _THUMB), color=(255, 255, 255))


def write_contact_sheet(groups: list[dict], data_dir: Path, path: Path) -> Path | None:
    """Thumbnails of the first :data:`SHEET_GROUPS` groups, one row each, captioned with the
    label (red when the group's labels conflict). Removes a stale sheet when there is none."""
    shown = groups[:SHEET_GROUPS]
    if not shown:
        path.unlink(missing_ok=True)
        return None
    per_row = min(8, max(len(g["paths"]) for g in shown))
    cell_w, cell_h = _THUMB + 8, _THUMB + 22
    sheet = Image.new("RGB", (per_row * cell_w + 8, len(shown) * cell_h + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for r, group in enumerate(shown):
        by_path = dict(zip(group["paths"], group["path_labels"], strict=True))
        for c, rel in enumerate(group["paths"][:per_row]):
            x, y = 8 + c * cell_w, 8 + r * cell_h
            sheet.paste(_thumb(data_dir / rel), (x, y))
            colour = (192, 57, 43) if group["conflict"] else (60, 60, 60)
            draw.text((x, y + _THUMB + 3), str(by_path[rel])[:16], fill=colour)
    return write_with(path, lambda tmp: sheet.save(tmp, format="PNG", optimize=True))
