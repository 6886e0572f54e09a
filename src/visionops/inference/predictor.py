"""Torch-free inference: ONNX Runtime + numpy + Pillow and a self-describing ``.onnx`` file.

:class:`Predictor` loads a ``.onnx`` path or a registry URI (``models:/<name>@<alias>``,
``models:/<name>/<version>``), reads class names and preprocessing from the file's metadata, picks
CUDA only when a session really runs on it (else CPU, and says which), and classifies images in
batches (see :class:`~visionops.export.onnx_model.OnnxClassifier`, which does the work).

Nothing here imports torch (a test checks it); MLflow is imported only for ``models:/`` URIs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visionops.export.onnx_model import OnnxClassifier
from visionops.registry.model_uri import resolve_registry_model


class Predictor(OnnxClassifier):
    """An :class:`OnnxClassifier` that also takes ``models:/`` URIs (downloaded or located in the
    MLflow store at ``tracking_uri``, default: the project's)."""

    def __init__(self, model: Path | str, tracking_uri: str | None = None, **options: Any) -> None:
        """``options``: ``device`` ("auto" | "cpu" | "cuda"), ``threads``, ``batch_size``,
        ``max_pixels``, as for :class:`OnnxClassifier`."""
        source = str(model)
        resolved = None
        if source.startswith("models:/"):
            resolved = resolve_registry_model(source, tracking_uri)
            model = resolved.path
        super().__init__(model, source=source, **options)
        if resolved is not None:
            self.model_name, self.model_version = resolved.name, resolved.version
            self.run_id, self.version_tags = resolved.run_id, resolved.tags
