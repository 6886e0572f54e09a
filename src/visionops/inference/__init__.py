"""Torch-free inference: :class:`Predictor` on a ``.onnx`` file or a ``models:/`` URI."""

from visionops.export.onnx_model import Prediction
from visionops.images import list_images
from visionops.inference.predictor import Predictor

__all__ = ["Prediction", "Predictor", "list_images"]
