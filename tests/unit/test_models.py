"""Backbone factory, checkpoints, the uint8 cache's eval view and imbalance weights (fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionops.config import TrainParams
from visionops.errors import ConfigError, VisionOpsError
from visionops.images import PreprocessSpec, open_image, preprocess
from visionops.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from visionops.train.data import ImageCache, ImageDataset, SplitData, eval_array, normalize_batch
from visionops.train.imbalance import resolve_imbalance
from visionops.train.models import (
    LITE_MEAN,
    available_backbones,
    create_model,
    preprocess_spec,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["efficientnet_lite9", "EfficientNet-Lite0", "vit_b_16", ""])
def test_unknown_backbone_lists_the_known_ones(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        create_model(name, num_classes=3, pretrained=False)
    message = str(err.value)
    assert "unknown backbone" in message
    for known in ("efficientnet_lite0", "mobilenet_v3_large", "resnet50"):
        assert known in message


def test_registry_has_the_promised_backbones() -> None:
    assert {
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "mobilenet_v2",
        "mobilenet_v3_large",
        "resnet18",
        "resnet50",
    } <= set(available_backbones())


@pytest.mark.parametrize(
    ("name", "dense", "features"),
    [
        ("efficientnet_lite0", 0, 1280),
        ("efficientnet_lite0", 32, 1280),
        ("resnet18", 0, 512),
        ("mobilenet_v3_large", 16, 960),
    ],
)
def test_model_shapes_and_head(name: str, dense: int, features: int) -> None:
    model = create_model(name, num_classes=5, pretrained=False, dense_units=dense, image_size=64)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)
    assert model.feature_dim == features
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == (2 if dense else 1)


def test_lite0_pretrained_weights_ship_offline() -> None:
    model = create_model("efficientnet_lite0", num_classes=3, pretrained=True)
    stem = model.body[0][0].weight
    assert stem.abs().sum() > 0 and stem.std() < 1  # real weights, not the random init


def test_forward_from_a_unit_equals_the_full_forward() -> None:
    model = create_model(
        "efficientnet_lite0", num_classes=3, pretrained=False, image_size=64
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        acts = model.body[:9](x)
        assert torch.allclose(model.forward_from(9, acts), model(x), atol=1e-5)


def test_torchvision_without_weights_offline_names_the_alternatives(monkeypatch) -> None:
    import torchvision.models as tvm

    def offline(*args, **kwargs):
        raise OSError("no network")  # the internet is the one thing tests may fake

    monkeypatch.setattr(tvm.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(ConfigError) as err:
        create_model("resnet18", num_classes=3, pretrained=True)
    assert "efficientnet_lite0" in str(err.value) and "pretrained: false" in str(err.value)


def test_preprocess_spec_matches_the_backbone() -> None:
    lite = preprocess_spec("efficientnet_lite0", 224, 256)
    assert lite.mean == LITE_MEAN and (lite.image_size, lite.resize) == (224, 256)
    assert preprocess_spec("resnet18", 96, 110).mean == (0.485, 0.456, 0.406)


def _checkpoint(model: torch.nn.Module, epoch: int) -> dict:
    return {
        "model_state": model.state_dict(),
        "backbone": "efficientnet_lite0",
        "class_names": ["a", "b", "c"],
        "model_params": {"dense_units": 8, "dropout": 0.1},
        "preprocess": PreprocessSpec(64, 72).to_dict(),
        "epoch": epoch,
        "metrics": {},
    }


def test_load_model_round_trip(tmp_path: Path) -> None:
    model = create_model("efficientnet_lite0", 3, pretrained=False, dense_units=8, image_size=64)
    path = save_checkpoint(tmp_path / "best.pt", _checkpoint(model.eval(), 4))
    loaded, ckpt = load_model(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not loaded.training and ckpt["epoch"] == 4 and ckpt["class_names"] == ["a", "b", "c"]


class _ExplodesWhilePickled:
    def __reduce__(self):
        raise RuntimeError("simulated crash in the middle of writing")


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    model = create_model("efficientnet_lite0", 3, pretrained=False, dense_units=8, image_size=64)
    path = save_checkpoint(tmp_path / "last.pt", _checkpoint(model, 1))
    before = path.read_bytes()
    broken = {**_checkpoint(model, 2), "tail": _ExplodesWhilePickled()}  # tensors written first
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(path, broken)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VisionOpsError, match="run `visionops train` first"):
        load_model(tmp_path / "nope.pt")


def test_cached_eval_view_equals_the_inference_preprocess(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "tall.jpg"
    Image.fromarray(rng.integers(0, 255, (150, 97, 3), dtype=np.uint8)).save(path, quality=90)
    spec = PreprocessSpec(64, 72, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    cache = ImageCache(tmp_path / "cache", spec.resize)
    cache.fill([path], ["abc123"], workers=1)
    cached = cache.load("abc123")
    assert min(cached.shape[:2]) == 72 and cached.shape[0] > cached.shape[1]  # whole image kept
    expected = preprocess(open_image(path), spec)
    assert np.array_equal(eval_array(cached, spec), expected)
    data = SplitData("val", [path], ["abc123"], np.array([0]))
    batch = torch.stack([ImageDataset(cache, data, spec)[0][0]])
    assert np.allclose(normalize_batch(batch, spec)[0].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("counts", "mode", "expected"),
    [
        ([40, 8], "auto", "weighted_loss"),
        ([20, 10], "auto", "none"),
        ([20, 10], "weighted_sampler", "weighted_sampler"),
        ([40, 8], "none", "none"),
    ],
)
def test_imbalance_weighting(counts: list[int], mode: str, expected: str) -> None:
    labels = np.repeat(np.arange(len(counts)), counts)
    params = TrainParams(imbalance=mode, imbalance_ratio=3.0, imbalance_power=1.0)
    result = resolve_imbalance(params, labels, 2)
    assert result.mode == expected
    assert result.selection_metric == ("accuracy" if expected == "none" else "macro_f1")
    if expected == "weighted_loss":
        w = result.class_weights
        assert w[1] / w[0] == pytest.approx(counts[0] / counts[1])
        assert float((w[labels]).mean()) == pytest.approx(1.0)
    if expected == "weighted_loss":  # the square-root compromise
        half = resolve_imbalance(TrainParams(imbalance_power=0.5), labels, 2).class_weights
        assert half[1] / half[0] == pytest.approx((counts[0] / counts[1]) ** 0.5)
    if expected == "weighted_sampler":
        p = result.sample_weights
        assert p.sum() == pytest.approx(1.0)
        assert p[labels == 1].sum() == pytest.approx(0.5)  # each class drawn equally often
