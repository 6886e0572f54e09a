"""Torch-free inference: ONNX Runtime + numpy + Pillow and a self-describing ``.onnx`` file.

:class:`Predictor` loads a ``.onnx`` path or a registry URI (``models:/<name>@<alias>``,
``models:/<name>/<version>``), reads class names and preprocessing from the file's metadata, picks
CUDA only when a session really runs on it (else CPU, and says which), and classifies images in
batches. One ONNX Runtime session is shared: ``predict`` may be called from several threads.

Nothing here imports torch (a test checks it); MLflow is imported only for ``models:/`` URIs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visionops.errors import VisionOpsError
from visionops.images import DEFAULT_MAX_PIXELS, ImageLoadError, PreprocessSpec, preprocess
from visionops.images import open_image as _open_image
from visionops.metrics import softmax
from visionops.onnx_meta import parse_metadata
from visionops.registry import (
    default_tracking_uri,
    get_model_version,
    parse_model_uri,
    resolve_registry_model,
)

# Registry helpers re-exported: callers (serve, lineage) import them from here.
__all__ = [
    "Prediction",
    "Predictor",
    "build_session",
    "default_tracking_uri",
    "get_model_version",
    "list_images",
    "parse_model_uri",
    "preprocess_batches",
]

log = logging.getLogger(__name__)

Source = Path | str | bytes
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_CUDA_LOADS: bool | None = None  # probed once per process: the failed attempt costs ~0.1 s


@dataclass
class Prediction:
    """One input's result. ``error`` is set (and label/probability are None) for a bad file."""

    source: str
    label: str | None = None
    probability: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    probabilities: np.ndarray | None = None  # (C,) float32, index = Predictor.labels
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "label": self.label,
            "probability": self.probability,
            "top_k": [{"label": lab, "probability": p} for lab, p in self.top_k],
            "error": self.error,
        }


def default_threads() -> int:
    """Intra-op threads: ``VISIONOPS_ORT_THREADS`` or the cores this process may use (max 8)."""
    env = os.environ.get("VISIONOPS_ORT_THREADS")
    if env:
        return max(1, int(env))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def build_session(model_path: Path, device: str = "auto", threads: int | None = None):
    """ONNX Runtime session on CUDA when it really runs there, else CPU.

    ``onnxruntime-gpu`` lists CUDA even without a GPU/driver; a session then silently falls back
    to CPU after logging a red error. So a CUDA session is tried quietly (severity 3) and kept
    only if ``get_providers()`` reports CUDA. ``device="cpu"`` skips the try; ``device="cuda"``
    fails with a clear error when CUDA does not load. Returns (session, provider name).
    Intra-op threads default to :func:`default_threads`; inter-op is 1 (a CNN is one chain);
    thread-pool spinning is off unless ``VISIONOPS_ORT_SPIN=1``.
    """
    import onnxruntime as ort

    threads = threads or default_threads()

    def options() -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning workers win a little on an idle machine but lose badly when cores are shared
        # (decode threads, other requests, other processes): batch-1 p50 42 ms spinning vs 16 ms
        # not, on 2 busy cores. VISIONOPS_ORT_SPIN=1 turns it back on for dedicated hosts.
        spin = "1" if os.environ.get("VISIONOPS_ORT_SPIN") == "1" else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
        return opts

    if device not in ("auto", "cpu", "cuda"):
        raise VisionOpsError(f"device {device!r}: use auto, cpu or cuda")
    global _CUDA_LOADS
    if device != "cpu" and CUDA in ort.get_available_providers() and _CUDA_LOADS is not False:
        # The provider library's load failure is logged (as an ERROR) by ORT's default logger,
        # not the session's: silence all but FATAL for this one attempt (2 = ORT's default).
        ort.set_default_logger_severity(4)
        try:
            session = ort.InferenceSession(str(model_path), options(), providers=[CUDA, CPU])
            _CUDA_LOADS = session.get_providers()[0] == CUDA
            if _CUDA_LOADS:
                return session, CUDA
        except Exception as exc:  # noqa: BLE001 - any CUDA failure means "use the CPU"
            log.debug("CUDA execution provider did not load: %s", exc)
            _CUDA_LOADS = False
        finally:
            ort.set_default_logger_severity(2)
        log.debug("CUDA execution provider is listed but does not load; using the CPU")
    if device == "cuda":
        raise VisionOpsError(
            "device cuda: the CUDA execution provider does not load here "
            f"(available: {', '.join(ort.get_available_providers())}); use device auto or cpu"
        )
    try:
        return ort.InferenceSession(str(model_path), options(), providers=[CPU]), CPU
    except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VisionOpsError(f"{model_path}: ONNX Runtime cannot load it ({first})") from None


def describe_source(source: Source, index: int) -> str:
    return f"<bytes #{index}>" if isinstance(source, bytes | bytearray) else str(source)


def load_one(source: Source, spec: PreprocessSpec, max_pixels: int) -> np.ndarray | str:
    """The preprocessed CHW array, or the error message for a file that cannot be used."""
    if isinstance(source, str | Path) and not Path(source).is_file():
        return "is a folder, not a file" if Path(source).is_dir() else "file not found"
    try:
        return preprocess(_open_image(source, max_pixels=max_pixels), spec)
    except ImageLoadError as exc:
        return str(exc)
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"


