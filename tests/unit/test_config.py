"""params.yaml -> Config: defaults load, and every bad value is ONE line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from visionops.config import build_config, load_config
from visionops.errors import ConfigError

pytestmark = pytest.mark.unit


def test_repo_params_load(repo_root: Path) -> None:
    cfg = load_config(repo_root / "params.yaml")
    assert cfg.root == repo_root
    assert abs(cfg.split.train + cfg.split.val + cfg.split.test - 1.0) < 1e-9
    assert cfg.data_dir == repo_root / "data"
    assert cfg.as_flat_dict()["train.batch_size"] == cfg.train.batch_size
    assert "root" not in cfg.as_flat_dict()


@pytest.mark.parametrize(
    ("raw", "must_contain"),
    [
        ({"trian": {"batch_size": 8}}, ["unknown key 'trian'", "train"]),
        ({"train": {"batchsize": 8}}, ["unknown key 'train.batchsize'", "batch_size"]),
        ({"train": {"batch_size": "big"}}, ["train.batch_size", "'big'"]),
        ({"train": {"batch_size": -1}}, ["train.batch_size", "greater than 0"]),
        ({"split": {"train": 0.8, "val": 0.15, "test": 0.15}}, ["sum to 1.0", "1.1"]),
        ({"split": {"train": 1.2, "val": 0.0, "test": 0.0}}, ["split.train", "1.2"]),
        ({"train": {"device": "tpu"}}, ["train.device", "'auto'", "'cuda'", "'tpu'"]),
        ({"train": {"imbalance": "yes"}}, ["train.imbalance", "weighted_loss"]),
        ({"model": {"image_size": 224, "resize": 200}}, ["model.resize", "model.image_size"]),
        ({"schedule": {"cron": "every night"}}, ["schedule.cron", "5 fields"]),
        ({"validate": {"min_side": 0}}, ["validate.min_side"]),
        ({"validate": {"bogus": 1}}, ["unknown key 'validate.bogus'", "min_side"]),
    ],
)
def test_bad_params_give_one_line(raw: dict, must_contain: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(raw, source="params.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("params.yaml")
    for fragment in must_contain:
        assert fragment in message, message


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  batch_size: [1,\n")
    with pytest.raises(ConfigError, match=r"params.yaml: line \d+ is not valid YAML"):
        load_config(bad)


def test_overrides_apply_before_validation(tmp_path: Path, repo_root: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text((repo_root / "params.yaml").read_text())
    cfg = load_config(params, overrides={"train.head_epochs": 1, "model.dense_units": 64})
    assert (cfg.train.head_epochs, cfg.model.dense_units) == (1, 64)
    with pytest.raises(ConfigError, match="train.head_epochs"):
        load_config(params, overrides={"train.head_epochs": -3})


def test_relative_paths_resolve_against_params_folder(tmp_path: Path) -> None:
    params = tmp_path / "sub" / "params.yaml"
    params.parent.mkdir()
    params.write_text(yaml.safe_dump({"base": {"data_dir": "images"}}))
    cfg = load_config(params)
    assert cfg.data_dir == tmp_path / "sub" / "images"
    assert cfg.path("/abs/x") == Path("/abs/x")
