"""Where an int8 model lives beside its fp32 ``.onnx``, and how it says it passed the gate.

Shared by export (writes), register (logs it into the version) and inference (picks it).
Light imports only: the torch-free :class:`~visionops.inference.Predictor` uses it.

- export writes ``<dir>/int8/model.int8.onnx`` beside ``<dir>/model.onnx`` (``int8/`` is one DVC
  output whatever the gate said: see :mod:`visionops.export.int8_gate`);
- a registered version holds ``model.int8.onnx`` beside ``model.onnx``;
- for any other ``name.onnx``, ``name.int8.onnx`` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

INT8_DIR = "int8"
INT8_FILE = "model.int8.onnx"
GATE_FILE = "gate.json"
GATE_KEY = "visionops.int8_gate"  # JSON in a kept int8 model's metadata: passed, agreement, ...
QUANTIZATION = "visionops.quantization"  # metadata of any int8 model: how it was made


def int8_sibling(fp32: Path) -> Path | None:
    """The int8 model that belongs to the fp32 file ``fp32``, if one exists."""
    name = f"{fp32.name.removesuffix('.onnx')}.int8.onnx"
    for candidate in (fp32.with_name(name), fp32.parent / INT8_DIR / name):
        if candidate.is_file():
            return candidate
    return None


def onnx_metadata(path: Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, without building a session."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def gate_stamp(path: Path) -> dict | None:
    """The export gate's verdict stamped into an int8 file (:data:`GATE_KEY`), None if none."""
    try:
        value = onnx_metadata(path).get(GATE_KEY)
        return json.loads(value) if value else None
    except Exception:  # noqa: BLE001 - unreadable or not ONNX: no stamp
        return None
