"""The ONNX file's ``metadata_props``: everything needed to run it without the project.

Keys are strings, values are strings (JSON where structured). Written by ``export``, read by
:class:`~visionops.export.onnx_model.OnnxClassifier` — no torch involved in reading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visionops.errors import VisionOpsError
from visionops.images import PreprocessSpec

INPUT, OUTPUT = "input", "logits"  # graph input (N, 3, H, W) and output (N, C) names
CLASS_NAMES = "visionops.class_names"  # JSON list, index = output column
PREPROCESS = "visionops.preprocess"  # JSON of PreprocessSpec
BACKBONE = "visionops.backbone"
GIT_COMMIT = "visionops.git_commit"
DATA_VERSION = "visionops.data_version"
TRAIN_RUN_ID = "visionops.train_run_id"  # the MLflow run of the training (artifacts/train/run.json)
OUTPUT_KIND = "visionops.output"  # "logits": apply softmax to get probabilities
# The T the graph already divides its logits by (train/calibrate.py); "1" = uncalibrated. For
# reading only: softmax of the output is already calibrated, never divide again.
TEMPERATURE = "visionops.temperature"


def build_metadata(
    class_names: list[str], spec: PreprocessSpec, backbone: str, **extra: Any
) -> dict[str, str]:
    meta = {
        CLASS_NAMES: json.dumps(list(class_names)),
        PREPROCESS: json.dumps(spec.to_dict()),
        BACKBONE: backbone,
        OUTPUT_KIND: "logits",
    }
    meta.update({f"visionops.{k}" if "." not in k else k: str(v) for k, v in extra.items()})
    return meta


def parse_metadata(props: dict[str, str]) -> tuple[list[str], PreprocessSpec, dict[str, str]]:
    """Return (class names, preprocessing spec, all props); KeyError names a missing key."""
    missing = [k for k in (CLASS_NAMES, PREPROCESS) if k not in props]
    if missing:
        raise KeyError(f"ONNX metadata lacks {', '.join(missing)} (not exported by visionops?)")
    return (
        json.loads(props[CLASS_NAMES]),
        PreprocessSpec.from_dict(json.loads(props[PREPROCESS])),
        props,
    )


def write_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Replace the file's ``metadata_props`` with ``metadata`` and run the full checker."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    model.doc_string = "VisionOps image classifier; preprocessing and labels in metadata_props"
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise VisionOpsError(f"{path}: onnx.checker rejects the export: {exc}") from None
    onnx.save(model, str(path))