def preprocess_batches(
    sources: Sequence[Source],
    spec: PreprocessSpec,
    batch_size: int = 32,
    workers: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[tuple[list[int], np.ndarray | None, dict[int, str]]]:
    """Decode + preprocess in chunks of ``batch_size``: yields (indices of the good inputs,
    their (n, 3, H, W) float32 batch or None, {index: error} for the bad ones).

    Decoding runs on ``workers`` threads (PIL releases the GIL while decoding and resizing).
    """
    pool = ThreadPoolExecutor(workers) if workers > 1 and len(sources) > 1 else None
    try:
        for start in range(0, len(sources), batch_size):
            chunk = sources[start : start + batch_size]
            jobs = (pool.map if pool else map)(lambda s: load_one(s, spec, max_pixels), chunk)
            good, arrays, errors = [], [], {}
            for offset, result in enumerate(jobs):
                if isinstance(result, str):
                    errors[start + offset] = result
                else:
                    good.append(start + offset)
                    arrays.append(result)
            yield good, (np.stack(arrays) if arrays else None), errors
    finally:
        if pool:
            pool.shutdown()


def list_images(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given; folders expanded recursively (sorted, hidden files skipped).

    Every non-hidden file of a folder is kept, so a stray non-image shows up as an error row
    instead of vanishing silently. A missing path is kept too (it becomes an error row).
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            out.append(path)
    return out


class Predictor:
    """Classify images with an exported ONNX model; see the module docstring.

    Attributes: ``labels`` (class names, index = output column), ``spec`` (PreprocessSpec),
    ``provider`` (execution provider in use), ``source`` (what was asked for), ``model_path``,
    ``model_name``/``model_version``/``run_id`` (registry models; None for a plain file),
    ``metadata`` (all ``metadata_props``).
    """

    def __init__(
        self,
        model: Path | str,
        tracking_uri: str | None = None,
        *,
        device: str = "auto",
        threads: int | None = None,
        batch_size: int = 32,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.source = str(model)
        self.model_name: str | None = None
        self.model_version: str | None = None
        self.run_id: str | None = None
        self.version_tags: dict[str, str] = {}
        if self.source.startswith("models:/"):
            resolved = resolve_registry_model(self.source, tracking_uri)
            self.model_path = resolved.path
            self.model_name, self.model_version = resolved.name, resolved.version
            self.run_id, self.version_tags = resolved.run_id, resolved.tags
        else:
            self.model_path = Path(model)
            if not self.model_path.is_file():
                raise VisionOpsError(
                    f"{self.model_path}: no such model file; pass a .onnx file (e.g. "
                    "artifacts/export/model.onnx) or models:/<name>@<alias>"
                )
        self.threads = threads or default_threads()
        self.session, self.provider = build_session(self.model_path, device, self.threads)
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            self.labels, self.spec, self.metadata = parse_metadata(props)
        except (KeyError, ValueError) as exc:
            raise VisionOpsError(
                f"{self.source}: {exc.args[0] if exc.args else exc}; export it with "
                "`visionops export`"
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        n_out = self.session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.labels):
            raise VisionOpsError(
                f"{self.source}: the model outputs {n_out} scores but its metadata names "
                f"{len(self.labels)} classes; re-export it"
            )
        log.debug("loaded %s (%d classes) on %s", self.source, len(self.labels), self.provider)

    def info(self) -> dict:
        """A JSON-able summary (for ``/health``-style endpoints and logs)."""
        return {
            "source": self.source,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "run_id": self.run_id,
            "provider": self.provider,
            "labels": list(self.labels),
            "preprocess": self.spec.to_dict(),
            "backbone": self.metadata.get("visionops.backbone"),
        }

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 preprocessed batch -> (N, C) probabilities, batch_size at a time."""
        out = [
            softmax(self.logits(batch[i : i + self.batch_size]))
            for i in range(0, len(batch), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]

    def iter_predict(self, sources: Sequence[Source], top_k: int = 3) -> Iterator[Prediction]:
        """Like :meth:`predict` but yields results batch by batch (for progress bars)."""
        k = max(1, min(int(top_k), len(self.labels)))
        workers = min(self.threads, 4)
        for good, batch, errors in preprocess_batches(
            sources, self.spec, self.batch_size, workers, self.max_pixels
        ):
            probs = self.predict_arrays(batch) if batch is not None else None
            rows = {i: probs[j] for j, i in enumerate(good)} if probs is not None else {}
            for i in sorted([*good, *errors]):
                name = describe_source(sources[i], i)
                if i in errors:
                    yield Prediction(source=name, error=errors[i])
                    continue
                p = rows[i]
                order = np.argsort(-p)[:k]
                yield Prediction(
                    source=name,
                    label=self.labels[order[0]],
                    probability=float(p[order[0]]),
                    top_k=[(self.labels[j], float(p[j])) for j in order],
                    probabilities=p,
                )

    def predict(self, sources: Sequence[Source], top_k: int = 3) -> list[Prediction]:
        """One :class:`Prediction` per source, in order; unreadable inputs get ``error`` set."""
        return list(self.iter_predict(list(sources), top_k))
