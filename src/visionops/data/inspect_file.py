"""Judge one file by reading it: the manifest row it becomes, and whether training can use it.

Each row (see :data:`COLUMNS`): ``path`` relative to ``data/`` (POSIX), ``label``,
``split_hint`` (pre-split layout only), ``sha256`` of the bytes, ``bytes``, PIL ``format`` and
``mode`` (the *stored* mode, e.g. CMYK or I;16, so the report can count what loading will
normalise), ``width``/``height`` *after* EXIF orientation, ``orientation`` (EXIF tag, 1 = upright),
``usable`` and ``problem`` (``"<kind>: <detail>"``, empty when usable).

Read but skipped: zero-byte, unidentifiable, truncated/corrupt (JPEGs are decoded whole with
libjpeg's DCT scaling, down to 1/8 but never below 64 px a side, which parses every block for a
fraction of the cost; other formats go through :func:`visionops.images.open_image`, the loader
training uses), smaller than ``min_side``, over ``max_pixels`` (only the header is parsed; the
pixels are never decoded).

A usable row also carries what the decoded copy says (:mod:`visionops.data.signals`): ``phash``
(256-bit perceptual hash, near-duplicates), ``flat`` (share of pixels in the most common colour)
and ``contrast`` (gray-level std), which flag blank frames and placeholder graphics.

:func:`inspect_file` runs in the scan's worker processes (:mod:`visionops.data.scan` lists the
files and drives the pool), so everything it takes is small and picklable. Files are opened
read-only.
"""

from __future__ import annotations

import hashlib
import io
import os
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageOps

from visionops.data.signals import DRAFT_SIZE, flatness, perceptual_hash, small_copy
from visionops.images import ImageLoadError, open_image

# fmt: off
COLUMNS = [
    "path", "label", "split_hint", "sha256", "bytes", "format", "mode",
    "width", "height", "orientation", "usable", "problem", "phash", "flat", "contrast",
]
# fmt: on
_READ_ALL_BELOW = 64 * 1024 * 1024  # bytes: smaller files are read once for hash + decode
_ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_JPEG_FORMATS = {"JPEG", "MPO"}  # decoded at 1/8 scale: every block is still parsed


@dataclass(frozen=True)
class ScanRules:
    """What each worker needs to judge one file (small, pickled once per chunk)."""

    min_side: int
    max_pixels: int
    allowed_formats: frozenset[str]


@dataclass(frozen=True)
class FileTask:
    """One file to read: where it is, its manifest path, and what its folders say."""

    abs_path: str
    rel: str
    label: str | None
    split_hint: str | None


def skip_row(rel: str, label: str | None, hint: str | None, problem: str) -> dict:
    """A row for a file that is not usable (``problem`` says why); ``inspect_file`` starts here."""
    row = dict.fromkeys(COLUMNS)
    row.update(path=rel, label=label, split_hint=hint, usable=False, problem=problem)
    row.update(sha256="", format="", mode="", orientation=1, phash="")
    return row


def allowed_formats(extensions: list[str]) -> frozenset[str]:
    """PIL format names matching the configured extensions (``.jpg`` -> JPEG, MPO for phones)."""
    Image.init()
    registered = Image.registered_extensions()
    formats = {registered[e] for e in extensions if e in registered}
    if "JPEG" in formats:
        formats.add("MPO")  # multi-picture JPEG written by many phone cameras
    return frozenset(formats)


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


def _decode_jpeg_scaled(source: bytes | str) -> Image.Image:
    """Decode every block of a JPEG with libjpeg DCT scaling (1/8 for photos of 512 px and more,
    never below :data:`~visionops.data.signals.DRAFT_SIZE`): several times cheaper than a full
    decode, and a truncated or broken entropy stream still fails because the whole stream is
    consumed. Returns the small upright copy; raises :class:`ImageLoadError` like
    :func:`~visionops.images.open_image`."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img.draft("RGB", DRAFT_SIZE)
            img.load()
            return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(f"corrupt or truncated image: {exc}") from None


def inspect_file(task: FileTask, rules: ScanRules) -> dict:
    """Judge one file: hash it, parse its header, decode it unless the header rules it out."""
    row = skip_row(task.rel, task.label, task.split_hint, "")
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
                decoded = _decode_jpeg_scaled(source)
            else:
                decoded = open_image(source, max_pixels=rules.max_pixels)
            small = small_copy(decoded)
        except ImageLoadError as exc:
            row["problem"] = f"corrupt: {exc}"
        except Exception as exc:  # e.g. MemoryError, odd codec failures: still a bad file
            row["problem"] = f"corrupt: {type(exc).__name__}: {exc}"
        else:
            row["usable"] = True
            row["phash"] = perceptual_hash(small)
            row["flat"], row["contrast"] = flatness(small)
    return row
