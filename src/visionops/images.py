"""Image loading and the one preprocessing definition (PIL + numpy, no torch).

Training's eval transform, evaluation, export's parity gate and ONNX inference all go through
:func:`preprocess`, so ONNX Runtime on a raw file sees exactly the tensor PyTorch saw.
:func:`load_and_preprocess` (evaluation, export's parity gate, inference, the service) decodes a
large JPEG at 1/2, 1/4 or 1/8 scale when that still covers the model's resize (:func:`draft_to`):
one function everywhere, so the gate checks what the service runs.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

# Truncated files are errors, never half-decoded grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_MAX_PIXELS = 89_478_485


class ImageLoadError(ValueError):
    """The file is not a decodable image (message names the reason, not the path)."""


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model wants its input; stored in the ONNX metadata so the file is self-describing.

    Eval/inference: resize the short side to ``resize`` (bilinear), centre-crop ``image_size``
    square, scale to [0, 1], normalise with ``mean``/``std`` per RGB channel, CHW float32.
    """

    image_size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    layout: str = field(default="NCHW")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        for key in ("image_size", "resize"):
            if key in known:
                known[key] = int(known[key])
        return cls(**known)


_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def to_rgb(img: Image.Image) -> Image.Image:
    """Normalise any mode to 8-bit RGB: grayscale, 16-bit, CMYK, palette, alpha (on white)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr if arr.max() > 1.0 else arr * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


# Formats whose decoder can scale down while decoding (libjpeg's DCT scaling: 1/2, 1/4, 1/8).
DRAFT_FORMATS = ("JPEG", "MPO")
# A drafted JPEG keeps at least this many times the model's resize on its short side, so the
# final resize still shrinks (and filters) by 4x or more. Lite1 champion, 132 sample photos blown
# up 4-40x, draft vs every pixel decoded: |delta prob| p95 0.004 / max 0.009, top-1 identical,
# 44 ms of decoding per image instead of 274; a margin of 2 decoded in 26 ms but moved
# probabilities by up to 0.026 and flipped 1 top-1 of 132 (docs/BENCHMARKS.md, issue 12).
DRAFT_MARGIN = 4


def draft_to(img: Image.Image, short_side: int) -> None:
    """Ask the decoder of a not-yet-loaded JPEG for its smallest scale (1/1, 1/2, 1/4 or 1/8)
    that keeps at least ``DRAFT_MARGIN * short_side`` pixels on the short side; ``img.size``
    becomes the size it will decode at.

    An 8000x8000 photo then decodes at 1/4 scale (4 Mpx, 12 MB of RGB) instead of in full
    (192 MB, then a 29x resize), with ~6x less CPU. EXIF rotation only swaps the sides, so the
    short side the resize sees is the same. Other formats, and JPEGs too small to shrink, are
    left as they are (they decode exactly as without this call).
    """
    target = DRAFT_MARGIN * short_side
    if img.format in DRAFT_FORMATS and min(img.size) >= 2 * target:
        img.draft(None, (target, target))


def decoded_size(source: bytes | Path | str, short_side: int | None = None) -> tuple[int, int]:
    """(width, height) :func:`open_image` would decode ``source`` at, read from the header only."""
    data = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(data) as img:
            if short_side:
                draft_to(img, short_side)
            return img.size


def open_image(
    source: Path | str | bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    short_side: int | None = None,
) -> Image.Image:
    """Decode a file (or bytes) to an upright RGB image.

    EXIF orientation is applied. Images whose header claims more than ``max_pixels`` are refused
    before any pixel is decoded (decompression-bomb guard). With ``short_side`` (the model's
    resize), a large JPEG is decoded at a reduced scale that still covers it ``DRAFT_MARGIN``
    times over (:func:`draft_to`); the image is then smaller than the file says. Raises
    :class:`ImageLoadError`.
    """
    data = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(data) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageLoadError(f"{width}x{height} is over the {max_pixels:,}-pixel limit")
                if short_side:
                    draft_to(img, short_side)
                img.load()
                img = ImageOps.exif_transpose(img) or img
                return to_rgb(img)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"decompression-bomb guard: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(f"corrupt or truncated image: {exc}") from None


def resize_short_side(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Scale so the shorter side is ``size`` pixels, keeping the aspect ratio."""
    w, h = img.size
    if min(w, h) == size:
        return img
    new = (size, max(1, round(h * size / w))) if w <= h else (max(1, round(w * size / h)), size)
    return img.resize(new, _RESAMPLE[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left = max(0, (w - size) // 2)
    top = max(0, (h - size) // 2)
    return img.crop((left, top, left + size, top + size))


def normalize(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """HWC uint8 -> CHW float32 normalised with the spec's mean/std."""
    arr = rgb.astype(np.float32) / 255.0
    arr = (arr - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB PIL image -> CHW float32 array, the eval/inference transform."""
    img = center_crop(resize_short_side(img, spec.resize, spec.interpolation), spec.image_size)
    return normalize(np.asarray(img, dtype=np.uint8), spec)


def load_and_preprocess(
    source: Path | str | bytes, spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode (a large JPEG at a reduced scale that still covers ``spec.resize`` 4x over) and
    :func:`preprocess`: the one path from a file to the model's input."""
    return preprocess(open_image(source, max_pixels=max_pixels, short_side=spec.resize), spec)


# One input image: a file path, the bytes of an image file, a decoded PIL image, or an HxWx3 (RGB)
# / HxW (grayscale) uint8 array.
Source = Path | str | bytes | bytearray | Image.Image | np.ndarray


def check_array(arr: np.ndarray) -> None:
    """Raise ValueError (naming the shape and dtype, and the likely fix) unless ``arr`` is an
    HxWx3 RGB or HxW grayscale uint8 image."""
    shape = tuple(arr.shape)
    if arr.dtype == np.uint8 and 0 not in shape and (arr.ndim == 2 or arr.shape[2:] == (3,)):
        return
    if arr.ndim == 4:
        hint = "for several images pass a list of HxWx3 arrays"
    elif arr.ndim == 3 and shape[0] in (1, 3) and shape[2] not in (1, 3):
        hint = "this looks channels-first: use arr.transpose(1, 2, 0)"
    elif arr.ndim == 3 and shape[2] == 4:
        hint = "RGBA: drop the alpha channel with arr[..., :3]"
    elif arr.ndim == 3 and shape[2] == 1:
        hint = "grayscale: use arr[..., 0]"
    elif arr.dtype != np.uint8 and arr.ndim in (2, 3):
        hint = "scale to 0-255 and convert with .astype(np.uint8)"
    else:
        hint = "pass one image as an HxWx3 array"
    raise ValueError(
        f"array of shape {shape} and dtype {arr.dtype}: expected an HxWx3 (RGB) or HxW "
        f"(grayscale) uint8 image; {hint}"
    )


def image_from_array(arr: np.ndarray) -> Image.Image:
    """HxWx3 (RGB) or HxW (grayscale) uint8 array -> RGB PIL image (see :func:`check_array`)."""
    check_array(arr)
    return to_rgb(Image.fromarray(np.ascontiguousarray(arr)))


def upright_rgb(img: Image.Image) -> Image.Image:
    """A decoded PIL image treated like the file it came from: EXIF orientation applied, RGB.

    Always a new image: the caller's object is left as it was.
    """
    return to_rgb(ImageOps.exif_transpose(img))


def describe_source(source: Source, index: int) -> str:
    """How a result names its input: the path, or ``<bytes #i>`` / ``<array #i>`` / ``<image #i>``
    (a PIL image opened from a file is named by that file)."""
    if isinstance(source, bytes | bytearray):
        return f"<bytes #{index}>"
    if isinstance(source, np.ndarray):
        return f"<array #{index}>"
    if isinstance(source, Image.Image):
        return str(getattr(source, "filename", "") or f"<image #{index}>")
    return str(source)


def load_one(source: Source, spec: PreprocessSpec, max_pixels: int) -> np.ndarray | str:
    """The preprocessed CHW array, or the error message for a file that cannot be used.

    An array of the wrong shape or dtype raises ValueError (a caller's mistake, not bad data);
    ``max_pixels`` guards decoding only, so it does not apply to PIL images and arrays.
    """
    if isinstance(source, np.ndarray):
        return preprocess(image_from_array(source), spec)
    if isinstance(source, Image.Image):
        try:  # a lazily opened image decodes here, and may be truncated or already closed
            return preprocess(upright_rgb(source), spec)
        except (OSError, SyntaxError, ValueError, EOFError, AssertionError) as exc:
            # PIL asserts when the file of a not-yet-loaded image was closed (a `with` block).
            detail = str(exc) or "its file was closed before it was loaded (call .load() first)"
            return f"cannot decode the PIL image: {detail}"
    if isinstance(source, str | Path) and not Path(source).is_file():
        return "is a folder, not a file" if Path(source).is_dir() else "file not found"
    try:
        return load_and_preprocess(source, spec, max_pixels)
    except ImageLoadError as exc:
        return str(exc)
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"


def preprocess_batches(
    sources: Sequence[Source],
    spec: PreprocessSpec,
    batch_size: int = 32,
    workers: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[tuple[list[int], np.ndarray | None, dict[int, str]]]:
    """Decode + preprocess in chunks of ``batch_size``: yields (indices of the good inputs,
    their (n, 3, H, W) float32 batch or None, {index: error} for the bad ones).

    Decoding runs on ``workers`` threads (PIL releases the GIL while decoding and resizing).
    """
    pool = ThreadPoolExecutor(workers) if workers > 1 and len(sources) > 1 else None
    try:
        for start in range(0, len(sources), batch_size):
            chunk = sources[start : start + batch_size]
            jobs = (pool.map if pool else map)(lambda s: load_one(s, spec, max_pixels), chunk)
            good, arrays, errors = [], [], {}
            for offset, result in enumerate(jobs):
                if isinstance(result, str):
                    errors[start + offset] = result
                else:
                    good.append(start + offset)
                    arrays.append(result)
            yield good, (np.stack(arrays) if arrays else None), errors
    finally:
        if pool:
            pool.shutdown()


def list_images(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given; folders expanded recursively (sorted, hidden files skipped).

    Every non-hidden file of a folder is kept, so a stray non-image shows up as an error row
    instead of vanishing silently. A missing path is kept too (it becomes an error row).
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            out.append(path)
    return out
