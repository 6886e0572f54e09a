"""VisionOps: labeled images in, registered ONNX classifier out.

    from visionops import Predictor
    prediction = Predictor("artifacts/export/model.onnx").predict("photo.jpg")

``import visionops`` stays cheap (no numpy, ONNX Runtime, MLflow or torch): ``Predictor``,
``Prediction`` and ``__version__`` are loaded on first use.
"""

from __future__ import annotations

# Public names -> the module that defines them. Loaded by name (not an import statement) on
# first access: the package root is the public facade above every layer, while the core
# modules below it never go through it (tests/unit/test_layers.py checks import statements).
_LAZY = {"Predictor": "visionops.inference", "Prediction": "visionops.inference"}

__all__ = ["Prediction", "Predictor", "__version__"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("visionops")
    except PackageNotFoundError:  # running from a source tree that was never pip-installed
        return "0+unknown"


def __getattr__(name: str) -> object:  # no top-level imports: ``typing`` alone costs ~10 ms
    if name == "__version__":
        value: object = _version()
    elif name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'visionops' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
