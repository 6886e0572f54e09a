"""Image loading and the one preprocessing definition (PIL + numpy, no torch).

Training's eval transform, evaluation, export's parity gate and ONNX inference all go through
:func:`preprocess`, so ONNX Runtime on a raw file sees exactly the tensor PyTorch saw.
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


def open_image(source: Path | str | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a file (or bytes) to an upright RGB image.

    EXIF orientation is applied. Images whose header claims more than ``max_pixels`` are refused
    before any pixel is decoded (decompression-bomb guard). Raises :class:`ImageLoadError`.
    """
    data = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(data) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageLoadError(f"{width}x{height} is over the {max_pixels:,}-pixel limit")
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
    return preprocess(open_image(source, max_pixels=max_pixels), spec)


Source = Path | str | bytes


def describe_source(source: Source, index: int) -> str:
    return f"<bytes #{index}>" if isinstance(source, bytes | bytearray) else str(source)


def load_one(source: Source, spec: PreprocessSpec, max_pixels: int) -> np.ndarray | str:
    """The preprocessed CHW array, or the error message for a file that cannot be used."""
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
