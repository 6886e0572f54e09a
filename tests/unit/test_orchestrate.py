"""orchestrate, version_data, override_params and run_report against a real (tiny) git + DVC repo.

The stages here are one-line Python commands, so DVC's behaviour (ran / skipped / failed / locked)
is real while each call costs about a second.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from visionops.config import load_config
from visionops.errors import ConfigError, VisionOpsError
from visionops.orchestrate import stages as orchestrate
from visionops.orchestrate.override_params import override_params
from visionops.orchestrate.run_report import PipelineRun, build_report
from visionops.orchestrate.stages import StageFailed, StageResult, Transient
from visionops.orchestrate.version_data import DataVersion, push, version_data

pytestmark = pytest.mark.unit
dvc_repo_test = pytest.mark.slow  # real dvc subprocesses: ~1-3 s per call

REPO_ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

DVC_YAML = {
    "stages": {
        "echo": {
            "cmd": f"{PY} -c \"import yaml; v = yaml.safe_load(open('params.yaml'))['a']['value'];"
            f" print('value', v); open('out.txt', 'w').write(str(v))\"",
            "params": ["a.value"],
            "outs": ["out.txt"],
        },
        "refuse": {
            "cmd": f"{PY} -c \"import sys; print('error: data/fox: 1 image, need 5. Fix: add "
            "images', file=sys.stderr); sys.exit(1)\"",
            "outs": ["never.txt"],
        },
        "crash": {"cmd": f"{PY} -c \"raise ValueError('boom')\"", "outs": ["never2.txt"]},
        "experiment": {
            "cmd": f"{PY} -c \"import os; print('experiment', os.environ.get("
            "'VISIONOPS_EXPERIMENT'))\"",
            "always_changed": True,
        },
    }
}


def _git_dvc(root: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc = orchestrate.dvc_executable()
    subprocess.run([dvc, "init", "-q"], cwd=root, check=True, env=orchestrate.subprocess_env())


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One git + DVC repo for the module (init costs seconds); tests only add to its state."""
    tmp_path = tmp_path_factory.mktemp("dvcrepo")
    (tmp_path / "params.yaml").write_text("a:\n  value: 1  # a comment\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "cat" / "1.txt").write_text("one")
    _git_dvc(tmp_path)
    return tmp_path


@dvc_repo_test
def test_stage_runs_then_is_skipped_then_forced(repo: Path) -> None:
    lines: list[str] = []
    first = orchestrate.run_stage(repo, "echo", on_line=lines.append)
    assert first.status == "ran"
    assert any(line == "value 1" for line in lines), lines  # the stage's own output streamed
    assert orchestrate.run_stage(repo, "echo").status == "skipped"
    assert orchestrate.run_stage(repo, "echo", force=True).status == "ran"


@dvc_repo_test
def test_an_experiment_run_names_itself_to_the_stage(repo: Path) -> None:
    """How the Prefect flow's param-override runs reach register (no alias moves)."""
    lines: list[str] = []
    orchestrate.run_stage(repo, "experiment", on_line=lines.append, experiment="prefect-odd-fox")
    assert "experiment prefect-odd-fox" in lines, lines
    lines.clear()
    orchestrate.run_stage(repo, "experiment", on_line=lines.append)
    assert "experiment None" in lines, lines


@dvc_repo_test
def test_failed_stage_carries_its_own_error_line(repo: Path) -> None:
    with pytest.raises(StageFailed) as info:
        orchestrate.run_stage(repo, "refuse")
    assert info.value.reason == "data/fox: 1 image, need 5. Fix: add images"
    assert str(info.value).startswith("stage 'refuse' failed: data/fox")
    assert not isinstance(info.value, Transient)


@dvc_repo_test
def test_crashed_stage_names_the_exception(repo: Path) -> None:
    with pytest.raises(StageFailed, match="ValueError: boom"):
        orchestrate.run_stage(repo, "crash")


@dvc_repo_test
def test_dvc_lock_held_elsewhere_is_transient(repo: Path) -> None:
    from dvc.repo import Repo

    with Repo(str(repo)).lock, pytest.raises(Transient, match="locked by another DVC process"):
        orchestrate.run_stage(repo, "echo")


@dvc_repo_test
def test_version_data_adds_only_when_data_changed(repo: Path) -> None:
    first = version_data(repo, "data")
    assert first.changed and first.previous_md5 is None and first.nfiles == 1
    assert (repo / "data.dvc").exists()
    same = version_data(repo, "data")
    assert not same.changed and same.md5 == first.md5
    (repo / "data" / "cat" / "2.txt").write_text("two")
    new = version_data(repo, "data")
    assert new.changed and new.previous_md5 == first.md5 and new.md5 != first.md5
    assert new.nfiles == 2


def test_version_data_without_data_folder_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(VisionOpsError, match="data folder not found"):
        version_data(tmp_path, "data")


@dvc_repo_test
def test_push_without_remote_refuses_clearly(repo: Path) -> None:
    with pytest.raises(VisionOpsError, match="no default DVC remote") as info:
        push(repo)
    assert not isinstance(info.value, Transient)


def test_pipeline_lock_makes_a_second_run_wait(tmp_path: Path) -> None:
    repo = tmp_path
    (repo / ".dvc").mkdir()
    events: list[str] = []

    def second() -> None:
        with orchestrate.pipeline_lock(repo, poll_s=0.05, on_wait=events.append):
            events.append("second in")

    with orchestrate.pipeline_lock(repo):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)
        assert events and "waiting" in events[0] and "second in" not in events
        events.append("first out")
    thread.join(timeout=10)
    assert events[-1] == "second in" and "first out" in events


