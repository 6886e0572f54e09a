"""Calibration end to end on a real Lite0 checkpoint (64 px): the temperature in ``best.pt`` is
folded into the ONNX graph (the parity gate still <= 1e-4), the Predictor serves the calibrated
probabilities, and evaluate reports ECE before/after with 95% intervals (issue 14)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.toy_project import make_checkpoint, make_project
from visionops.config import Config
from visionops.evaluate import stage as evaluate
from visionops.export import stage as export
from visionops.images import load_and_preprocess
from visionops.inference import Predictor
from visionops.onnxrt import softmax
from visionops.paths import stage_paths
from visionops.train.checkpoint import load_checkpoint, load_model, save_checkpoint

pytestmark = pytest.mark.model
CLASSES = ("blue", "green", "red")
T = 0.5  # sharpens: the toy head's probabilities move visibly


def calibrate(cfg: Config, temperature: float) -> None:
    """Give the checkpoint a temperature as the end of training does (train/finish_run.py)."""
    path = stage_paths(cfg).checkpoint_best
    ckpt = load_checkpoint(path)
    ckpt["calibration"] = {"temperature": temperature, "fitted_on": "val", "n_images": 9}
    save_checkpoint(path, ckpt)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, export.ExportResult]:
    cfg = make_project(
        tmp_path_factory.mktemp("calibrated") / "proj",
        per_split={"train": 4, "val": 3, "test": 4},
        params={"export": {"int8_min_agreement": 0.5, "int8_max_drop": 1.0}},  # toy-sized gate
    )
    make_checkpoint(cfg, CLASSES)
    calibrate(cfg, T)
    return cfg, export.run(cfg)


def test_export_folds_the_temperature_and_the_parity_gate_holds(calibrated) -> None:
    cfg, result = calibrated
    report = result.report
    assert report["temperature"] == T
    assert report["parity"]["passed"] is True and report["parity"]["top1_agreement"] == 1.0
    assert report["parity"]["max_abs_diff_prob"] <= cfg.export.parity_max_abs_diff == 1e-4
    predictor = Predictor(result.onnx_path, precision="fp32")
    assert predictor.metadata["visionops.temperature"] == "0.5"
    assert predictor.info()["temperature"] == T
    import onnx

    ops = [n.op_type for n in onnx.load(str(result.onnx_path)).graph.node]
    assert ops[-1] == "Div"  # logits / T is the graph's last step


def test_predictor_serves_the_calibrated_probabilities(calibrated) -> None:
    cfg, result = calibrated
    files = [cfg.data_dir / f"{c}/test_{i}.png" for c in CLASSES for i in range(4)]
    predictor = Predictor(result.onnx_path, precision="fp32")
    model, _ = load_model(stage_paths(cfg).checkpoint_best)  # the raw, uncalibrated network
    batch = np.stack([load_and_preprocess(f, predictor.spec) for f in files])
    with torch.inference_mode():
        logits = model(torch.from_numpy(batch)).numpy()
    calibrated_probs, raw_probs = softmax(logits / T), softmax(logits)
    got = np.stack([p.probabilities for p in predictor.predict(files)])
    assert np.abs(got - calibrated_probs).max() <= 1e-4
    assert np.abs(got - raw_probs).max() > 1e-2  # really calibrated, not the raw softmax
    assert (got.argmax(1) == raw_probs.argmax(1)).all()  # a temperature never changes top-1


def test_int8_is_quantized_from_the_calibrated_graph(calibrated) -> None:
    """The Div by T survives quantization: int8 serves calibrated probabilities too."""
    cfg, result = calibrated
    assert result.report["int8"]["passed"] is True, result.report["int8"]
    int8, fp32 = Predictor(result.onnx_path), Predictor(result.onnx_path, precision="fp32")
    assert int8.precision == "int8" and int8.metadata["visionops.temperature"] == "0.5"
    files = [cfg.data_dir / f"{c}/val_{i}.png" for c in CLASSES for i in range(3)]
    p8 = np.stack([p.probabilities for p in int8.predict(files)])
    p32 = np.stack([p.probabilities for p in fp32.predict(files)])
    raw = softmax((T * np.log(p32)).astype(np.float32))  # undo the T: softmax(z/T) -> softmax(z)
    assert np.abs(p8 - p32).mean() < np.abs(p8 - raw).mean()  # int8 noise, T still applied


def test_evaluate_reports_ece_before_after_and_intervals(calibrated) -> None:
    cfg, _ = calibrated
    result = evaluate.run(cfg)
    m = json.loads(stage_paths(cfg).evaluate_metrics.read_text())
    assert m["temperature"] == T and m["n_images"] == 12
    assert {"ece_uncalibrated", "log_loss_uncalibrated"} <= set(m)
    assert m["ece"] != m["ece_uncalibrated"]
    assert m["accuracy_ci_low"] <= m["accuracy"] <= m["accuracy_ci_high"]
    assert m["macro_f1_ci_low"] <= m["macro_f1"] <= m["macro_f1_ci_high"]
    assert m["accuracy_ci_high"] - m["accuracy_ci_low"] > 0.2  # 12 images: a wide interval
    # DVC metrics stay flat and few: no interval or calibration keys in scores.json
    scores = json.loads(stage_paths(cfg).evaluate_scores.read_text())
    assert set(scores) == {"accuracy", "macro_f1", "log_loss", "ece", "seconds"}
    from PIL import Image

    reliability = stage_paths(cfg).evaluate_plots / "reliability.png"
    with Image.open(reliability) as img:
        assert img.width > img.height  # two panels: before | served
    assert not list(stage_paths(cfg).evaluate_plots.glob("reliability_*"))  # one file, as before
    text = result.summary()
    assert "(95% intervals)" in text and f"(T = {T:.3f})" in text and "ECE" in text
