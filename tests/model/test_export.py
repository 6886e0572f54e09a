"""export: a real Lite0 checkpoint (64 px) -> ONNX, parity gate, dynamic batch, metadata, int8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from tests.toy_project import make_checkpoint, make_project
from visionops.config import Config, load_config
from visionops.errors import VisionOpsError
from visionops.export import stage as export
from visionops.images import PreprocessSpec, load_and_preprocess
from visionops.inference import Predictor
from visionops.onnxrt import softmax
from visionops.paths import stage_paths
from visionops.train.checkpoint import load_model

pytestmark = pytest.mark.model
CLASSES = ("blue", "green", "red")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, export.ExportResult]:
    cfg = make_project(tmp_path_factory.mktemp("export") / "proj")
    make_checkpoint(cfg, CLASSES)
    return cfg, export.run(cfg)


def test_parity_gate_passes_and_is_reported(exported) -> None:
    cfg, result = exported
    report = result.report
    assert result.onnx_path == stage_paths(cfg).onnx_model and result.onnx_path.exists()
    assert report["parity"]["passed"] is True
    assert report["parity"]["n_images"] == 9
    assert report["parity"]["top1_agreement"] == 1.0
    assert report["parity"]["max_abs_diff_prob"] <= cfg.export.parity_max_abs_diff
    assert report["val_accuracy_onnx"] == report["val_accuracy_torch"]
    assert report["opset"] == cfg.export.opset
    assert sorted(p.name for p in result.onnx_path.parent.iterdir()) == [
        "model.onnx",
        "report.json",
    ]


def test_dynamic_batch_1_3_17(exported) -> None:
    cfg, result = exported
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("input", "logits")
    assert isinstance(inp.shape[0], str)  # symbolic batch axis
    x = np.random.default_rng(0).standard_normal((17, 3, 64, 64)).astype(np.float32)
    results = {n: session.run(None, {"input": x[:n]})[0] for n in (1, 3, 17)}
    for n, logits in results.items():
        assert logits.shape == (n, len(CLASSES))
    np.testing.assert_allclose(results[1][0], results[17][0], atol=1e-4)
    np.testing.assert_allclose(results[3], results[17][:3], atol=1e-4)
    assert result.report["dynamic_batch_checked"] == [1, 3, 17]


def test_metadata_round_trip(exported) -> None:
    cfg, result = exported
    _, ckpt = load_model(stage_paths(cfg).checkpoint_best)
    predictor = Predictor(result.onnx_path)
    assert predictor.labels == list(CLASSES)
    assert predictor.spec == PreprocessSpec.from_dict(ckpt["preprocess"])
    assert predictor.metadata["visionops.backbone"] == "efficientnet_lite0"
    for key in ("git_commit", "data_version", "params_hash"):
        assert predictor.metadata[f"visionops.{key}"] == result.report[key]


def test_parity_on_generated_images_through_the_inference_path(exported, tmp_path: Path) -> None:
    """Odd sizes and modes (grey, RGBA, palette, tall, wide) via Predictor vs PyTorch eval."""
    import torch

    cfg, result = exported
    rng = np.random.default_rng(1)
    files = []
    for i, (mode, size) in enumerate(
        [
            ("RGB", (50, 90)),
            ("L", (120, 64)),
            ("RGBA", (64, 64)),
            ("P", (99, 77)),
            ("RGB", (300, 40)),
        ]
    ):
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(arr).convert(mode)
        files.append(tmp_path / f"{i}.png")
        img.save(files[-1])
    predictor = Predictor(result.onnx_path)
    model, _ = load_model(stage_paths(cfg).checkpoint_best)
    batch = np.stack([load_and_preprocess(f, predictor.spec) for f in files])
    with torch.inference_mode():
        expected = softmax(model(torch.from_numpy(batch)).numpy())
    got = np.stack([p.probabilities for p in predictor.predict(files)])
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() <= 1e-4


def _fresh(tmp_path: Path, params: dict | None = None, **checkpoint) -> Config:
    cfg = make_project(
        tmp_path / "proj", per_split={"train": 2, "val": 2, "test": 1}, params=params
    )
    make_checkpoint(cfg, CLASSES, **checkpoint)
    return cfg


def test_failed_parity_leaves_no_model_behind(tmp_path: Path) -> None:
    cfg = _fresh(tmp_path, params={"export": {"parity_max_abs_diff": 1e-15}}, fit=True)
    stale = stage_paths(cfg).onnx_model
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"an old export")
    with pytest.raises(VisionOpsError, match="parity gate failed.*parity_max_abs_diff"):
        export.run(cfg)
    assert list(stale.parent.iterdir()) == []  # neither the stale file nor a temporary one


def test_parity_is_not_correctness(tmp_path: Path) -> None:
    """A faithfully exported but broken model (chance accuracy) is refused when training
    recorded a much better validation accuracy for the checkpoint."""
    cfg = _fresh(tmp_path, fit=False, metrics={"val_acc": 1.0})
    with pytest.raises(VisionOpsError, match="training recorded 1.000"):
        export.run(cfg)
    assert not stage_paths(cfg).onnx_model.exists()


@pytest.mark.slow
def test_int8_is_measured_and_loadable(exported) -> None:
    cfg, _ = exported
    cfg = load_config(cfg.root / "params.yaml", overrides={"export.int8": True})
    result = export.run(cfg)
    q = result.report["int8"]
    assert "error" not in q, q
    assert q["test_images"] == 9 and q["calibration_images"] == 12
    assert -1.0 <= q["accuracy_delta"] <= 1.0 and q["speedup"] > 0
    predictor = Predictor(cfg.root / q["path"])
    assert predictor.labels == list(CLASSES)
    assert predictor.metadata["visionops.quantization"].startswith("int8")
