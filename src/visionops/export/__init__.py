"""Stage ``export``: checkpoint -> self-describing ONNX through a parity gate, optional int8; and
the ONNX file read back (:class:`~visionops.export.onnx_model.OnnxClassifier`, torch-free).
"""
