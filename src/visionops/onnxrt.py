"""ONNX Runtime sessions: on CUDA only when it really runs there, else CPU, and saying which.

Shared by everything that runs an ONNX graph: the frozen-feature pass in training, the export
parity gate, int8 quantization, scoring and the torch-free inference. Torch-free.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from visionops.errors import VisionOpsError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_CUDA_LOADS: bool | None = None  # probed once per process: the failed attempt costs ~0.1 s


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits; (N, C) -> (N, C) float32."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


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
