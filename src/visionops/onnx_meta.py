"""The ONNX file's ``metadata_props``: everything needed to run it without the project.

Keys are strings, values are strings (JSON where structured). Written by ``export``, read by
``inference.Predictor`` — no torch involved in reading.
"""

from __future__ import annotations

import json
from typing import Any

from visionops.images import PreprocessSpec

CLASS_NAMES = "visionops.class_names"  # JSON list, index = output column
PREPROCESS = "visionops.preprocess"  # JSON of PreprocessSpec
BACKBONE = "visionops.backbone"
GIT_COMMIT = "visionops.git_commit"
DATA_VERSION = "visionops.data_version"
OUTPUT_KIND = "visionops.output"  # "logits": apply softmax to get probabilities


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
