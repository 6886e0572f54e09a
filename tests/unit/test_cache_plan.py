"""Which mode a training picks before it fills its caches (issue 14, item 6): the budget, the
device and ``train.streaming``. Real folders, a real (random-weight, 64 px) model for the
activation shape; the CUDA case needs no GPU, since a CUDA run decides before touching the model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from visionops.config import build_config
from visionops.train.cache_plan import frozen_shapes, plan_caches
from visionops.train.data import ImageCache, SplitData
from visionops.train.devices import Runtime
from visionops.train.models import create_model, preprocess_spec

pytestmark = pytest.mark.unit


def _split(name: str, n: int) -> SplitData:
    shas = [hashlib.sha256(f"{name}{i}".encode()).hexdigest() for i in range(n)]
    return SplitData(name, [Path(f"{s}.png") for s in shas], shas, np.zeros(n, dtype=np.int64))


@pytest.mark.parametrize(
    ("device", "streaming", "views", "budget_gb", "expected"),
    [
        ("cpu", "auto", 2, 20.0, (False, "config")),  # fits
        ("cpu", "auto", 2, 0.001, (True, "budget")),  # 1 MB: the features do not fit
        ("cpu", "never", 2, 0.001, (False, "config")),  # caches anyway (and says it is over)
        ("cpu", "always", 2, 20.0, (True, "always")),
        ("cpu", "auto", 0, 0.001, (True, "config")),  # feature_views 0 already streams
        ("cuda", "auto", 2, 20.0, (True, "cuda")),
    ],
)
def test_plan_picks_streaming_for_budget_device_and_setting(
    tmp_path: Path, capsys, device: str, streaming: str, views: int, budget_gb: float, expected
) -> None:
    config = build_config(
        {
            "base": {"cache_max_gb": budget_gb},
            "model": {"pretrained": False, "image_size": 64, "resize": 72},
            "train": {"feature_views": views, "streaming": streaming, "finetune_blocks": 4},
        },
        root=tmp_path,
    )
    model = create_model("efficientnet_lite0", 2, False, 0, 0.0, 64)
    spec = preprocess_spec("efficientnet_lite0", 64, 72)
    cache = ImageCache(config.cache_dir, 72, spec.interpolation)
    runtime = Runtime(torch.device(device), None, False)
    train, val = _split("t", 200), _split("v", 20)
    with plan_caches(config, runtime, model, len(model.body) - 4, spec, cache, train, val) as plan:
        assert (plan.streaming, plan.reason) == expected
        key_views = plan.effective_config(config).train.feature_views
        assert key_views == (0 if plan.streaming else views)
    out = capsys.readouterr().out
    streaming_lines = [line for line in out.splitlines() if line.startswith("cache: streaming")]
    assert len(streaming_lines) == (expected[1] in ("budget", "cuda"))
    if streaming == "never" and budget_gb < 1:
        assert "over base.cache_max_gb = 0.001 GB" in out


def test_frozen_shapes_leave_the_model_as_it_was() -> None:
    model = create_model("efficientnet_lite0", 2, False, 0, 0.0, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    acts, pooled = frozen_shapes(model, 5, preprocess_spec("efficientnet_lite0", 64, 72), "cpu")
    assert acts is not None and len(acts) == 3 and pooled == model.feature_dim
    assert model.training
    assert torch.equal(rng, torch.random.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert frozen_shapes(model, 0, preprocess_spec("efficientnet_lite0", 64, 72), "cpu")[0] is None
