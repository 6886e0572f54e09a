"""The Python API: ``from visionops import Predictor`` and every input kind ``predict`` takes.

One image (a path as str or Path, image-file bytes, a PIL image, an HxWx3 / HxW uint8 array) gives
one Prediction; a list (or tuple, or generator) gives a list in the same order. Hand-built ONNX
colour models, no torch.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.toy_onnx import colour_image, colour_model
from visionops import Prediction, Predictor

pytestmark = pytest.mark.unit
LABELS = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor(colour_model(tmp_path_factory.mktemp("model") / "colour.onnx", LABELS))


@pytest.fixture(scope="module")
def red(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_image(tmp_path_factory.mktemp("img") / "red.png", "red")


KINDS = {
    "str": lambda path: str(path),
    "Path": lambda path: path,
    "bytes": lambda path: path.read_bytes(),
    "bytearray": lambda path: bytearray(path.read_bytes()),
    "PIL image": lambda path: Image.open(path).copy(),  # decoded, no file behind it
    "PIL image opened from a file": lambda path: Image.open(path),  # lazy: decodes on use
    "RGB array": lambda path: np.asarray(Image.open(path).convert("RGB")),
}


@pytest.mark.parametrize("kind", KINDS)
def test_one_image_of_each_kind_gives_one_prediction(
    predictor: Predictor, red: Path, kind: str
) -> None:
    result = predictor.predict(KINDS[kind](red))
    assert isinstance(result, Prediction)
    assert result.error is None
    assert result.label == "red"
    expected = predictor.predict([red])[0]  # the file itself
    np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=1e-6)


def test_a_path_string_is_one_image_not_its_characters(predictor: Predictor, red: Path) -> None:
    result = predictor.predict(str(red))  # was: one "file not found" per character
    assert isinstance(result, Prediction) and result.source == str(red)
    missing = predictor.predict("no/such/image.jpg")
    assert isinstance(missing, Prediction)
    assert (missing.label, missing.error) == (None, "file not found")


def test_a_collection_gives_a_list_in_order(predictor: Predictor, tmp_path: Path) -> None:
    files = {c: colour_image(tmp_path / f"{c}.jpg", c) for c in LABELS}
    inputs = [
        files["red"],
        str(files["green"]),
        files["blue"].read_bytes(),
        Image.open(files["green"]),
        np.asarray(Image.open(files["blue"])),
        tmp_path / "missing.png",
    ]
    results = predictor.predict(inputs, top_k=2)
    assert isinstance(results, list) and len(results) == len(inputs)
    assert [r.label for r in results] == ["red", "green", "blue", "green", "blue", None]
    assert [r.source for r in results] == [
        str(files["red"]),
        str(files["green"]),
        "<bytes #2>",
        str(files["green"]),  # a PIL image opened from a file is named by it
        "<array #4>",
        str(tmp_path / "missing.png"),
    ]
    assert results[-1].error == "file not found"
    assert [r.label for r in predictor.predict(tuple(inputs[:2]))] == ["red", "green"]
    assert [r.label for r in predictor.predict(x for x in inputs[:1])] == ["red"]
    assert predictor.predict([]) == []
    assert [r.label for r in predictor.predict([files["red"]])] == ["red"]  # a list of one


def test_array_views_need_not_be_contiguous(predictor: Predictor, red: Path) -> None:
    flipped = np.asarray(Image.open(red))[:, ::-1]  # a negative-stride view
    a, b = predictor.predict([flipped, np.ascontiguousarray(flipped)])
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_grayscale_array_is_read_as_grayscale(predictor: Predictor, red: Path) -> None:
    grey = Image.open(red).convert("L")
    from_array = predictor.predict(np.asarray(grey))
    from_image = predictor.predict(grey)
    np.testing.assert_allclose(from_array.probabilities, from_image.probabilities, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "dtype", "hint"),
    [
        ((40, 48, 3), np.float32, "astype(np.uint8)"),
        ((2, 40, 48, 3), np.uint8, "pass a list of HxWx3 arrays"),
        ((3, 40, 48), np.uint8, "transpose(1, 2, 0)"),
        ((40, 48, 4), np.uint8, "arr[..., :3]"),
        ((40, 48, 1), np.uint8, "arr[..., 0]"),
        ((0, 48, 3), np.uint8, "HxWx3"),
        ((48,), np.uint8, "HxWx3"),
    ],
)
def test_bad_arrays_are_refused_naming_the_shape(
    predictor: Predictor, shape: tuple, dtype: type, hint: str
) -> None:
    bad = np.zeros(shape, dtype)
    named = re.escape(f"shape {tuple(shape)} and dtype {np.dtype(dtype)}")
    with pytest.raises(ValueError, match=rf"{named}.*{re.escape(hint)}"):
        predictor.predict(bad)
    with pytest.raises(ValueError, match=r"^input #1: array of shape"):
        predictor.predict([np.zeros((8, 8, 3), np.uint8), bad])


@pytest.mark.parametrize("bad", [5, None, 2.5, {"a": 1}, [object()], [["nested.jpg"]]])
def test_other_kinds_are_a_type_error(predictor: Predictor, bad: object) -> None:
    with pytest.raises(TypeError, match="is not an image; pass a path"):
        predictor.predict(bad)


def test_a_closed_pil_image_is_an_error_row_not_a_crash(predictor: Predictor, red: Path) -> None:
    with Image.open(red) as img:
        pass  # closed before its pixels were loaded
    result = predictor.predict(img)
    assert result.label is None and "closed before it was loaded" in result.error


def test_iter_predict_takes_the_same_inputs(predictor: Predictor, red: Path) -> None:
    assert [r.label for r in predictor.iter_predict(str(red))] == ["red"]
    with pytest.raises(ValueError, match="shape"):
        predictor.iter_predict([np.zeros((2, 2, 2, 2), np.uint8)])  # raises before iterating


def test_import_visionops_is_cheap_and_exports_predictor(red: Path, tmp_path: Path) -> None:
    model = colour_model(tmp_path / "m.onnx", LABELS)
    heavy = ("numpy", "onnxruntime", "torch", "mlflow", "PIL", "importlib.metadata")
    code = (
        "import sys\n"
        "import visionops\n"
        f"loaded = [m for m in {heavy!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "from visionops import Predictor\n"
        f"print(visionops.__version__, Predictor({str(model)!r}).predict({str(red)!r}).label)\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [version("visionops"), "red"]


def test_unknown_attribute_is_an_attribute_error() -> None:
    import visionops

    with pytest.raises(AttributeError, match="no attribute 'Predicter'"):
        visionops.Predicter  # noqa: B018
    assert {"Predictor", "Prediction", "__version__"} <= set(dir(visionops))
