"""Fixtures for the data tests; the image generators live in ``tests/data/imagegen.py``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from visionops.config import Config, build_config


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


@pytest.fixture
def make_config(tmp_path: Path, data_root: Path) -> Callable[..., Config]:
    """``make_config(**{"validate.min_images_per_class": 2})`` -> Config over ``data_root``."""

    def build(**overrides) -> Config:
        raw: dict = {
            "base": {
                "data_dir": str(data_root),
                "artifacts_dir": str(tmp_path / "artifacts"),
                "workers": 1,
            },
            "validate": {"min_images_per_class": 2},
        }
        for dotted, value in overrides.items():
            section, key = dotted.split(".", 1)
            raw.setdefault(section, {})[key] = value
        return build_config(raw, root=tmp_path)

    return build
