"""Predictor and the predict / evaluate-folder CLI on hand-built ONNX models (no torch)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.toy_onnx import TOY_SPEC, colour_folder, colour_image, colour_model
from visionops.cli import main
from visionops.errors import VisionOpsError
from visionops.export.onnx_meta import PREPROCESS
from visionops.images import PreprocessSpec, list_images
from visionops.inference import Predictor
from visionops.onnxrt import CPU
from visionops.registry.model_uri import parse_model_uri

pytestmark = pytest.mark.unit
LABELS = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_model(tmp_path_factory.mktemp("model") / "colour.onnx", LABELS)


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    """Good images in three formats plus every kind of bad file a user folder holds."""
    root = tmp_path / "imgs"
    colour_image(root / "a_red.jpg", "red")
    colour_image(root / "b_green.png", "green", seed=1)
    colour_image(root / "sub" / "c_blue.bmp", "blue", seed=2)
    (root / "d_notes.txt").write_text("not an image")
    (root / "e_empty.jpg").write_bytes(b"")
    good = (root / "a_red.jpg").read_bytes()
    (root / "f_truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "g_garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    (root / ".hidden.jpg").write_bytes(good)
    return root


def test_inference_modules_never_import_torch(model_path: Path, tmp_path: Path) -> None:
    image = colour_image(tmp_path / "x.png", "red")
    code = (
        "import sys\n"
        "import visionops.inference, visionops.cli.predict, visionops.registry.scoring\n"
        "import visionops.registry.lineage, visionops.registry.model_uri, visionops.export\n"
        "import visionops.export.onnx_model, visionops.serve.app\n"
        f"p = visionops.inference.Predictor({str(model_path)!r})\n"
        f"assert p.predict([{str(image)!r}])[0].label == 'red'\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad[:5]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_predictor_reads_labels_and_preprocessing_from_metadata(model_path: Path) -> None:
    predictor = Predictor(model_path)
    assert predictor.labels == LABELS
    assert predictor.spec == TOY_SPEC
    assert predictor.provider == CPU  # no GPU on the test machines; CUDA is never claimed falsely
    assert predictor.metadata["visionops.git_commit"] == "abc"
    assert predictor.info()["preprocess"]["image_size"] == TOY_SPEC.image_size


def test_metadata_round_trip_with_a_custom_spec(tmp_path: Path) -> None:
    spec = PreprocessSpec(
        image_size=40, resize=52, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), interpolation="bicubic"
    )
    labels = ["red", "blue", "green"]  # index order is the model's, not alphabetical
    predictor = Predictor(colour_model(tmp_path / "m.onnx", labels, spec=spec))
    assert predictor.labels == labels
    assert predictor.spec == spec


def test_folder_with_corrupt_and_non_image_files(model_path: Path, messy_folder: Path) -> None:
    files = list_images([messy_folder, messy_folder / "missing.jpg"])
    assert ".hidden.jpg" not in {f.name for f in files}
    results = Predictor(model_path, batch_size=2).predict(files, top_k=2)
    by_name = {Path(r.source).name: r for r in results}
    assert [Path(r.source).name for r in results] == [f.name for f in files]  # order kept
    assert by_name["a_red.jpg"].label == "red"
    assert by_name["b_green.png"].label == "green"
    assert by_name["c_blue.bmp"].label == "blue"
    for name in ("d_notes.txt", "e_empty.jpg", "f_truncated.jpg", "g_garbage.png", "missing.jpg"):
        assert by_name[name].error, name
        assert by_name[name].label is None
    assert by_name["missing.jpg"].error == "file not found"
    assert "not an image" in by_name["d_notes.txt"].error
    good = by_name["a_red.jpg"]
    assert len(good.top_k) == 2 and good.top_k[0] == ("red", good.probability)
    assert good.probabilities.shape == (3,)
    assert good.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_bytes_and_batching_give_the_same_answer(model_path: Path, tmp_path: Path) -> None:
    files = [
        colour_image(tmp_path / f"{i}.png", c, seed=i)
        for i, c in enumerate(["red", "green", "blue", "red", "blue"])
    ]
    one_by_one = Predictor(model_path, batch_size=1).predict(files)
    batched = Predictor(model_path, batch_size=32).predict([f.read_bytes() for f in files])
    for a, b in zip(one_by_one, batched, strict=True):
        assert a.label == b.label
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    assert batched[0].source == "<bytes #0>"


def test_predict_is_thread_safe(model_path: Path, tmp_path: Path) -> None:
    files = [
        colour_image(tmp_path / f"{i}.png", c, seed=i)
        for i, c in enumerate(["red", "green", "blue"] * 3)
    ]
    predictor = Predictor(model_path, batch_size=4)
    expected = [p.label for p in predictor.predict(files)]
    results, errors = [], []

    def work() -> None:
        try:
            for _ in range(3):
                results.append([p.label for p in predictor.predict(files)])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [expected] * 12


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("models:/clf@champion", ("clf", "champion", None)),
        ("models:/clf/3", ("clf", None, "3")),
        ("models:/my-model@challenger/", ("my-model", "challenger", None)),
    ],
)
def test_parse_model_uri(uri: str, expected: tuple) -> None:
    assert parse_model_uri(uri) == expected


@pytest.mark.parametrize("uri", ["models:/", "models:/clf", "models:/clf/latest", "runs:/x/model"])
def test_parse_model_uri_rejects(uri: str) -> None:
    with pytest.raises(VisionOpsError, match="models:/<name>@<alias>"):
        parse_model_uri(uri)


def test_clear_errors_for_bad_models(tmp_path: Path, model_path: Path) -> None:
    with pytest.raises(VisionOpsError, match="no such model file"):
        Predictor(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(VisionOpsError, match="cannot load"):
        Predictor(tmp_path / "junk.onnx")
    stripped = onnx.load(str(model_path))
    keep = [p for p in stripped.metadata_props if p.key != PREPROCESS]
    del stripped.metadata_props[:]
    stripped.metadata_props.extend(keep)
    onnx.save(stripped, str(tmp_path / "bare.onnx"))
    with pytest.raises(VisionOpsError, match="metadata lacks visionops.preprocess"):
        Predictor(tmp_path / "bare.onnx")


def test_registry_uri_without_a_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VisionOpsError, match="no MLflow store at"):
        Predictor("models:/clf@champion", tracking_uri=f"sqlite:///{tmp_path}/none.db")
    assert not (tmp_path / "none.db").exists()


def test_device_cuda_fails_clearly_without_cuda(model_path: Path) -> None:
    try:
        Predictor(model_path, device="cuda")
    except VisionOpsError as exc:
        assert "CUDA execution provider does not load" in str(exc)
    else:  # pragma: no cover - only on a machine with a working GPU
        pytest.skip("CUDA works here")


def test_cli_predict_json_and_exit_code(model_path: Path, messy_folder: Path, capsys) -> None:
    assert main(["predict", str(model_path), str(messy_folder / "a_red.jpg"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["provider"] == CPU
    assert out["predictions"][0]["label"] == "red"
    assert len(out["predictions"][0]["top_k"]) == 3

    assert main(["predict", str(model_path), str(messy_folder), "--top-k", "1"]) == 1
    captured = capsys.readouterr()
    assert "ERROR" in captured.out and "c_blue.bmp" in captured.out
    assert "could not be classified" in captured.err


def test_cli_predict_missing_model_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["predict", str(tmp_path / "none.onnx"), str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_evaluate_folder_matches_labels_by_name(tmp_path: Path, capsys) -> None:
    # The model's label order is not the folder order, and one folder is a class it never saw.
    model = colour_model(tmp_path / "m.onnx", ["red", "blue", "green"])
    folder = colour_folder(tmp_path / "ext", {"blue": 2, "green": 2, "red": 3, "purple": 2})
    (folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    assert main(["evaluate-folder", str(model), str(folder), "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["accuracy"] == 1.0 and out["macro_f1"] == 1.0
    assert out["n_images"] == 7
    assert out["unknown_labels"] == {"purple": 2}
    assert [u["path"].endswith("broken.jpg") for u in out["unreadable"]] == [True]
    assert out["per_class"]["red"]["support"] == 3
    assert "purple (2)" in captured.err


def test_evaluate_folder_subset_of_classes(tmp_path: Path, capsys) -> None:
    model = colour_model(tmp_path / "m.onnx", LABELS)
    folder = colour_folder(tmp_path / "ext", {"red": 2})
    assert main(["evaluate-folder", str(model), str(folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["macro_f1"] == 1.0  # averaged over the classes present
    assert out["missing_classes"] == ["blue", "green"]


def test_evaluate_folder_needs_class_folders(tmp_path: Path, model_path: Path, capsys) -> None:
    colour_image(tmp_path / "flat" / "x.png", "red")
    assert main(["evaluate-folder", str(model_path), str(tmp_path / "flat")]) == 1
    assert "no class sub-folders" in capsys.readouterr().err
