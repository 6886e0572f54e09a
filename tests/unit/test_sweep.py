"""visionops sweep without DVC: the search-space file, its points, names and -S values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from visionops.errors import ConfigError
from visionops.orchestrate.sweep import experiment_name, hydra_value, run_sweep
from visionops.orchestrate.sweep_space import check_points, load_space, sweep_points
from visionops.tracking import store_root

pytestmark = pytest.mark.unit
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("params.yaml", "dvc.yaml"):
        (tmp_path / name).write_text((REPO_ROOT / name).read_text())
    return tmp_path


def space_file(root: Path, content: dict | str) -> Path:
    path = root / "sweep.yaml"
    path.write_text(
        content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    )
    return path


def test_grid_is_every_combination_in_file_order(project: Path) -> None:
    grid = {"train.head_lr": [0.001, 0.01], "train.head_epochs": [1, 2]}
    points = sweep_points(load_space(space_file(project, {"grid": grid})))
    assert points == [
        {"train.head_lr": 0.001, "train.head_epochs": 1},
        {"train.head_lr": 0.001, "train.head_epochs": 2},
        {"train.head_lr": 0.01, "train.head_epochs": 1},
        {"train.head_lr": 0.01, "train.head_epochs": 2},
    ]


def test_random_points_are_reproducible_and_in_range(project: Path) -> None:
    spec = {
        "random": {
            "train.head_lr": {"low": 0.0001, "high": 0.01, "log": True},
            "train.finetune_epochs": {"low": 1, "high": 3},
            "model.dropout": [0.1, 0.3],
        },
        "grid": {"train.head_epochs": [1, 2]},
        "n": 6,
        "seed": 7,
    }
    path = space_file(project, spec)
    points = sweep_points(load_space(path))
    assert points == sweep_points(load_space(path))  # same seed, same points
    assert len(points) <= 12 and {p["train.head_epochs"] for p in points} == {1, 2}
    for p in points:
        assert 0.0001 <= p["train.head_lr"] <= 0.01
        assert p["train.finetune_epochs"] in (1, 2, 3)
        assert p["model.dropout"] in (0.1, 0.3)
    assert sweep_points(load_space(path, seed=8)) != points
    assert len(sweep_points(load_space(path, n=1))) == 2
    check_points(load_space(path), points, project / "params.yaml", project / "dvc.yaml")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "expected a mapping with grid: and/or random:"),
        ({"grd": {}}, "unknown key 'grd'; expected grid, random, n, seed"),
        ({"n": 3}, "nothing to sweep"),
        ({"grid": {"train.head_lr": 0.001}}, "grid.train.head_lr: expected a non-empty list"),
        ({"grid": {"train.head_lr": []}}, "grid.train.head_lr: expected a non-empty list"),
        (
            {"random": {"train.head_lr": {"low": 1, "high": 0.1}}, "n": 2},
            "needs numbers low < high",
        ),
        ({"random": {"train.head_lr": {"low": 0, "high": 1, "log": True}}, "n": 2}, "low > 0"),
        ({"random": {"train.head_lr": {"low": 0.1, "high": 1, "step": 2}}, "n": 2}, "'step'"),
        ({"random": {"train.head_lr": [0.1]}}, "n: random: needs n >= 1"),
        ({"grid": {"train.head_lr": [0.1]}, "n": 2}, "n: only applies to random:"),
        (
            {"grid": {"train.head_lr": [0.1]}, "random": {"train.head_lr": [0.2]}, "n": 1},
            "in both grid: and random:",
        ),
    ],
)
def test_a_malformed_file_is_one_line_naming_the_key(
    project: Path, content: dict | str, message: str
) -> None:
    with pytest.raises(ConfigError, match="sweep.yaml") as err:
        load_space(space_file(project, content))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"train.head_lrr": [0.1]}, "grid.train.head_lrr: not a key of params.yaml; did you mean"),
        ({"train": [0.1]}, "grid.train: not a key of params.yaml"),
        ({"base.workers": [1, 2]}, "grid.base.workers: no stage in dvc.yaml depends on it"),
        ({"train.head_lr": [0.1, -1]}, "point 2 (train.head_lr=-1):"),
        ({"train.device": ["cpu", "tpu"]}, "point 2 (train.device=tpu):"),
    ],
)
def test_points_are_checked_against_params_and_dvc_yaml(
    project: Path, grid: dict, message: str
) -> None:
    space = load_space(space_file(project, {"grid": grid}))
    with pytest.raises(ConfigError) as err:
        check_points(space, sweep_points(space), project / "params.yaml", project / "dvc.yaml")
    assert message in str(err.value)


def test_nothing_is_queued_when_one_point_is_wrong(project: Path) -> None:
    """No git, no DVC here: a bad point must fail before either is needed."""
    space_file(project, {"grid": {"train.head_lr": [0.001, 0]}})
    with pytest.raises(ConfigError, match="point 2"):
        run_sweep(project, "sweep.yaml")
    space_file(project, {"grid": {"train.head_lr": [0.001, 0.01]}})
    planned = run_sweep(project, "sweep.yaml", dry_run=True, prefix="lr")
    assert planned.names == ["lr-head_lr-0.001", "lr-head_lr-0.01"]
    assert planned.metric == "macro_f1" and "--sort-by artifacts/evaluate/scores.json:macro_f1" in (
        planned.sort_by
    )


@pytest.mark.parametrize(
    ("point", "name"),
    [
        ({"train.head_lr": 0.003}, "s-head_lr-0.003"),
        ({"train.head_lr": 1e-05, "train.head_epochs": 2}, "s-head_lr-1e-05-head_epochs-2"),
        ({"model.dropout": 0.1, "train.dropout": 0.2}, "s-model.dropout-0.1-train.dropout-0.2"),
        ({"train.augment.crop_scale": [0.5, 1.0]}, "s-crop_scale-0.5_1.0"),
        ({"model.backbone": "x y:z"}, "s-backbone-x_y_z"),
    ],
)
def test_experiment_names_are_readable_git_refs(point: dict, name: str) -> None:
    assert experiment_name("s", point) == name


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.003, "0.003"),
        (1e-05, "1e-05"),
        (3, "3"),
        (True, "true"),
        (None, "null"),
        ("efficientnet_lite0", "efficientnet_lite0"),
        ("true", "'true'"),
        ("a,b", "'a,b'"),
        ([0.6, 1.0], "[0.6,1.0]"),
    ],
)
def test_values_reach_dvc_as_hydra_reads_them(value: object, text: str) -> None:
    assert hydra_value(value) == text


def test_a_queued_copy_resolves_the_store_in_the_original_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionops.config import load_config

    origin = tmp_path / "repo"
    copy = origin / ".dvc" / "tmp" / "exps" / "tmpabc"
    for root in (origin, copy):
        (root / ".dvc").mkdir(parents=True, exist_ok=True)
        (root / "proj").mkdir()
        (root / "proj" / "params.yaml").write_text("base: {seed: 1}\n")
    in_copy = load_config(copy / "proj" / "params.yaml")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert store_root(in_copy) == (copy / "proj").resolve()
    monkeypatch.setenv("DVC_ROOT", str(origin))  # what DVC gives a queued experiment's stages
    assert store_root(in_copy) == (origin / "proj").resolve()
    assert store_root(load_config(origin / "proj" / "params.yaml")) == (origin / "proj").resolve()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "elsewhere"))  # not our copy: left alone
    assert store_root(in_copy) == (copy / "proj").resolve()