def test_pipeline_lock_times_out_with_a_clear_message(tmp_path: Path) -> None:
    repo = tmp_path
    (repo / ".dvc").mkdir()
    with orchestrate.pipeline_lock(repo), pytest.raises(VisionOpsError, match="still holds"):  # noqa: SIM117
        with orchestrate.pipeline_lock(repo, timeout_s=0.2, poll_s=0.05):
            pass


def test_override_params_keeps_comments_and_types(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", params)
    before = params.read_text()
    changes = override_params(
        params,
        {"train.head_epochs": "1", "train.augment.crop_scale": [0.5, 1.0], "train.batch_size": 32},
    )
    assert [(c.key, c.new) for c in changes] == [
        ("train.head_epochs", 1),
        ("train.augment.crop_scale", [0.5, 1.0]),
    ]  # batch_size already 32: not a change
    after = params.read_text()
    assert load_config(params).train.head_epochs == 1
    assert "crop_scale: [0.5, 1.0]" in after  # flow style kept
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 2  # only the two lines, comments intact
    assert all("#" in b for a, b in changed if "#" in a)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.head_epoch": 1}, "unknown key 'train.head_epoch'"),
        ({"model.resize": 8}, "model.resize"),
        ({"": 1}, "dotted key"),
    ],
)
def test_override_params_rejects_bad_overrides_untouched(
    tmp_path: Path, overrides: dict, message: str
) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", params)
    before = params.read_text()
    with pytest.raises(ConfigError, match=message):
        override_params(params, overrides)
    assert params.read_text() == before


def test_report_of_a_failed_run_shows_no_stale_sections(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    cfg = load_config(tmp_path / "params.yaml")
    metrics = cfg.artifacts_dir / "evaluate" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"accuracy": 0.5}')  # left over from an older run
    run = PipelineRun(
        name="test-run",
        data=DataVersion("data.dvc", True, "abc.dir", "old.dir", 10, 1000),
        stages=[StageResult("validate", "skipped", 1.0, "dvc repro")],
        failed_stage="split",
        failure="stage 'split' failed: nope",
    )
    text = build_report(cfg, run)
    assert text.startswith("# VisionOps pipeline FAILED at stage `split`")
    assert "> stage 'split' failed: nope" in text and "**new version**" in text
    assert "| split | failed |" in text and "| train | not run |" in text
    assert "Test metrics" not in text and "accuracy" not in text
