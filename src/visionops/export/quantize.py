"""int8 for the exported model: ONNX Runtime static QDQ quantization with a measured recipe.

A :class:`Recipe` names the choices that moved agreement with fp32 when they were measured
(docs/BENCHMARKS.md, "int8 recipe (issue 12)"): the calibration method and how many training
images calibrate it, per-channel weights, and which groups of nodes stay in fp32. Whether an
int8 model is good enough is decided elsewhere (:mod:`visionops.export.int8_gate`), by top-1
agreement with fp32 on every validation and test image.

Always U8S8 (uint8 activations, int8 weights): ~2x fp32 on this x86 CPU (VNNI), where S8S8 ran
no faster than fp32. Dynamic quantization was 10x slower than fp32 and -4.8 pt here
(STACK-NOTES): static only. Used by ``export`` and ``benchmarks/``.
"""

from __future__ import annotations

import io
import logging
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from visionops.export.int8_files import QUANTIZATION
from visionops.export.onnx_meta import INPUT, write_metadata
from visionops.io import atomic_path

log = logging.getLogger(__name__)

Calibration = Literal["minmax", "entropy", "percentile"]
#: Node groups that can be kept in fp32 (see :func:`sensitive_nodes`).
GROUPS = ("stem", "head", "depthwise", "se")
CALIBRATION_BATCH = 16  # images per calibration step: bounds the intermediate outputs held


@dataclass(frozen=True)
class Recipe:
    """How to quantize. ``keep_fp32``: groups of :data:`GROUPS` left unquantized;
    ``keep_matching``: a regular expression, nodes whose name it finds are left unquantized too
    (model-specific, for experiments: ``benchmarks/int8_recipes.py``)."""

    calibration: Calibration = "minmax"
    images: int = 128
    per_channel: bool = True
    keep_fp32: tuple[str, ...] = ()
    percentile: float = 99.999
    keep_matching: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.keep_fp32) - set(GROUPS))
        if unknown:
            raise ValueError(f"keep_fp32: unknown group(s) {unknown}; known: {', '.join(GROUPS)}")

    def describe(self) -> str:
        method = self.calibration
        if method == "percentile":
            method = f"percentile {self.percentile:g}"
        groups = [*self.keep_fp32, *([f"/{self.keep_matching}/"] if self.keep_matching else [])]
        kept = f", fp32: {'+'.join(groups)}" if groups else ""
        channel = "per-channel" if self.per_channel else "per-tensor"
        return f"{method}, {self.images} images, {channel}{kept}"


@dataclass
class QuantizeInfo:
    """What :func:`quantize_int8` did, for the report."""

    recipe: Recipe
    calibration_images: int
    kept_fp32: list[str] = field(default_factory=list)
    scales_raised: int = 0  # onnxruntime's "Increased scale[i] for weight ..." lines, hidden
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"int8: quantized with {self.recipe.describe()} in {self.seconds:.0f} s; "
            f"{len(self.kept_fp32)} node(s) kept in fp32; {self.scales_raised} weight scale(s) "
            "raised by onnxruntime so int32 biases stay representable"
        )


def sensitive_nodes(model, groups: tuple[str, ...]) -> list[str]:
    """Names of the nodes of ``groups`` in an ONNX graph (any CNN exported by visionops).

    ``stem``: the first Conv and every Conv after it until the next strided one, i.e. the first
    resolution stage (Lite1: the stem, the first block, the second block's expansion), where
    int8 noise starts and then accumulates. ``head``: the Gemm/MatMul that makes the output.
    ``depthwise``: Convs with ``group > 1``. ``se``: squeeze-excite gates, i.e. everything from
    a global pooling that does not feed the head up to the Mul it scales.
    """
    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {out: node for node in graph.node for out in node.output}
    picked: list[str] = []

    def add(node) -> None:
        if node.name and node.name not in picked:
            picked.append(node.name)

    if "stem" in groups:  # the first resolution stage: Convs until the next strided one
        convs = [n for n in graph.node if n.op_type == "Conv"]  # graph.node is in run order
        for i, node in enumerate(convs):
            stride = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1])
            if i > 0 and max(stride) > 1:
                break
            add(node)
    if "head" in groups:
        for out in graph.output:
            node = producer.get(out.name)
            while node is not None and node.op_type not in ("Gemm", "MatMul", "Conv"):
                node = producer.get(node.input[0]) if node.input else None
            if node is not None:
                add(node)
    if "depthwise" in groups:
        for node in graph.node:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            if node.op_type == "Conv" and group > 1:
                add(node)
    if "se" in groups:
        pools = [n for n in graph.node if n.op_type in ("GlobalAveragePool", "ReduceMean")]
        for pool in pools:
            todo, seen, inside = list(pool.output), set(), [pool]
            while todo:
                for node in consumers.get(todo.pop(), []):
                    if node.name in seen:
                        continue
                    seen.add(node.name)
                    inside.append(node)
                    if node.op_type != "Mul":
                        todo += list(node.output)
            if any(n.op_type == "Mul" for n in inside):  # a gate, not the classifier's pooling
                for node in inside:
                    add(node)
    return picked


