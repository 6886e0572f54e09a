"""What a small decoded copy of an image says about it: a perceptual hash and how flat it is.

Computed in the scan's worker processes (:func:`visionops.data.inspect_file.inspect_file`) from
the copy that was decoded anyway to prove the file readable, so no file is decoded twice.

**Perceptual hash** (:func:`perceptual_hash`, near-duplicate detection): the image is box-filtered
to 64 x 64 grayscale (aspect ignored), its 2-D DCT taken, and each of the 16 x 16 lowest
frequencies becomes one bit: above their median or not. 256 bits, stored as 64 hex characters.
Measured on 40 photos of ``clothing-small`` (3,409 photos of clothes on plain backgrounds,
decoded as below): a PNG copy, a JPEG re-encode at quality 55, a half-size and a quarter-size copy
all stay within 18 bits of the original; the closest pair of *different* photos in the whole set
is 34 bits apart (the same skirt photographed twice), the next 36, then 48. The 64-bit pHash of
the usual libraries (8 x 8 frequencies) could not separate them: distinct photos of garments laid
out the same way came within 4 bits. Crops of 5 % or more are *not* caught (over 100 bits).

JPEGs are decoded with libjpeg's DCT scaling to the smallest scale that keeps both sides at or
above 64 px (:data:`DRAFT_SIZE`): every block is still parsed (truncation is still caught), and a
copy saved at half size hashes like the original. At 1/8 scale instead, a PNG copy drifted 24 bits
and a half-size copy 38.

**Flatness** (:func:`flatness`, junk detection): the share of pixels in the image's most common
colour (4 bits per channel) and the standard deviation of its gray levels (0-255), both on the
64 x 64 copy. A blank frame or an "image not found" graphic is mostly one colour; no photo of
``clothing-small`` has more than 62 % of its pixels in one colour or a gray std below 7.4.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIDE = 64  # pixels: the square the image is box-filtered to before hashing and measuring
BLOCK = 16  # lowest DCT frequencies kept per axis: BLOCK**2 = 256 bits
HASH_HEX = BLOCK * BLOCK // 4  # hex characters of a hash
DRAFT_SIZE = (SIDE, SIDE)  # JPEG DCT scaling never goes below this


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: ``D @ x`` is the DCT of the column vector ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


_LOW = _dct_matrix(SIDE)[:BLOCK]  # (BLOCK, SIDE): only the low frequencies are ever needed


def small_copy(img: Image.Image) -> Image.Image:
    """The ``SIDE x SIDE`` RGB box-filtered copy both signals are computed on."""
    return img.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BOX)


def perceptual_hash(small: Image.Image) -> str:
    """256-bit DCT hash of a :func:`small_copy`, as 64 hex characters."""
    gray = np.asarray(small.convert("L"), dtype=np.float64)
    low = (_LOW @ gray @ _LOW.T).ravel()
    return np.packbits(low > np.median(low)).tobytes().hex()


def flatness(small: Image.Image) -> tuple[float, float]:
    """(share of pixels in the most common 4-bit-per-channel colour, gray-level std 0-255)."""
    rgb = np.asarray(small, dtype=np.uint8)
    q = (rgb >> 4).astype(np.int32)
    key = (q[..., 0] << 8) | (q[..., 1] << 4) | q[..., 2]
    dominant = np.bincount(key.ravel(), minlength=4096).max() / key.size
    gray = np.asarray(small.convert("L"), dtype=np.float64)
    return round(float(dominant), 4), round(float(gray.std()), 2)


def hash_words(hashes: list[str]) -> np.ndarray:
    """(N, 4) uint64 words of 256-bit hex hashes, for fast Hamming distances."""
    raw = b"".join(bytes.fromhex(h) for h in hashes)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(hashes), -1)


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes."""
    return int.bit_count(int(a, 16) ^ int(b, 16))
