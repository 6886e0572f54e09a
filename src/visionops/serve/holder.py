"""The model behind ``visionops serve``: one shared Predictor, swapped when ``@champion`` moves.

Requests read :attr:`ModelHolder.current` once and keep that Predictor for their whole life, so a
swap never interrupts a request in flight: the new version is downloaded, loaded and warmed up on
a worker thread first, then published with a single reference assignment (atomic in CPython).
The old session is freed when its last request finishes.
"""

from __future__ import annotations

import inspect
import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from PIL import Image

from visionops.errors import VisionOpsError
from visionops.inference import Predictor
from visionops.registry.model_uri import get_model_version, parse_model_uri

log = logging.getLogger(__name__)

PredictorFactory = Callable[[str, "str | None"], Predictor]
PRECISIONS = ("auto", "fp32", "int8")
QUANTIZATION_KEY = "visionops.quantization"  # metadata every int8 export carries


def load_predictor(
    model: str, tracking_uri: str | None, precision: str = "auto", threads: int | None = None
) -> Predictor:
    """``Predictor(model, precision=...)``: the model's int8 file or its fp32 one.

    Adapter, until ``Predictor``'s ``precision`` keyword (issue 12 item 4, built separately)
    is in every checkout: without it, ``auto``/``fp32`` load ``model`` as given and ``int8``
    asks for the int8 file by path.
    """
    options = {"threads": threads} if threads else {}
    if "precision" in inspect.signature(Predictor.__init__).parameters:
        return Predictor(model, tracking_uri=tracking_uri, precision=precision, **options)
    if precision == "int8":
        raise VisionOpsError(
            "--precision int8: this Predictor cannot pick the int8 file of a model yet; "
            "pass the int8 file itself (--model path/to/model.int8.onnx)"
        )
    return Predictor(model, tracking_uri=tracking_uri, **options)


def precision_of(predictor: Predictor) -> str:
    """ "int8" or "fp32": what the loaded file is, whoever chose it."""
    chosen = getattr(predictor, "precision", None)
    return chosen or ("int8" if QUANTIZATION_KEY in predictor.metadata else "fp32")


def _warm_up(predictor: Predictor) -> None:
    """One tiny prediction so the first real request does not pay ORT's first-run cost."""
    buf = io.BytesIO()
    Image.new("RGB", (predictor.spec.image_size, predictor.spec.image_size), (128, 128, 128)).save(
        buf, "PNG"
    )
    predictor.predict([buf.getvalue()], top_k=1)


@dataclass(frozen=True)
class Loaded:
    """A Predictor plus when and from what it was loaded."""

    predictor: Predictor
    loaded_at: float  # time.time()


class ModelHolder:
    """Holds the Predictor being served; :meth:`refresh` follows a registry alias.

    ``model`` is a ``.onnx`` path, ``models:/<name>/<version>`` (fixed) or
    ``models:/<name>@<alias>`` (followed: :meth:`refresh` loads the version the alias points to
    when it changes). ``precision`` ("auto", "fp32", "int8") and ``threads`` (ONNX Runtime
    intra-op threads per run) go to every Predictor it loads; ``factory`` replaces that loader.
    """

    def __init__(
        self,
        model: str,
        tracking_uri: str | None = None,
        factory: PredictorFactory | None = None,
        precision: str = "auto",
        threads: int | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise VisionOpsError(f"precision {precision!r}: use {', '.join(PRECISIONS)}")
        self.model = str(model)
        self.tracking_uri = tracking_uri
        self.precision = precision
        self._factory = factory or partial(load_predictor, precision=precision, threads=threads)
        self._alias: str | None = None
        self._name: str | None = None
        if self.model.startswith("models:/"):
            self._name, self._alias, _ = parse_model_uri(self.model)
        self._lock = threading.Lock()  # one refresh at a time (the poller vs. a manual call)
        self.last_error: str | None = None
        self.last_check: float | None = None
        self._loaded = self._load(self._target_uri())

    @property
    def follows_alias(self) -> bool:
        return self._alias is not None

    @property
    def current(self) -> Predictor:
        return self._loaded.predictor

    @property
    def loaded_at(self) -> float:
        return self._loaded.loaded_at

    def _target_uri(self) -> str:
        """The exact thing to load now: the alias resolved to ``models:/<name>/<version>``."""
        if not self.follows_alias:
            return self.model
        _, version = get_model_version(self.model, self.tracking_uri)
        return f"models:/{self._name}/{version.version}"

    def _load(self, uri: str) -> Loaded:
        started = time.perf_counter()
        predictor = self._factory(uri, self.tracking_uri)
        _warm_up(predictor)
        log.info(
            "loaded %s (version %s, %d classes, %s, %s) in %.1f s",
            uri,
            predictor.model_version or "-",
            len(predictor.labels),
            precision_of(predictor),
            predictor.provider,
            time.perf_counter() - started,
        )
        return Loaded(predictor, time.time())

    def refresh(self) -> bool:
        """Load and publish the alias's version if it moved; True when a swap happened.

        Never raises: a registry or load failure keeps the current model serving and is kept in
        :attr:`last_error` (shown by ``/health``) until a later refresh succeeds.
        """
        if not self.follows_alias:
            return False
        with self._lock:
            self.last_check = time.time()
            try:
                uri = self._target_uri()
                old = self.current.model_version
                if uri.rsplit("/", 1)[-1] == str(old):
                    self.last_error = None
                    return False
                loaded = self._load(uri)
            except VisionOpsError as exc:
                self.last_error = str(exc)
            except Exception as exc:  # noqa: BLE001 - the service must outlive a bad registry
                self.last_error = f"{type(exc).__name__}: {exc}"
            else:
                self._loaded = loaded  # the swap: one reference assignment
                self.last_error = None
                log.info(
                    "%s moved: version %s -> %s", self.model, old, loaded.predictor.model_version
                )
                return True
            log.warning(
                "keeping version %s; reload of %s failed: %s",
                self.current.model_version,
                self.model,
                self.last_error,
            )
            return False
