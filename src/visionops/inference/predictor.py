"""Torch-free inference: ONNX Runtime + numpy + Pillow and a self-describing ``.onnx`` file.

:class:`Predictor` loads a ``.onnx`` path or a registry URI (``models:/<name>@<alias>``,
``models:/<name>/<version>``), reads class names and preprocessing from the file's metadata, picks
CUDA only when a session really runs on it (else CPU, and says which), and classifies images in
batches (see :class:`~visionops.export.onnx_model.OnnxClassifier`, which does the work).

Nothing here imports torch (a test checks it); MLflow is imported only for ``models:/`` URIs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, overload

import numpy as np
from PIL import Image

from visionops.export.onnx_model import OnnxClassifier, Prediction
from visionops.images import Source, check_array
from visionops.registry.model_uri import resolve_registry_model

# Inputs that are one image. Anything else iterable is a collection of images; a str is never
# iterated (that would classify its characters as file names).
ONE_IMAGE = (str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray)
KINDS = "a path (str or Path), image-file bytes, a PIL image or an HxWx3 uint8 array"


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
    """

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