class _Batches:
    """Calibration reader over preprocessed images; ``len``/``set_range`` let onnxruntime
    collect (and, for histograms, merge) one batch at a time instead of holding every
    intermediate output of every image at once (GBs at 240 px)."""

    def __init__(self, images: np.ndarray) -> None:
        n = max(1, -(-len(images) // CALIBRATION_BATCH))
        self._batches = np.array_split(images, n)
        self._it: Iterator[np.ndarray] = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._batches[start_index:end_index])

    def get_next(self):
        batch = next(self._it, None)
        return None if batch is None else {INPUT: batch}


@contextmanager
def quiet_quantizer() -> Iterator[dict[str, int]]:
    """Hide onnxruntime.quantization's INFO/WARNING lines (it logs through the root logger: one
    "Increased scale[i] for weight ..." per adjusted channel, over a hundred for a Lite1) and the
    histogram calibrators' ``print`` progress; count the scale adjustments. Errors still show."""
    import onnxruntime as ort

    counts = {"scales_raised": 0, "hidden": 0}

    class _Hide(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname:
                return True
            counts["hidden"] += 1
            if record.getMessage().startswith(("Increased scale", "Increasing scale")):
                counts["scales_raised"] += 1
            return False

    root, hide = logging.getLogger(), _Hide()
    targets = [root, *root.handlers]
    for target in targets:
        target.addFilter(hide)
    level = root.level
    root.setLevel(min(level, logging.INFO))  # so the count does not depend on the caller's level
    ort.set_default_logger_severity(3)  # calibration sessions' graph warnings
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield counts
    finally:
        ort.set_default_logger_severity(2)
        root.setLevel(level)
        for target in targets:
            target.removeFilter(hide)


def _calibration_method(recipe: Recipe):
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[recipe.calibration]


def quantize_int8(
    fp32: Path,
    out: Path,
    calibration: np.ndarray,
    metadata: dict[str, str],
    recipe: Recipe = Recipe(),  # noqa: B008 - frozen dataclass, never mutated
) -> QuantizeInfo:
    """Quantize ``fp32`` to ``out`` (atomically) with ``recipe``, calibrated on ``calibration``
    ((N, 3, H, W) float32, preprocessed like inference); ``metadata`` is copied, plus how it
    was made (:data:`QUANTIZATION`)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    started = time.perf_counter()
    images = calibration[: recipe.images]
    reader = _Batches(images)
    with (
        atomic_path(out) as tmp,
        tempfile.TemporaryDirectory(dir=out.parent) as work,
        quiet_quantizer() as counts,
    ):
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre))
        kept = sensitive_nodes(graph, recipe.keep_fp32)
        if recipe.keep_matching:
            found = re.compile(recipe.keep_matching).search
            kept += [n.name for n in graph.graph.node if found(n.name) and n.name not in kept]
        extra = {"CalibStridedMinMax": 1}  # one batch per collect step (see _Batches)
        if recipe.calibration == "percentile":
            # asymmetric: activations after ReLU6 are >= 0, a symmetric range wastes half of uint8
            extra.update(CalibPercentile=recipe.percentile, CalibTensorRangeSymmetric=False)
        quantize_static(
            str(pre),
            str(tmp),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=_calibration_method(recipe),
            nodes_to_exclude=kept,
            extra_options=extra,
        )
        how = f"int8 static QDQ U8S8: {recipe.describe()}"
        write_metadata(tmp, {**metadata, QUANTIZATION: how})
    info = QuantizeInfo(
        recipe, len(images), kept, counts["scales_raised"], time.perf_counter() - started
    )
    log.info(info.summary())
    return info


def throughput(session, batch: np.ndarray, seconds: float = 2.0) -> float:
    """Images per second of ``session`` on ``batch`` (one warm-up run, then ~``seconds``)."""
    session.run(None, {INPUT: batch})
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        session.run(None, {INPUT: batch})
        runs += 1
    return runs * len(batch) / (time.perf_counter() - start)


def speedup(fp32_session, int8_session, batch: np.ndarray, rounds: int = 3, seconds: float = 1.0):
    """(fp32 img/s, int8 img/s, int8/fp32) on ``batch``: medians over ``rounds`` alternating
    pairs, so a busy machine slows both sides of each ratio alike (one back-to-back pair swung
    between 1.6x and 2x here)."""
    pairs = [
        (throughput(fp32_session, batch, seconds), throughput(int8_session, batch, seconds))
        for _ in range(rounds)
    ]
    fp32, int8 = np.median([p[0] for p in pairs]), np.median([p[1] for p in pairs])
    return float(fp32), float(int8), float(np.median([b / a for a, b in pairs]))
