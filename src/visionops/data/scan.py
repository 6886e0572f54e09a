"""Scan ``data/`` into a manifest: one row per file, what it is and whether training can use it.

Layout. ``data/<label>/**/<file>`` (flat), or, when every top-level folder is a split name and
``train/`` is one of them, ``data/<train|val|validation|test>/<label>/**/<file>`` (pre-split;
``validation`` is reported as ``val``). Files nested deeper inside a class folder belong to it.

Skipped, never read: hidden files/folders (``.DS_Store``, ``._*``, any dot-name), files directly
under ``data/`` (or directly under a split folder), extensions outside ``validate.extensions``,
symlinks whose target is outside ``data/`` (never followed), symlinked folders (never followed:
loops and double counting), sockets/FIFOs. Every other file is read and judged in a worker
process by :func:`visionops.data.inspect_file.inspect_file`, which also says what a row holds
(:data:`~visionops.data.inspect_file.COLUMNS`) and what makes a read file unusable.

Nothing under ``data/`` is ever written; files are opened read-only.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import stat
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path, PurePosixPath

import pandas as pd
from tqdm import tqdm

from visionops.data.inspect_file import (
    COLUMNS,
    FileTask,
    ScanRules,
    allowed_formats,
    inspect_file,
    skip_row,
)

log = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_IN_PROCESS_BELOW = 64  # files: smaller scans skip the process pool (its start-up costs more)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def detect_layout(data_dir: Path) -> str:
    """``"presplit"`` when every visible top-level folder is a split name and ``train/`` exists."""
    tops = [
        e.name
        for e in os.scandir(data_dir)
        if e.is_dir(follow_symlinks=False) and not _hidden(e.name)
    ]
    names = {t.lower() for t in tops}
    if names and "train" in names and names <= set(SPLIT_FOLDERS):
        return "presplit"
    return "flat"


def _folder_problem(full: str, name: str) -> str | None:
    """Why a sub-folder is not descended into, or None."""
    if _hidden(name):
        return "hidden folder: not scanned"
    if os.path.islink(full):
        return "symlinked folder: not followed (copy the images instead)"
    return None


def _file_problem(
    full: str, name: str, label: str | None, where: str, root_real: str, extensions: set[str]
) -> str | None:
    """Why a file is skipped without being read, or None if it must be read."""
    if _hidden(name):
        return "hidden file: ignored"
    if label is None:
        return f"outside class folder: file directly under {where}; move it into a class folder"
    if os.path.islink(full):
        target = os.path.realpath(full)
        if not os.path.exists(target):
            return "broken symlink: target missing"
        if os.path.commonpath([root_real, target]) != root_real:
            return f"symlink outside data: points to {target}; not followed"
    suffix = Path(name).suffix
    if suffix.lower() not in extensions:
        return f"not an image: extension '{suffix}' not in validate.extensions"
    if not stat.S_ISREG(os.stat(full).st_mode):  # FIFOs and sockets would block a read
        return "not an image: not a regular file"
    return None


def _walk(
    data_dir: Path, extensions: set[str]
) -> tuple[list[FileTask], list[dict], list[str], str]:
    """List files; return (tasks to read, rows already decided, class folder names, layout)."""
    root_real = os.path.realpath(data_dir)
    layout = detect_layout(data_dir)
    label_depth = 2 if layout == "presplit" else 1  # data/<label>/ or data/<split>/<label>/
    tasks: list[FileTask] = []
    decided: list[dict] = []
    classes: set[str] = set()

    for dirpath, dirnames, filenames in os.walk(data_dir, followlinks=False):
        rel_dir = Path(dirpath).relative_to(data_dir).as_posix()
        parts = () if rel_dir == "." else PurePosixPath(rel_dir).parts
        hint = SPLIT_FOLDERS[parts[0].lower()] if layout == "presplit" and parts else None
        label = parts[label_depth - 1] if len(parts) >= label_depth else None
        where = "a split folder" if parts else "data/"

        def rel(name: str, parts=parts, rel_dir=rel_dir) -> str:
            return f"{rel_dir}/{name}" if parts else name

        kept = []
        for d in sorted(dirnames):
            if problem := _folder_problem(os.path.join(dirpath, d), d):
                decided.append(skip_row(rel(d) + "/", label, hint, problem))
                continue
            kept.append(d)
            if len(parts) + 1 == label_depth:
                classes.add(d)
        dirnames[:] = kept  # os.walk descends only into these

        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if problem := _file_problem(full, name, label, where, root_real, extensions):
                decided.append(skip_row(rel(name), label, hint, problem))
            else:
                tasks.append(FileTask(full, rel(name), label, hint))
    return tasks, decided, sorted(classes), layout


def _pool_context():
    # forkserver/spawn, never fork: the caller may hold threads (torch, tqdm) and fork copies locks.
    # Callers' scripts need the usual ``if __name__ == "__main__":`` guard (the CLI has one).
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # imported once by the server, not per worker
    return context


def _inspect_all(tasks: list[FileTask], rules: ScanRules, workers: int) -> list[dict]:
    bar = tqdm(
        total=len(tasks),
        desc="validate: scan",
        unit="img",
        disable=None,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    judge = partial(inspect_file, rules=rules)
    rows: list[dict] = []
    try:
        if workers <= 1 or len(tasks) < _IN_PROCESS_BELOW:
            for task in tasks:
                rows.append(judge(task))
                bar.update()
        else:
            chunk = max(1, min(32, len(tasks) // (workers * 8)))
            with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
                for row in pool.map(judge, tasks, chunksize=chunk):
                    rows.append(row)
                    bar.update()
    finally:
        bar.close()
    return rows


def scan_images(data_dir: Path | str, validate_params, workers: int = 0) -> pd.DataFrame:
    """Manifest of every file under ``data_dir`` (see the module docstring), sorted by path.

    ``validate_params`` is :class:`visionops.config.ValidateParams`; ``workers=0`` means one
    process per core. ``df.attrs`` carries ``layout`` (``"flat"``/``"presplit"``) and
    ``class_folders`` (every class folder seen, including empty ones). Duplicates are *not*
    resolved here (see :func:`visionops.data.validate.mark_duplicates`).
    """
    data_dir = Path(data_dir)
    extensions = set(validate_params.extensions)
    tasks, decided, classes, layout = _walk(data_dir, extensions)
    rules = ScanRules(
        min_side=validate_params.min_side,
        max_pixels=validate_params.max_pixels,
        allowed_formats=allowed_formats(validate_params.extensions),
    )
    workers = workers or os.cpu_count() or 1
    rows = decided + _inspect_all(tasks, rules, workers)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df = df.sort_values("path", kind="stable").reset_index(drop=True)
    df["usable"] = df["usable"].astype(bool)
    for col in ("bytes", "width", "height", "orientation"):
        df[col] = df[col].astype("Int64")
    df.attrs.update(layout=layout, class_folders=classes)
    log.debug("scanned %d files (%d read) in %s, layout %s", len(df), len(tasks), data_dir, layout)
    return df
