"""Tiny hand-built ONNX classifiers and colour images for inference/registry tests (no torch).

The "colour model" averages each input channel and scores class ``c`` by the mean of the channel
mapped to it, so a pure red image is classified ``red`` with high confidence. Scrambling the
mapping gives a deliberately worse model with the same labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from visionops.export.onnx_meta import build_metadata
from visionops.images import PreprocessSpec

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
CHANNEL = {"red": 0, "green": 1, "blue": 2}
TOY_SPEC = PreprocessSpec(image_size=32, resize=36, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def colour_model(
    path: Path,
    labels: list[str],
    channel_of: dict[str, int] | None = None,
    scale: float = 4.0,
    spec: PreprocessSpec = TOY_SPEC,
    opset: int = 17,
    train_run_id: str = "",
) -> Path:
    """Write an ONNX classifier with visionops metadata: logits = scale * mean_hw(x) @ W."""
    channel_of = channel_of or CHANNEL
    weights = np.zeros((3, len(labels)), dtype=np.float32)
    for j, label in enumerate(labels):
        weights[channel_of[label], j] = scale
    x = helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, ["batch", 3, spec.image_size, spec.image_size]
    )
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(labels)])
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        ],
        "colour",
        [x],
        [y],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    for key, value in build_metadata(
        labels, spec, "toy-colour", git_commit="abc", train_run_id=train_run_id
    ).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def colour_image(path: Path, colour: str, size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """A noisy image of one of COLOURS, saved by extension (jpg/png)."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[colour], dtype=np.int16)
    noise = rng.integers(-15, 16, size=(size[1], size[0], 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def colour_folder(root: Path, per_class: dict[str, int], ext: str = ".png") -> Path:
    """ImageFolder layout root/<label>/<label>_<i><ext>; labels not in COLOURS are grey-ish red."""
    for label, n in per_class.items():
        for i in range(n):
            colour = label if label in COLOURS else "red"
            colour_image(root / label / f"{label}_{i}{ext}", colour, seed=hash((label, i)) % 1000)
    return root
