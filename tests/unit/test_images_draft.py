"""Large JPEGs decode at reduced scale (PIL draft mode) in the one preprocessing (issue 12).

Draft decoding must not change what the model sees beyond a tiny amount: a photo's probabilities
with and without it are compared here through a real ONNX model, and JPEGs too small to shrink
must decode bit for bit as before (so export's parity gate and every metric are unchanged).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e.serve_support import tiny_cnn
from visionops.export.onnx_model import OnnxClassifier
from visionops.images import (
    DRAFT_MARGIN,
    PreprocessSpec,
    decoded_size,
    load_and_preprocess,
    open_image,
    preprocess,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = sorted((ROOT / "sample" / "clothing-mini").glob("*/*.jpg"))[::80]
SPEC = PreprocessSpec(image_size=240, resize=274)


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def upscaled(path: Path, side: int) -> bytes:
    """A real photo's centre square blown up to ``side`` x ``side``: a big JPEG with photo
    content."""
    img = Image.open(path).convert("RGB")
    s = min(img.size)
    left, top = (img.width - s) // 2, (img.height - s) // 2
    square = img.crop((left, top, left + s, top + s))
    return jpeg(square.resize((side, side), Image.Resampling.BICUBIC))


def test_small_jpegs_decode_exactly_as_before():
    for path in PHOTOS:
        data = path.read_bytes()  # 144 px short side: nothing to shrink for a 274 px resize
        full = np.asarray(open_image(data))
        assert np.array_equal(np.asarray(open_image(data, short_side=SPEC.resize)), full)


@pytest.mark.parametrize(("short_side", "scale"), [(2000, 1), (2200, 2), (4400, 4)])
def test_big_jpeg_decodes_smaller_but_still_covers_the_resize(short_side, scale):
    """The largest of 1/2, 1/4, 1/8 that keeps DRAFT_MARGIN x the resize (274 -> 1096 px)."""
    data = upscaled(PHOTOS[0], short_side)
    full = open_image(data)
    small = open_image(data, short_side=SPEC.resize)
    assert decoded_size(data, SPEC.resize) == small.size  # what the pixel budget counts
    assert small.size == tuple(-(-side // scale) for side in full.size)
    assert min(small.size) >= DRAFT_MARGIN * SPEC.resize


def test_draft_changes_probabilities_by_a_tiny_amount(tmp_path):
    """Photos 5-40x larger than the model needs: the preprocessed tensors differ by well under
    one grey level on average, and a real ONNX model's probabilities by < 0.01."""
    model = OnnxClassifier(tiny_cnn(tmp_path / "m.onnx"), device="cpu")
    spec = model.spec
    full, draft = [], []
    for path in PHOTOS:
        for factor in (5, 40):
            img = Image.open(path).convert("RGB")
            data = jpeg(img.resize((img.width * factor // 4, img.height * factor // 4)))
            full.append(preprocess(open_image(data), spec))  # every pixel decoded
            draft.append(load_and_preprocess(data, spec))  # the path everything uses
    full, draft = np.stack(full), np.stack(draft)
    grey_level = 1 / 255 / min(spec.std)
    assert np.abs(full - draft).mean() < 0.5 * grey_level
    delta = np.abs(model.predict_arrays(full) - model.predict_arrays(draft))
    assert delta.max() < 0.01, delta.max()
