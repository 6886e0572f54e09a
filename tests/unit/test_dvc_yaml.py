"""dvc.yaml and visionops.paths declare the same stage outputs (paths are declared once)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from visionops.config import load_config
from visionops.paths import SPLITS, stage_paths

pytestmark = pytest.mark.unit


def _declared(repo_root: Path) -> set[str]:
    cfg = load_config(repo_root / "params.yaml")
    text = (repo_root / "dvc.yaml").read_text()
    text = text.replace("${base.artifacts_dir}", str(cfg.base.artifacts_dir))
    text = text.replace("${base.data_dir}", str(cfg.base.data_dir))
    stages = yaml.safe_load(text)["stages"]
    declared: set[str] = set()
    for stage in stages.values():
        for section in ("outs", "metrics", "plots"):
            for item in stage.get(section, []):
                declared.add(next(iter(item)) if isinstance(item, dict) else item)
    return declared


def test_every_stage_path_is_declared_in_dvc_yaml(repo_root: Path) -> None:
    cfg = load_config(repo_root / "params.yaml")
    p = stage_paths(cfg)
    expected = [
        p.manifest,
        p.validation_report,
        p.validation_summary,
        p.split_counts,
        *(p.split_file(s) for s in SPLITS),
        p.checkpoint_best,
        p.train_metrics,
        p.train_history,
        p.train_run,
        p.train_plots,
        p.evaluate_metrics,
        p.onnx_model,
        p.export_report,
        p.register_decision,
    ]
    declared = _declared(repo_root)
    missing = [
        str(x.relative_to(repo_root))
        for x in expected
        if str(x.relative_to(repo_root)) not in declared
    ]
    assert not missing, f"not declared in dvc.yaml: {missing}"


def test_every_stage_runs_the_cli(repo_root: Path) -> None:
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["validate", "split", "train", "evaluate", "export", "register"]
    for name, stage in stages.items():
        assert stage["cmd"] == f"visionops {name}"


def test_code_deps_exist_and_cover_each_stage_module(repo_root: Path) -> None:
    """A moved module must move in dvc.yaml too, or DVC stops noticing code changes."""
    from visionops.cli.main import STAGE_MODULES

    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        code = [d for d in stage["deps"] if d.startswith("src/")]
        missing = [d for d in code if not (repo_root / d).exists()]
        assert not missing, f"stage {name}: deps that do not exist: {missing}"
        module = repo_root / "src/visionops" / STAGE_MODULES[name].replace(".", "/")
        own = module if module.is_dir() else module.with_suffix(".py")
        covered = any(own == repo_root / d or own.is_relative_to(repo_root / d) for d in code)
        assert covered, f"stage {name}: {own.relative_to(repo_root)} is not among its deps"
