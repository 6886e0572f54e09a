"""Reading and vetting uploads for ``POST /predict``, before any pixel is decoded.

The request body is counted while it streams in and refused past the limit (nothing is buffered
beyond it; multipart file parts spill to temporary files past 1 MiB); its bytes are also taken
from the service-wide upload budget (:class:`~visionops.serve.guards.Load`: 503 when full).
Each file's header is then sniffed with Pillow restricted to plain raster formats: unknown bytes
are "not an image" (415), a known format with a broken header, absurd dimensions or a side under
``validate.min_side`` is "unusable image" (422, the rules ``visionops validate`` applies). The
sniff also says how many pixels decoding will produce (a large JPEG decodes at reduced scale:
:func:`visionops.images.draft_to`), which the per-request pixel budget is checked against.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from visionops.images import draft_to
from visionops.serve.guards import RETRY_AFTER_S, Load

# Raster formats a photo arrives in. Everything else (EPS/PDF, which Pillow hands to
# Ghostscript; PSD; ICO; ...) is refused as "not an image" before it is parsed further.
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers on top of the images themselves


class UploadRejected(Exception):
    """The whole request is refused: ``status`` and a one-line ``detail`` for the client."""

    def __init__(self, status: int, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


@dataclass
class Upload:
    filename: str
    data: bytes


class Reservation:
    """Upload bytes one request holds in the service-wide budget; given back by :meth:`close`."""

    def __init__(self, load: Load | None) -> None:
        self.load = load
        self.held = 0

    def take(self, n: int) -> None:
        if self.load is None:
            return
        if not self.load.take_bytes(n):
            self.load.refused_busy += 1
            raise UploadRejected(
                503,
                f"server busy: uploads in flight hold "
                f"{self.load.buffered_bytes / 2**20:.0f} MB (serve.max_buffered_mb); "
                f"retry in {RETRY_AFTER_S} s",
                retry_after=RETRY_AFTER_S,
            )
        self.held += n

    def close(self) -> None:
        if self.load is not None:
            self.load.give_bytes(self.held)
        self.held = 0


async def _limited(
    stream: AsyncIterator[bytes], limit: int, limit_mb: float, reservation: Reservation
):
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise UploadRejected(
                413,
                f"upload too large: more than {limit_mb:g} MB in one request "
                "(serve.max_upload_mb); send fewer or smaller images",
            )
        reservation.take(len(chunk))
        yield chunk


async def read_uploads(
    request: Request,
    max_bytes: int,
    max_files: int,
    max_upload_mb: float,
    reservation: Reservation | None = None,
) -> list[Upload]:
    """The files of a multipart request (any field name; ``files`` by convention) or a raw
    ``image/*`` / ``application/octet-stream`` body. Raises :class:`UploadRejected`; the bytes
    read are held in ``reservation`` (the caller closes it when the request is done)."""
    reservation = reservation or Reservation(None)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_SLACK:
        raise UploadRejected(
            413,
            f"upload too large: {int(declared) / 2**20:.1f} MB declared, the limit is "
            f"{max_upload_mb:g} MB per request (serve.max_upload_mb)",
        )
    ctype = request.headers.get("content-type", "")
    kind = ctype.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        parser = MultiPartParser(
            request.headers,
            _limited(request.stream(), max_bytes + MULTIPART_SLACK, max_upload_mb, reservation),
            max_files=max_files,
            max_fields=32,
        )
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            if exc.message.startswith("Too many files"):
                raise UploadRejected(
                    413, f"too many files: at most {max_files} per request (serve.max_files)"
                ) from None
            raise UploadRejected(400, f"malformed multipart body: {exc.message}") from None
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        try:
            uploads = [
                Upload(f.filename or f"file{i}", await f.read()) for i, f in enumerate(files)
            ]
        finally:
            await form.close()
    elif kind.startswith("image/") or kind == "application/octet-stream":
        body = bytearray()
        async for chunk in _limited(request.stream(), max_bytes, max_upload_mb, reservation):
            body.extend(chunk)
        uploads = [Upload(request.headers.get("x-filename", "upload"), bytes(body))]
    else:
        raise UploadRejected(
            415,
            f"unsupported content type {kind or '(none)'!r}: send multipart/form-data with "
            "one or more image files in the field 'files' (or a raw image/* body)",
        )
    if not uploads:
        raise UploadRejected(
            400, "no file in the request: send images in the multipart field 'files'"
        )
    return uploads


@functools.cache
def _formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin; Image.open(formats=...) only knows registered ones
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


@dataclass(frozen=True)
class Sniffed:
    """A file's verdict from its header: ``refusal`` (HTTP status, reason) or None when it looks
    usable; ``pixels``: how many decoding will produce (0 when refused)."""

    refusal: tuple[int, str] | None
    pixels: int = 0


def sniff(
    data: bytes, max_pixels: int, min_side: int = 1, short_side: int | None = None
) -> Sniffed:
    """Judge ``data`` from its header only (no pixel decoding).

    415 for bytes that are not an image of an allowed format; 422 for a broken header, more than
    ``max_pixels`` pixels (decompression bombs) or a side shorter than ``min_side``. ``pixels``
    counts what :func:`visionops.images.open_image` will decode with ``short_side`` (the model's
    resize): a large JPEG at 1/2 to 1/8 scale, anything else in full.
    """
    if not data:
        return Sniffed((415, "empty file (0 bytes): not an image"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_formats()) as img:
                width, height = img.size
                if short_side:
                    draft_to(img, short_side)
                decoded = img.size
    except Image.DecompressionBombError:
        return Sniffed(
            (
                422,
                f"image dimensions over the {max_pixels:,}-pixel limit (decompression-bomb guard)",
            )
        )
    except Image.UnidentifiedImageError:
        return Sniffed((415, "not an image: send a JPEG, PNG, WebP, GIF, BMP or TIFF file"))
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return Sniffed((422, f"corrupt image header: {exc}"))
    if width * height > max_pixels:
        return Sniffed(
            (
                422,
                f"{width}x{height} is over the {max_pixels:,}-pixel limit "
                "(decompression-bomb guard)",
            )
        )
    if min(width, height) < min_side:
        return Sniffed((422, f"too small: {width}x{height} < validate.min_side {min_side}"))
    return Sniffed(None, decoded[0] * decoded[1])
