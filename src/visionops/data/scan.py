"""Scan ``data/`` into a manifest: one row per file, what it is and whether training can use it.

Layout. ``data/<label>/**/<file>`` (flat), or, when every top-level folder is a split name and
``train/`` is one of them, ``data/<train|val|validation|test>/<label>/**/<file>`` (pre-split;
``validation`` is reported as ``val``). Files nested deeper inside a class folder belong to it.

Each row (see :data:`COLUMNS`): ``path`` relative to ``data/`` (POSIX), ``label``,
``split_hint`` (pre-split layout only), ``sha256`` of the bytes, ``bytes``, PIL ``format`` and
``mode`` (the *stored* mode, e.g. CMYK or I;16, so the report can count what loading will
normalise), ``width``/``height`` *after* EXIF orientation, ``orientation`` (EXIF tag, 1 = upright),
``usable`` and ``problem`` (``"<kind>: <detail>"``, empty when usable).

Skipped, never read: hidden files/folders (``.DS_Store``, ``._*``, any dot-name), files directly
under ``data/`` (or directly under a split folder), extensions outside ``validate.extensions``,
symlinks whose target is outside ``data/`` (never followed), symlinked folders (never followed:
loops and double counting), sockets/FIFOs. Read but skipped: zero-byte, unidentifiable,
truncated/corrupt (JPEGs are decoded whole at 1/8 scale, which parses every block for a third
of the cost; other formats go through :func:`visionops.images.open_image`, the loader training
uses), smaller than ``min_side``, over ``max_pixels`` (only the header is parsed; the pixels are
never decoded).

Nothing under ``data/`` is ever written; files are opened read-only.
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import os
import stat
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import pandas as pd
from PIL import Image
from tqdm import tqdm

from visionops.images import ImageLoadError, open_image

log = logging.getLogger(__name__)

# fmt: off
COLUMNS = [
    "path", "label", "split_hint", "sha256", "bytes", "format", "mode",
    "width", "height", "orientation", "usable", "problem",
]
# fmt: on
SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_READ_ALL_BELOW = 64 * 1024 * 1024  # bytes: smaller files are read once for hash + decode
_IN_PROCESS_BELOW = 64  # files: smaller scans skip the process pool (its start-up costs more)
_ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_JPEG_FORMATS = {"JPEG", "MPO"}  # decoded at 1/8 scale: every block is still parsed


@dataclass(frozen=True)
class ScanRules:
    """What each worker needs to judge one file (small, pickled once per chunk)."""

    min_side: int
    max_pixels: int
    allowed_formats: frozenset[str]


@dataclass(frozen=True)
class _Task:
    abs_path: str
    rel: str
    label: str | None
    split_hint: str | None


def allowed_formats(extensions: list[str]) -> frozenset[str]:
    """PIL format names matching the configured extensions (``.jpg`` -> JPEG, MPO for phones)."""
    Image.init()
    registered = Image.registered_extensions()
    formats = {registered[e] for e in extensions if e in registered}
    if "JPEG" in formats:
        formats.add("MPO")  # multi-picture JPEG written by many phone cameras
    return frozenset(formats)


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


def _skip(rel: str, label: str | None, hint: str | None, problem: str) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(path=rel, label=label, split_hint=hint, usable=False, problem=problem)
    row.update(sha256="", format="", mode="", orientation=1)
    return row


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


def _walk(data_dir: Path, extensions: set[str]) -> tuple[list[_Task], list[dict], list[str], str]:
    """List files; return (tasks to read, rows already decided, class folder names, layout)."""
    root_real = os.path.realpath(data_dir)
    layout = detect_layout(data_dir)
    label_depth = 2 if layout == "presplit" else 1  # data/<label>/ or data/<split>/<label>/
    tasks: list[_Task] = []
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
                decided.append(_skip(rel(d) + "/", label, hint, problem))
                continue
            kept.append(d)
            if len(parts) + 1 == label_depth:
                classes.add(d)
        dirnames[:] = kept  # os.walk descends only into these

        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if problem := _file_problem(full, name, label, where, root_real, extensions):
                decided.append(_skip(rel(name), label, hint, problem))
            else:
                tasks.append(_Task(full, rel(name), label, hint))
    return tasks, decided, sorted(classes), layout


@contextmanager
def _no_pil_bomb_check():
    """PIL's own bomb check raises before we can read the size; ``max_pixels`` guards instead."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _decode_jpeg_scaled(source: bytes | str) -> None:
    """Decode every block of a JPEG at 1/8 scale (libjpeg DCT scaling): ~3x cheaper than a full
    decode, and a truncated or broken entropy stream still fails because the whole stream is
    consumed. Raises :class:`ImageLoadError` like :func:`~visionops.images.open_image`."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(f"corrupt or truncated image: {exc}") from None


def inspect_file(task: _Task, rules: ScanRules) -> dict:
    """Judge one file: hash it, parse its header, decode it unless the header rules it out."""
    row = _skip(task.rel, task.label, task.split_hint, "")
    try:
        size = os.stat(task.abs_path).st_size
        row["bytes"] = size
        if size == 0:
            row["problem"] = "zero bytes: empty file"
            return row
        if size < _READ_ALL_BELOW:
            with open(task.abs_path, "rb") as fh:
                data = fh.read()
            row["sha256"] = hashlib.sha256(data).hexdigest()
            source: bytes | str = data
        else:
            row["sha256"] = _sha256_file(task.abs_path)
            source = task.abs_path
    except OSError as exc:
        row["problem"] = f"unreadable: {exc.strerror or exc}"
        return row

    with _no_pil_bomb_check():
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                fmt, mode, (width, height) = img.format or "", img.mode, img.size
                try:
                    orientation = int(img.getexif().get(0x0112, 1) or 1)
                except Exception:  # a broken EXIF block is the loader's problem, not a rotation
                    orientation = 1
        except Image.UnidentifiedImageError:
            row["problem"] = "not an image: unrecognised content"
            return row
        except Exception as exc:  # PIL raises many types on garbage headers
            row["problem"] = f"corrupt: {exc}"
            return row
    if orientation in _ROTATING_ORIENTATIONS:
        width, height = height, width
    row.update(format=fmt, mode=mode, width=width, height=height, orientation=orientation)

    if fmt not in rules.allowed_formats:
        row["problem"] = (
            f"format not allowed: {fmt} (allowed: {', '.join(sorted(rules.allowed_formats))})"
        )
    elif width * height > rules.max_pixels:
        row["problem"] = (
            f"too large: {width}x{height} = {width * height:,} pixels > "
            f"validate.max_pixels {rules.max_pixels:,}; not decoded"
        )
    elif min(width, height) < rules.min_side:
        row["problem"] = f"too small: {width}x{height} < validate.min_side {rules.min_side}"
    else:
        try:
            if fmt in _JPEG_FORMATS:
                _decode_jpeg_scaled(source)
            else:
                open_image(source, max_pixels=rules.max_pixels)
        except ImageLoadError as exc:
            row["problem"] = f"corrupt: {exc}"
        except Exception as exc:  # e.g. MemoryError, odd codec failures: still a bad file
            row["problem"] = f"corrupt: {type(exc).__name__}: {exc}"
        else:
            row["usable"] = True
    return row


def _pool_context():
    # forkserver/spawn, never fork: the caller may hold threads (torch, tqdm) and fork copies locks.
    # Callers' scripts need the usual ``if __name__ == "__main__":`` guard (the CLI has one).
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # imported once by the server, not per worker
    return context


def _inspect_all(tasks: list[_Task], rules: ScanRules, workers: int) -> list[dict]:
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
