"""The one typed configuration: ``params.yaml`` read once into :class:`Config`.

Every stage takes a ``Config``; nothing else reads ``params.yaml``. Unknown keys, wrong types and
out-of-range values raise :class:`~visionops.errors.ConfigError` with one line that names the key,
the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from visionops.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseParams(_Section):
    data_dir: Path = Path("data")
    artifacts_dir: Path = Path("artifacts")
    cache_dir: Path = Path(".cache/visionops")
    # Disk budget of cache_dir in GB (10^9 bytes): before filling its caches, train removes
    # stale and least-recently-used folders it does not need, and streams (no feature cache)
    # when the feature cache would not fit (train/cache_plan.py).
    cache_max_gb: Annotated[float, Field(gt=0)] = 20.0
    seed: int = 42
    workers: Annotated[int, Field(ge=0)] = 0
    mlflow_tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    mlflow_artifacts_dir: Path = Path("mlruns/artifacts")
    experiment: str = "visionops"


class ValidateParams(_Section):
    min_images_per_class: PositiveInt = 5
    min_side: PositiveInt = 32
    max_pixels: PositiveInt = 89_478_485
    extensions: list[str] = Field(
        default_factory=lambda: [".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"]
    )

    @field_validator("extensions")
    @classmethod
    def _lower_dotted(cls, value: list[str]) -> list[str]:
        return [e.lower() if e.startswith(".") else f".{e.lower()}" for e in value]


class SplitParams(_Section):
    train: Fraction = 0.70
    val: Fraction = 0.15
    test: Fraction = 0.15

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"split.train + split.val + split.test must sum to 1.0, got {total:g} "
                f"({self.train:g} + {self.val:g} + {self.test:g})"
            )
        if self.train <= 0:
            raise ValueError("split.train must be > 0")
        return self


class ModelParams(_Section):
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    image_size: Annotated[int, Field(ge=32, le=1024)] = 224
    resize: Annotated[int, Field(ge=32, le=2048)] = 256
    dense_units: Annotated[int, Field(ge=0)] = 0
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2

    @model_validator(mode="after")
    def _resize_covers_crop(self) -> ModelParams:
        if self.resize < self.image_size:
            raise ValueError(
                f"model.resize ({self.resize}) must be >= model.image_size ({self.image_size})"
            )
        return self


class AugmentParams(_Section):
    crop_scale: tuple[Fraction, Fraction] = (0.6, 1.0)
    hflip: bool = True
    color_jitter: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    randaugment: bool = False


class TrainParams(_Section):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    batch_size: PositiveInt = 32
    head_epochs: Annotated[int, Field(ge=0)] = 2
    finetune_epochs: Annotated[int, Field(ge=0)] = 3
    finetune_blocks: Literal["all"] | PositiveInt = "all"
    head_lr: Annotated[float, Field(gt=0)] = 1e-3
    finetune_lr: Annotated[float, Field(gt=0)] = 1e-4
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    warmup_epochs: Annotated[float, Field(ge=0)] = 0.5
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    # Temperature scaling fitted on val after training (train/calibrate.py); export folds it
    # into the ONNX graph so served probabilities are calibrated. Off: T = 1.
    calibrate: bool = True
    augment: AugmentParams = Field(default_factory=AugmentParams)
    imbalance: Literal["auto", "none", "weighted_loss", "weighted_sampler"] = "auto"
    imbalance_ratio: Annotated[float, Field(ge=1.0)] = 3.0
    imbalance_power: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    early_stopping_patience: Annotated[int, Field(ge=0)] = 3
    freeze_bn: bool = True
    feature_views: Annotated[int, Field(ge=0)] = 3
    # auto: stream (augment on the fly, as feature_views 0) on a CUDA device or when the feature
    # cache would not fit base.cache_max_gb; always: stream; never: cache even over budget.
    streaming: Literal["auto", "always", "never"] = "auto"
    feature_engine: Literal["auto", "torch", "onnxruntime"] = "auto"
    amp: bool = True
    channels_last: bool = True
    resume: bool = True

    @model_validator(mode="after")
    def _some_epochs(self) -> TrainParams:
        if self.head_epochs + self.finetune_epochs == 0:
            raise ValueError("train.head_epochs + train.finetune_epochs must be at least 1")
        return self


class EvaluateParams(_Section):
    top_losses: Annotated[int, Field(ge=0, le=256)] = 16


class ExportParams(_Section):
    opset: Annotated[int, Field(ge=13, le=23)] = 17
    parity_max_abs_diff: Annotated[float, Field(gt=0)] = 1e-4
    # int8 (export/int8_gate.py): "auto" quantizes and keeps the model only when it passes the
    # gate, never failing the export; "off" skips it. true/false (older params) mean auto/off.
    int8: Literal["auto", "off"] = "auto"
    int8_min_agreement: Annotated[float, Field(gt=0.0, le=1.0)] = 0.995
    int8_max_drop: Fraction = 0.005
    int8_calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    int8_calibration_images: Annotated[int, Field(ge=1, le=4096)] = 512
    int8_keep_fp32: list[Literal["stem", "head", "depthwise", "se"]] = Field(
        default_factory=lambda: ["stem"]
    )

    @field_validator("int8", mode="before")
    @classmethod
    def _bool_is_auto_or_off(cls, value: Any) -> Any:
        return {True: "auto", False: "off"}.get(value, value) if isinstance(value, bool) else value


class RegisterParams(_Section):
    model_name: Annotated[str, Field(min_length=1)] = "visionops-classifier"
    metric: Literal["accuracy", "macro_f1"] = "macro_f1"
    min_improvement: Annotated[float, Field(ge=0)] = 0.0
    min_eval_images: Annotated[int, Field(ge=1)] = 30
    promote_experiments: bool = False


class ScheduleParams(_Section):
    cron: str = "0 2 * * *"
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"schedule.cron must have 5 fields like '0 2 * * *', got {value!r}")
        return value


class ServeParams(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    model: str = "models:/visionops-classifier@champion"
    precision: Literal["auto", "fp32", "int8"] = "auto"
    max_upload_mb: Annotated[float, Field(gt=0)] = 10
    max_files: PositiveInt = 16
    max_request_pixels: PositiveInt = 50_000_000
    timeout_seconds: Annotated[float, Field(gt=0)] = 30
    poll_seconds: Annotated[float, Field(gt=0)] = 30
    max_queue: PositiveInt = 128
    max_buffered_mb: Annotated[float, Field(gt=0)] = 160
    header_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5
    keep_alive_seconds: Annotated[float, Field(ge=1, le=300)] = 5
    infer_workers: Annotated[int, Field(ge=1, le=64)] = 2
    ort_threads: Annotated[int, Field(ge=0, le=64)] = 0
    micro_batch: Literal["auto", True, False] = "auto"


class Config(_Section):
    """The whole of ``params.yaml``; ``root`` is the folder relative paths resolve against."""

    base: BaseParams = Field(default_factory=BaseParams)
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    split: SplitParams = Field(default_factory=SplitParams)
    model: ModelParams = Field(default_factory=ModelParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    export: ExportParams = Field(default_factory=ExportParams)
    # Field names ``validate``/``register`` would shadow BaseModel/ABCMeta methods: stored with a
    # trailing underscore, read in params.yaml (and via the properties) without it.
    register_: RegisterParams = Field(default_factory=RegisterParams, alias="register")
    schedule: ScheduleParams = Field(default_factory=ScheduleParams)
    serve: ServeParams = Field(default_factory=ServeParams)
    root: Path = Path(".")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def path(self, relative: Path | str) -> Path:
        """Resolve a path from params against the project root (absolute paths pass through)."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    @property
    def register(self) -> RegisterParams:
        return self.register_

    @property
    def data_dir(self) -> Path:
        return self.path(self.base.data_dir)

    @property
    def artifacts_dir(self) -> Path:
        return self.path(self.base.artifacts_dir)

    @property
    def cache_dir(self) -> Path:
        return self.path(self.base.cache_dir)

    def stage_dir(self, stage: str) -> Path:
        """``artifacts/<stage>/``: where a stage writes the outputs dvc.yaml declares."""
        return self.artifacts_dir / stage

    def as_flat_dict(self) -> dict[str, Any]:
        """Dotted-key view (``train.batch_size`` -> 32) for MLflow params and hashing."""
        return _flatten(self.model_dump(mode="json", by_alias=True, exclude={"root"}))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _describe(error: dict[str, Any], source: str) -> str:
    """One readable line for one pydantic error: key, value, what is allowed."""
    loc = ".".join(str(p).rstrip("_") for p in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        section, _, key = loc.rpartition(".")
        model = Config
        for part in section.split(".") if section else []:
            fields = model.model_fields
            model = (fields.get(part) or fields[f"{part}_"]).annotation
        known = (
            sorted((f.alias or n) for n, f in model.model_fields.items() if n != "root")
            if isinstance(model, type) and issubclass(model, BaseModel)
            else []
        )
        hint = f"; known keys{' in ' + section if section else ''}: {', '.join(known)}"
        return f"{source}: unknown key '{loc}'{hint}"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "value_error" and not loc:
        return f"{source}: {message}"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{source}: {loc or 'params'}: {message}{shown}"


def build_config(
    raw: dict[str, Any] | None, root: Path | str = ".", source: str = "params"
) -> Config:
    """Validate a params mapping; raise ConfigError with one line per problem (first shown)."""
    raw = dict(raw or {})
    try:
        return Config.model_validate({**raw, "root": Path(root)})
    except ValidationError as exc:
        lines = [_describe(e, source) for e in exc.errors()]
        more = f" (and {len(lines) - 1} more problem(s))" if len(lines) > 1 else ""
        raise ConfigError(lines[0] + more) from None


def load_config(
    path: Path | str = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None
) -> Config:
    """Read ``params.yaml`` (relative paths inside resolve against its folder).

    ``overrides`` maps dotted keys (``train.batch_size``) to values, applied before validation.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; run from the project folder or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}:{where} is not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of sections (base:, validate:, ...)")
    for dotted, value in (overrides or {}).items():
        apply_override(raw, dotted, value)
    return build_config(raw, root=path.resolve().parent, source=str(path))


def apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``raw[a][b] = value`` for ``dotted == "a.b"``, creating sections as needed."""
    *sections, key = dotted.split(".")
    node = raw
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: '{section}' is not a section")
    node[key] = value
