"""VisionOps: labeled images in, registered ONNX classifier out."""

__version__ = "0.1.0"
