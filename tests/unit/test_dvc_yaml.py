"""dvc.yaml and visionops.paths declare the same stage outputs (paths are declared once)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from visionops.config import load_config
from visionops.paths import SPLITS, stage_paths

pytestmark = pytest.mark.unit


def _dvc_yaml(repo_root: Path) -> dict:
    """dvc.yaml with ``${base.*}`` filled from params.yaml."""
    cfg = load_config(repo_root / "params.yaml")
    text = (repo_root / "dvc.yaml").read_text()
    text = text.replace("${base.artifacts_dir}", str(cfg.base.artifacts_dir))
    text = text.replace("${base.data_dir}", str(cfg.base.data_dir))
    return yaml.safe_load(text)


def _section(repo_root: Path, section: str) -> dict[str, dict]:
    """Every stage's entries of ``section`` (outs / metrics / plots): path -> options."""
    found: dict[str, dict] = {}
    for stage in _dvc_yaml(repo_root)["stages"].values():
        for item in stage.get(section, []):
            path, options = next(iter(item.items())) if isinstance(item, dict) else (item, {})
            found[path] = options or {}
    return found


def _declared(repo_root: Path) -> set[str]:
    return {p for s in ("outs", "metrics", "plots") for p in _section(repo_root, s)}


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
        p.evaluate_scores,
        p.evaluate_predictions,
        p.evaluate_per_class,
        p.evaluate_label_issues,
        p.evaluate_plots,
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
        assert stage["cmd"] == f'PATH="$PATH:.venv/bin" visionops {name}'


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


def test_metrics_are_the_flat_files_and_versioned_with_dvc_lock(repo_root: Path) -> None:
    """Only small all-number files are DVC metrics (``dvc metrics show`` fits a terminal), and
    DVC caches them, so ``dvc metrics diff <rev>`` / ``dvc exp show`` find them for any commit
    (``artifacts/`` is git-ignored: with ``cache: false`` an older commit has no copy)."""
    p = stage_paths(load_config(repo_root / "params.yaml"))
    metrics = _section(repo_root, "metrics")
    expected = {p.train_metrics, p.evaluate_scores}
    assert set(metrics) == {str(x.relative_to(repo_root)) for x in expected}
    assert all(opts.get("cache", True) for opts in metrics.values()), metrics
    outs = _section(repo_root, "outs")
    for data in (p.train_history, p.evaluate_predictions, p.evaluate_plots, p.train_plots):
        assert outs[str(data.relative_to(repo_root))].get("cache", True), data


def test_every_plot_reads_a_declared_output(repo_root: Path) -> None:
    p = stage_paths(load_config(repo_root / "params.yaml"))
    declared = _declared(repo_root)
    used: set[str] = set()
    for item in _dvc_yaml(repo_root)["plots"]:
        if isinstance(item, str):
            used.add(item)
            continue
        ((name, props),) = item.items()
        y = props.get("y")
        used.update(y if isinstance(y, dict) else [name])  # {file: columns}, or the id is the file
    assert used <= declared, sorted(used - declared)
    for plot in (p.train_history, p.evaluate_predictions, p.train_plots, p.evaluate_plots):
        assert str(plot.relative_to(repo_root)) in used, plot


def test_plots_page_is_offline(repo_root: Path) -> None:
    """``dvc plots show`` uses the vendored page: Vega inlined, no CDN, DVC's slot present."""
    from configobj import ConfigObj

    template = ConfigObj(str(repo_root / ".dvc" / "config"))["plots"]["html_template"]
    page_path = (repo_root / ".dvc" / template).resolve()
    assert page_path == repo_root / "vendor" / "vega" / "dvc-plots.html"
    page = page_path.read_text(encoding="utf-8")
    # No {scripts} slot: that is where DVC puts its <script src="https://cdn.jsdelivr.net/...">.
    assert "{plot_divs}" in page and "{scripts}" not in page
    assert "<script src" not in page.replace(" ", "") and "jsdelivr" not in page
    versions = json.loads((page_path.parent / "versions.json").read_text(encoding="utf-8"))
    for name, v in versions.items():
        marker = f'<script data-package="{name}@{v["version"]}">'
        start = page.index(marker) + len(marker)
        _header, code = page[start : page.index("</script>", start)].split("\n", 1)
        assert hashlib.sha256(code.strip().encode()).hexdigest() == v["sha256"], name
        assert (page_path.parent / f"LICENSE.{name}").is_file(), name
    assert set(versions) == {"vega", "vega-lite", "vega-embed"}
    assert (page_path.parent / "THIRD-PARTY-NOTICES.txt").stat().st_size > 1000
