"""`visionops reproduce` leaves no worktree, temporary folder or stage process behind when the
rebuild fails, is interrupted (Ctrl-C: SIGINT to the process group) or terminated (SIGTERM to
the command alone, so its stage is orphaned and must be found by its working directory).

Real git, DVC and MLflow; the `evaluate` stage is a small script that fails or waits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from visionops.orchestrate.stages import dvc_executable, subprocess_env

pytestmark = [pytest.mark.unit, pytest.mark.slow]

VISIONOPS = str(Path(sys.executable).parent / "visionops")
STAGE = """\
import os, sys, time
print("stage started", flush=True)
if os.environ.get("STAGE_MODE") == "fail":
    print("error: the stage refused", flush=True)
    sys.exit(1)
time.sleep(300)
"""


def sh(root: Path, *cmd: str) -> str:
    env = subprocess_env()
    return subprocess.run(
        cmd, cwd=root, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A committed git + DVC project whose `evaluate` stage runs stage.py; a version of it in
    an MLflow registry. Returns (project, tracking uri)."""
    root = tmp_path_factory.mktemp("interrupt") / "proj"
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.txt").write_text("a\n")
    (root / "params.yaml").write_text("base:\n  seed: 1\n")
    (root / "stage.py").write_text(STAGE)
    stages = {"evaluate": {"cmd": f"{sys.executable} stage.py", "deps": ["data", "stage.py"]}}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.email", "t@example.com")
    sh(root, "git", "config", "user.name", "test")
    sh(root, dvc_executable(), "init", "-q")
    sh(root, dvc_executable(), "add", "-q", "data")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "init")
    md5 = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]

    from mlflow import MlflowClient

    store = f"sqlite:///{root.parent / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    client.create_registered_model("m")
    tags = {"git_commit": sh(root, "git", "rev-parse", "HEAD"), "data_version": md5}
    client.create_model_version("m", source="file:///nowhere", tags=tags)
    return root, store


def start(project: tuple[Path, str], mode: str) -> subprocess.Popen:
    root, store = project
    return subprocess.Popen(
        [VISIONOPS, "reproduce", "models:/m/1", "--tracking-uri", store],
        cwd=root,
        env={**subprocess_env(), "STAGE_MODE": mode},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal job has
        # ... and Ctrl-C's default action: a shell's background job inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(proc: subprocess.Popen, needle: str, timeout_s: float = 120) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line.rstrip())
        if needle in line:
            return lines
    raise AssertionError(f"never saw {needle!r}: {lines[-20:]}")


def assert_nothing_left(root: Path, lines: list[str]) -> None:
    folder = next(ln for ln in lines if ln.startswith("$ git worktree add")).split()[-2]
    tmp = Path(folder).parent
    assert not tmp.exists(), f"{tmp} left behind"
    assert len(sh(root, "git", "worktree", "list").splitlines()) == 1
    left = []
    for p in psutil.process_iter():
        try:
            if p.cwd().startswith(str(tmp)):
                left.append(p.cmdline())
        except psutil.Error:
            continue
    assert not left, f"processes still running in {tmp}: {left}"
    assert sh(root, "git", "status", "--porcelain", "-uno") == ""


def test_failed_rebuild_cleans_up_and_says_why(project: tuple[Path, str]) -> None:
    proc = start(project, "fail")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, out + err
    lines = err.splitlines()
    assert lines[-1].startswith("error: dvc repro in the worktree failed: the stage refused")
    assert_nothing_left(project[0], lines)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_rebuild_cleans_up(project: tuple[Path, str], how: str) -> None:
    proc = start(project, "wait")
    try:
        lines = wait_for(proc, "stage started")
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the whole job
        else:
            proc.send_signal(signal.SIGTERM)  # the command only: its stage is orphaned
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # never leave it running for the next test
            proc.terminate()
            proc.wait(timeout=60)
    lines += rest.splitlines()
    assert proc.returncode in (130, 143), (proc.returncode, lines[-5:])
    assert any(ln.startswith("removed the temporary worktree") for ln in lines)
    assert_nothing_left(project[0], lines)
