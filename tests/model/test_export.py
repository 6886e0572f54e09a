"""export: a real Lite0 checkpoint (64 px) -> ONNX, parity gate, dynamic batch, metadata, int8
and its agreement gate."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from tests.toy_project import make_checkpoint, make_project
from visionops.config import Config, load_config
from visionops.errors import VisionOpsError
from visionops.export import int8_gate
from visionops.export import stage as export
from visionops.export.int8_files import INT8_FILE, gate_stamp, onnx_metadata
from visionops.export.onnx_meta import parse_metadata
from visionops.export.quantize import Recipe, quantize_int8, quiet_quantizer
from visionops.images import PreprocessSpec, load_and_preprocess
from visionops.inference import Predictor
from visionops.onnxrt import build_session, softmax
from visionops.paths import stage_paths
from visionops.train.checkpoint import load_model

pytestmark = pytest.mark.model
CLASSES = ("blue", "green", "red")


# A gate the toy model always passes: its 18 val+test images are too few for the default one.
EASY_GATE = {"export": {"int8_min_agreement": 0.5, "int8_max_drop": 1.0}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, export.ExportResult]:
    cfg = make_project(tmp_path_factory.mktemp("export") / "proj", params=EASY_GATE)
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
        "int8",
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
    predictor = Predictor(result.onnx_path, precision="fp32")
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


def test_int8_passes_the_gate_and_is_kept(exported) -> None:
    cfg, result = exported
    q = result.report["int8"]
    assert q["passed"] is True, q
    assert q["n_images"] == 18 and q["images"] == {"val": 9, "test": 9}  # every val+test image
    assert q["calibration_images"] == 12  # all 12 training images (fewer than the recipe's)
    assert 0.5 <= q["agreement"] <= 1.0 and q["changed"] == round((1 - q["agreement"]) * 18)
    assert q["accuracy_delta"] == pytest.approx(q["accuracy_int8"] - q["accuracy_fp32"])
    assert q["speedup"] > 0 and q["recipe"] == "minmax, 512 images, per-channel, fp32: stem"
    assert q["kept_fp32"][0] == "/body.0/body.0.0/Conv"  # the stem conv first (the default)
    folder = result.onnx_path.parent / "int8"
    assert sorted(p.name for p in folder.iterdir()) == ["gate.json", INT8_FILE]
    assert json.loads((folder / "gate.json").read_text()) == json.loads(json.dumps(q))
    assert cfg.root / q["path"] == folder / INT8_FILE
    stamp = gate_stamp(folder / INT8_FILE)
    assert stamp["passed"] is True and stamp["fp32_sha256"] == result.report["sha256"]
    assert "int8: top-1 agreement" in result.summary() and "kept ->" in result.summary()

    auto, fp32 = Predictor(result.onnx_path), Predictor(result.onnx_path, precision="fp32")
    assert (auto.precision, auto.model_path) == ("int8", folder / INT8_FILE)
    assert (fp32.precision, fp32.model_path) == ("fp32", result.onnx_path)
    assert auto.labels == list(CLASSES) and auto.spec == fp32.spec
    assert auto.metadata["visionops.quantization"].startswith("int8 static QDQ U8S8: minmax")
    assert auto.info()["precision"] == "int8"


def test_the_quantizer_prints_one_summary_line(exported, caplog, tmp_path: Path) -> None:
    """onnxruntime logs one "Increased scale[i] ..." per adjusted channel at INFO on the root
    logger; export shows one line with their count instead."""
    cfg, _ = exported
    caplog.set_level(logging.INFO)
    fp32 = stage_paths(cfg).onnx_model
    x = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
    out = tmp_path / "m.int8.onnx"
    info = quantize_int8(fp32, out, x, onnx_metadata(fp32), Recipe(images=8))
    quantizer = [r for r in caplog.records if "onnxruntime" in r.pathname]
    assert quantizer == [], quantizer[:3]
    assert "Increased scale" not in caplog.text
    ours = [r.getMessage() for r in caplog.records if r.name == "visionops.export.quantize"]
    assert ours == [info.summary()] and "weight scale(s) raised" in ours[0]

    # The toy model needs no scale adjustments; a record like onnxruntime's is counted, hidden.
    wall = {"pathname": "/x/onnxruntime/quantization/qdq_quantizer.py", "levelno": logging.INFO}
    with quiet_quantizer() as counts:
        for i in range(3):
            msg = f"Increased scale[{i}] for weight `w` by ratio 2.0 to ensure bias input `b`"
            logging.getLogger().handle(logging.makeLogRecord({**wall, "msg": msg}))
    assert counts["scales_raised"] == 3 and "Increased scale" not in caplog.text


def _gate(cfg: Config) -> dict:
    """export's int8 step alone, on the model.onnx export left (as export.run calls it)."""
    fp32 = stage_paths(cfg).onnx_model
    metadata = onnx_metadata(fp32)
    _, spec, _ = parse_metadata(metadata)
    return int8_gate.run_int8(cfg, build_session(fp32, "cpu")[0], fp32, metadata, spec)


def test_a_failed_int8_gate_keeps_fp32_and_leaves_no_int8(exported) -> None:
    """A gate nothing can pass (agreement > 100 %; params.yaml refuses it, hence model_copy)."""
    cfg, result = exported
    strict = cfg.export.model_copy(update={"int8_min_agreement": 1.01})
    q = _gate(cfg.model_copy(update={"export": strict}))
    assert q["passed"] is False and q["path"] is None and q["n_images"] == 18
    assert "export.int8_min_agreement 101.00%" in q["reason"]
    folder = result.onnx_path.parent / "int8"
    assert sorted(p.name for p in folder.iterdir()) == ["gate.json"]  # no model, no temp file
    assert hashlib.sha256(result.onnx_path.read_bytes()).hexdigest() == result.report["sha256"]
    assert "not kept: top-1 agreement" in int8_gate.summary(q)
    assert Predictor(result.onnx_path).precision == "fp32"
    with pytest.raises(VisionOpsError, match="no int8 one beside it"):
        Predictor(result.onnx_path, precision="int8")


def test_a_gate_that_cannot_run_never_fails_the_export(exported, monkeypatch) -> None:
    cfg, _ = exported

    def broken(*args, **kwargs):
        raise RuntimeError("calibration exploded")

    monkeypatch.setattr(int8_gate, "quantize_int8", broken)
    q = _gate(cfg)
    assert q["passed"] is False and "RuntimeError: calibration exploded" in q["reason"]
    assert sorted(p.name for p in (stage_paths(cfg).onnx_model.parent / "int8").iterdir()) == [
        "gate.json"
    ]


def test_int8_off_writes_only_the_reason(exported) -> None:
    cfg, _ = exported
    cfg = load_config(cfg.root / "params.yaml", overrides={"export.int8": False})
    block = int8_gate.run_int8(cfg, None, stage_paths(cfg).onnx_model, {}, None)
    assert block == {
        "enabled": False,
        "passed": False,
        "path": None,
        "reason": "export.int8 is off",
    }
    folder = stage_paths(cfg).onnx_model.parent / "int8"
    assert sorted(p.name for p in folder.iterdir()) == ["gate.json"]
