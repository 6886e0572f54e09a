"""An exported ``.onnx`` classifier read back: session, class names and preprocessing from its
metadata, and batched classification of image files, arrays or bytes.

:class:`OnnxClassifier` is what register's champion/challenger scoring, ``evaluate-folder``
scoring and :class:`visionops.inference.Predictor` (which adds ``models:/`` URIs) share. One ONNX
Runtime session is shared: ``predict`` may be called from several threads. Torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visionops.errors import VisionOpsError
from visionops.export.onnx_meta import BACKBONE, TEMPERATURE, parse_metadata
from visionops.images import DEFAULT_MAX_PIXELS, Source, describe_source, preprocess_batches
from visionops.onnxrt import build_session, default_threads, softmax

log = logging.getLogger(__name__)


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


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


class OnnxClassifier:
    """Classify images with an exported ONNX file; see the module docstring.

    Attributes: ``labels`` (class names, index = output column), ``spec`` (PreprocessSpec),
    ``provider`` (execution provider in use), ``source`` (what was asked for), ``model_path``,
    ``model_name``/``model_version``/``run_id``/``version_tags`` (set for registry models by
    :class:`visionops.inference.Predictor`; None/empty for a plain file), ``metadata`` (all
    ``metadata_props``).
    """

    def __init__(
        self,
        model_path: Path | str,
        *,
        source: str | None = None,
        device: str = "auto",
        threads: int | None = None,
        batch_size: int = 32,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.model_path = Path(model_path)
        self.source = source or str(model_path)
        self.model_name: str | None = None
        self.model_version: str | None = None
        self.run_id: str | None = None
        self.version_tags: dict[str, str] = {}
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
            "backbone": self.metadata.get(BACKBONE),
            # Already divided out inside the graph; shown so a client knows the probabilities
            # are calibrated (None: exported before issue 14, uncalibrated).
            "temperature": _float_or_none(self.metadata.get(TEMPERATURE)),
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
