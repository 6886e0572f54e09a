"""int8 as a second artifact: which file a Predictor runs for ``precision``, the gate's verdict,
what a version records, where dvc.yaml declares it. Hand-built ONNX files stand in for fp32 and
int8 (fast, no torch): the choice reads file names and metadata only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from tests.toy_onnx import colour_image, colour_model
from visionops.errors import VisionOpsError
from visionops.export.int8_files import GATE_KEY, QUANTIZATION, int8_sibling
from visionops.export.int8_gate import compare, decide
from visionops.inference import Predictor
from visionops.registry.version_record import int8_record

pytestmark = pytest.mark.unit
LABELS = ["blue", "green", "red"]


def _as_int8(fp32: Path, target: Path, stamp: dict | None) -> Path:
    """A copy of ``fp32`` that says it is int8 (and, given, carries a gate stamp)."""
    model = onnx.load(str(fp32))
    extra = {QUANTIZATION: "int8 static QDQ U8S8: test"}
    if stamp is not None:
        extra[GATE_KEY] = json.dumps(stamp)
    for key, value in extra.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "artifacts" / "export"
    colour_model(folder / "model.onnx", LABELS)
    return folder


PASSED = {"passed": True, "agreement": 0.998, "accuracy_delta": 0.001, "speedup": 1.9}


@pytest.mark.parametrize(
    ("int8_file", "stamp", "precision", "expected"),
    [
        (None, None, "auto", "model.onnx"),
        (None, None, "fp32", "model.onnx"),
        ("int8/model.int8.onnx", PASSED, "auto", "int8/model.int8.onnx"),  # export's layout
        ("int8/model.int8.onnx", PASSED, "fp32", "model.onnx"),
        ("int8/model.int8.onnx", PASSED, "int8", "int8/model.int8.onnx"),
        ("model.int8.onnx", PASSED, "auto", "model.int8.onnx"),  # a registered version's
        ("model.int8.onnx", None, "auto", "model.onnx"),  # no gate verdict: auto stays fp32
        ("model.int8.onnx", None, "int8", "model.int8.onnx"),  # ... asked for: you get it
        ("model.int8.onnx", {**PASSED, "passed": False}, "auto", "model.onnx"),
    ],
)
def test_a_plain_path_picks_the_file_for_its_precision(
    export_dir: Path, int8_file: str | None, stamp: dict | None, precision: str, expected: str
) -> None:
    fp32 = export_dir / "model.onnx"
    if int8_file:
        _as_int8(fp32, export_dir / int8_file, stamp)
    predictor = Predictor(fp32, precision=precision)
    assert predictor.model_path == export_dir / expected
    assert predictor.precision == ("int8" if "int8" in expected else "fp32")
    assert predictor.info()["precision"] == predictor.precision
    assert predictor.source == str(fp32)


def test_int8_asked_for_but_absent_is_a_clear_error(export_dir: Path) -> None:
    with pytest.raises(VisionOpsError, match=r"is an fp32 model and there is no int8 one beside"):
        Predictor(export_dir / "model.onnx", precision="int8")
    with pytest.raises(VisionOpsError, match="precision 'int4': use auto, fp32, int8"):
        Predictor(export_dir / "model.onnx", precision="int4")


def test_an_int8_file_given_directly(export_dir: Path) -> None:
    int8 = _as_int8(export_dir / "model.onnx", export_dir / "int8" / "model.int8.onnx", None)
    assert Predictor(int8).precision == "int8"
    assert int8_sibling(int8) is None
    with pytest.raises(VisionOpsError, match="is an int8 model and there is no fp32 one"):
        Predictor(int8, precision="fp32")


def test_cli_predict_takes_precision(export_dir: Path, tmp_path: Path) -> None:
    image = colour_image(tmp_path / "red.png", "red")
    fp32 = export_dir / "model.onnx"
    base = [sys.executable, "-m", "visionops.cli", "predict", str(fp32), str(image), "--json"]
    missing = subprocess.run([*base, "--precision", "int8"], capture_output=True, text=True)
    assert missing.returncode == 1 and "error: " in missing.stderr
    assert "no int8 one beside it" in missing.stderr
    _as_int8(fp32, export_dir / "int8" / "model.int8.onnx", PASSED)
    auto = subprocess.run(base, capture_output=True, text=True)
    assert auto.returncode == 0, auto.stderr
    assert json.loads(auto.stdout)["precision"] == "int8" and ", int8 (" in auto.stderr
    shutil.rmtree(export_dir / "int8")


@pytest.mark.parametrize(
    ("fp32", "int8", "y", "passed", "why"),
    [
        ([0] * 200, [0] * 200, [0] * 200, True, "agreement 100.00% on 200"),
        ([0] * 199 + [1], [0] * 200, [0] * 200, True, "accuracy +0.50 pt"),  # 199/200 = 99.5 %
        ([0] * 198 + [1, 1], [0] * 200, [0] * 200, False, "(2 of 200 images changed) < export"),
        ([0] * 400, [0] * 398 + [1, 1], [0] * 400, False, "accuracy delta -0.50 pt < -export"),
        ([0] * 3, [0] * 3, [-1] * 3, False, "accuracy delta +nan pt"),  # no label it knows
        ([], [], [], False, "no validation or test images"),
    ],
)
def test_the_gate_needs_agreement_and_accuracy(fp32, int8, y, passed, why) -> None:
    import numpy as np

    numbers = compare(np.array(fp32, int), np.array(int8, int), np.array(y, int))
    verdict, reason = decide(numbers, min_agreement=0.995, max_drop=0.004)
    assert verdict is passed and why in reason, reason


@pytest.mark.parametrize(
    ("block", "logged", "expected"),
    [
        (None, False, {"int8": "none"}),
        (
            {"enabled": False, "passed": False, "reason": "export.int8 is off"},
            False,
            {"int8": "none"},
        ),
        (
            {"passed": True, "agreement": 0.9981, "accuracy_delta": -0.001, "speedup": 1.93},
            True,
            {
                "int8": "passed",
                "int8.passed": "true",
                "int8.agreement": "0.9981",
                "int8.accuracy_delta": "-0.001",
                "int8.speedup": "1.93",
            },
        ),
        (
            {"passed": False, "agreement": 0.98, "reason": "top-1 agreement 98.00% < 99.50%"},
            False,
            {
                "int8": "failed",
                "int8.passed": "false",
                "int8.agreement": "0.98",
                "int8.reason": "top-1 agreement 98.00% < 99.50%",
            },
        ),
    ],
)
def test_the_version_record_of_the_gate(block, logged, expected) -> None:
    assert int8_record(block, logged) == expected


def test_dvc_yaml_declares_the_int8_folder(repo_root: Path) -> None:
    """A folder, because model.int8.onnx exists only when the gate passed and DVC fails a
    stage whose declared output is missing; register depends on it (it logs the model)."""
    import yaml

    from visionops.config import load_config
    from visionops.export.int8_gate import int8_dir

    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    folder = int8_dir(load_config(repo_root / "params.yaml")).relative_to(repo_root)
    declared = str(folder).replace("artifacts", "${base.artifacts_dir}", 1)
    assert declared in stages["export"]["outs"]
    assert declared in stages["register"]["deps"]
