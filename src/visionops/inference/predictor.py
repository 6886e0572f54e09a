"""Torch-free inference: ONNX Runtime + numpy + Pillow and a self-describing ``.onnx`` file.

:class:`Predictor` loads a ``.onnx`` path or a registry URI (``models:/<name>@<alias>``,
``models:/<name>/<version>``), reads class names and preprocessing from the file's metadata, picks
CUDA only when a session really runs on it (else CPU, and says which), and classifies images in
batches (see :class:`~visionops.export.onnx_model.OnnxClassifier`, which does the work).

``precision`` picks between a model's fp32 file and its int8 one (issue 12): ``auto`` takes int8
when it exists and passed export's agreement gate (a version's tag ``int8=passed``; for a plain
file, the gate stamp in ``name.int8.onnx`` / ``int8/model.int8.onnx`` beside it), else fp32.

Nothing here imports torch (a test checks it); MLflow is imported only for ``models:/`` URIs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, overload

import numpy as np
from PIL import Image

from visionops.errors import VisionOpsError
from visionops.export.int8_files import QUANTIZATION, gate_stamp, int8_sibling
from visionops.export.onnx_model import OnnxClassifier, Prediction
from visionops.images import Source, check_array
from visionops.registry.model_uri import RegistryModel, resolve_registry_model

# Inputs that are one image. Anything else iterable is a collection of images; a str is never
# iterated (that would classify its characters as file names).
ONE_IMAGE = (str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray)
KINDS = "a path (str or Path), image-file bytes, a PIL image or an HxWx3 uint8 array"
PRECISIONS = ("auto", "fp32", "int8")


def _registry_file(resolved: RegistryModel, precision: str, source: str) -> Path:
    """The version's ``model.onnx`` or ``model.int8.onnx`` for ``precision``."""
    verdict = resolved.tags.get("int8", "none")  # passed | failed | none (older versions: none)
    if precision == "int8" and resolved.int8_path is None:
        raise VisionOpsError(
            f"{source} (version {resolved.version}) has no int8 model (tag int8={verdict}; "
            "export keeps one only when it agrees with fp32, see `visionops lineage`); use "
            "--precision fp32 or auto"
        )
    if precision == "int8" or (precision == "auto" and verdict == "passed" and resolved.int8_path):
        return resolved.int8_path
    return resolved.path


def _plain_file(path: Path, precision: str) -> Path:
    """``path``, or for int8 / auto its int8 sibling (:func:`int8_sibling`); auto takes the
    sibling only when export's gate stamp in it says passed."""
    sibling = int8_sibling(path) if path.is_file() else None
    if sibling is not None and (
        precision == "int8" or (precision == "auto" and (gate_stamp(sibling) or {}).get("passed"))
    ):
        return sibling
    return path


def _checked(item: Any, where: str) -> Source:
    """``item`` as a :data:`~visionops.images.Source`, or TypeError/ValueError saying why not."""
    if isinstance(item, os.PathLike) and not isinstance(item, Path):
        item = Path(os.fspath(item))
    if isinstance(item, np.ndarray):
        try:
            check_array(item)
        except ValueError as exc:
            raise ValueError(f"{where}{exc}") from None
    elif not isinstance(item, ONE_IMAGE):
        raise TypeError(f"{where}{type(item).__name__} is not an image; pass {KINDS}")
    return item


def _as_sources(images: Any) -> tuple[list[Source], bool]:
    """(the inputs as a checked list, whether one image was passed rather than a collection)."""
    if isinstance(images, ONE_IMAGE):
        return [_checked(images, "")], True
    if isinstance(images, Mapping) or not isinstance(images, Iterable):  # a dict: keys? values?
        raise TypeError(f"{type(images).__name__} is not an image; pass {KINDS}, or a list of them")
    return [_checked(item, f"input #{i}: ") for i, item in enumerate(images)], False


class Predictor(OnnxClassifier):
    """Classify images with an exported model: a ``.onnx`` file or a ``models:/`` URI (downloaded
    or located in the MLflow store at ``tracking_uri``, default: the project's).

        from visionops import Predictor
        p = Predictor("models:/visionops-classifier@champion")
        p.predict("shirt.jpg").label                # one image -> one Prediction
        [r.label for r in p.predict([path, jpeg_bytes, pil_image, rgb_array])]  # list -> list

    Accepted images: a path (``str`` or :class:`~pathlib.Path`), the bytes of an image file, a
    PIL image (EXIF orientation applied, like a file's; any mode becomes RGB), or a numpy uint8
    array, HxWx3 RGB or HxW grayscale (OpenCV's BGR needs ``arr[..., ::-1]`` first).

    ``precision``: "auto" (int8 when the model has one that passed export's gate, else fp32),
    "fp32" or "int8" (VisionOpsError when there is none); ``predictor.precision`` says which
    runs, ``predictor.model_path`` which file.
    """

    def __init__(
        self,
        model: Path | str,
        tracking_uri: str | None = None,
        precision: str = "auto",
        **options: Any,
    ) -> None:
        """``options``: ``device`` ("auto" | "cpu" | "cuda"), ``threads``, ``batch_size``,
        ``max_pixels``, as for :class:`OnnxClassifier`."""
        if precision not in PRECISIONS:
            raise VisionOpsError(f"precision {precision!r}: use {', '.join(PRECISIONS)}")
        source = str(model)
        resolved = None
        if source.startswith("models:/"):
            resolved = resolve_registry_model(source, tracking_uri)
            model = _registry_file(resolved, precision, source)
        else:
            model = _plain_file(Path(model), precision)
        super().__init__(model, source=source, **options)
        self.precision = "int8" if QUANTIZATION in self.metadata else "fp32"
        if precision != "auto" and precision != self.precision:
            raise VisionOpsError(
                f"{source}: {self.model_path} is an {self.precision} model and there is no "
                f"{precision} one beside it (int8: name.int8.onnx or int8/model.int8.onnx, "
                f"written by `visionops export` when it passes the gate); use --precision auto"
            )
        if resolved is not None:
            self.model_name, self.model_version = resolved.name, resolved.version
            self.run_id, self.version_tags = resolved.run_id, resolved.tags

    def info(self) -> dict:
        return {**super().info(), "precision": self.precision, "model_file": self.model_path.name}

    @overload
    def predict(self, images: Source, top_k: int = 3) -> Prediction: ...

    @overload
    def predict(self, images: Iterable[Source], top_k: int = 3) -> list[Prediction]: ...

    def predict(self, images: Any, top_k: int = 3) -> Prediction | list[Prediction]:
        """Classify one image or a collection of them.

        One image (see the class docstring for the kinds) returns one :class:`Prediction`; a
        list, tuple or any other iterable of images returns a list of them, in the same order
        (an empty list gives ``[]``). An input that cannot be read (missing file, corrupt bytes)
        does not raise: its Prediction has ``error`` set and ``label`` None. A wrong kind of
        input raises TypeError, an array of the wrong shape or dtype ValueError, both before any
        image is processed.
        """
        sources, one = _as_sources(images)
        results = list(super().iter_predict(sources, top_k))
        return results[0] if one else results

    def iter_predict(self, images: Any, top_k: int = 3) -> Iterator[Prediction]:
        """Like :meth:`predict` for a collection, but yields results batch by batch (for
        progress bars); one image yields one result."""
        sources, _ = _as_sources(images)
        return super().iter_predict(sources, top_k)
