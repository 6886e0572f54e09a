"""What the parts of one training run share: the :class:`Context` and the per-epoch hook type.

It lives in its own module because the trainer, the epoch driver (:mod:`.run_phase`), the
checkpoint glue (:mod:`.resume`) and the result assembly (:mod:`.finish_run`) all take it, and
none of them may import another's module just for the type without closing an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from visionops.config import Config
from visionops.train.data import ImageCache
from visionops.train.devices import Runtime

EpochHook = Callable[[int], None]


@dataclass
class Context:
    """Everything the phases share (built once per run)."""

    config: Config
    runtime: Runtime
    class_names: list[str]
    model: Any
    spec: Any
    cache: ImageCache
    train: Any
    val: Any
    store: Any
    criterion: nn.Module
    sample_weights: Any
    extra: dict[str, Any] = field(default_factory=dict)
