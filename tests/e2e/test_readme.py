"""The README's "Your own images" block, run verbatim with bash in a fresh copy of the project,
as a new user would type it: no activated venv, nothing on PATH but the system's.

The copy is what is checked out, committed or not: ``git clone`` of this repository (its
history, a clean clone) with the working tree laid over it (``git ls-files --cached --others
--exclude-standard``; files deleted in the working tree are deleted too), committed in the
clone. ``make install`` is replaced by a ``.venv`` folder of symlinks to the venv running the
tests (its ``visionops`` is this repository's editable install) and a fresh install stamp, so
``make`` never reinstalls into the shared venv. Generated JPEGs stand in for the user's
photos and ``photo.jpg``, and the tiny training params of the other e2e tests keep it to a
minute or two.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.project_factory import REPO_ROOT, TINY_PARAMS, set_params, write_class_images

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VENV = Path(sys.executable).parent.parent
HEADING = "## Your own images"


def readme_block(readme: Path, heading: str = HEADING) -> str:
    """The first fenced code block under ``heading`` (up to the next ``## ``), so the test follows
    README edits."""
    text = readme.read_text(encoding="utf-8")
    assert heading in text, f"{readme}: no {heading!r} section"
    section = re.split(r"^## ", text.split(heading, 1)[1], flags=re.MULTILINE)[0]
    found = re.search(r"^```(?:bash|sh)?\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    assert found, f"{readme}: no code block under {heading!r}"
    return found.group(1)


def checked_out_copy(dest: Path) -> Path:
    """A clone of REPO_ROOT holding its working tree as it is now, committed."""
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
    subprocess.run([*git, "clone", "-q", str(REPO_ROOT), str(dest)], check=True)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src, dst = REPO_ROOT / rel, dest / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        elif not src.exists() and dst.exists():
            dst.unlink()  # deleted in the working tree, not yet in git
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "working tree under test"], cwd=dest, check=False)
    (dest / ".venv").mkdir()
    for entry in VENV.iterdir():
        if entry.name != ".installed":
            (dest / ".venv" / entry.name).symlink_to(entry)
    (dest / ".venv" / ".installed").touch()  # newer than the clone's pyproject.toml
    return dest


def new_user_env(home: Path) -> dict[str, str]:
    """A new terminal: system PATH only (no venv), offline switches from the README."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GX_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def bash(script: str, cwd: Path, env: dict[str, str], timeout: float = 900):
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_readme_block_is_found() -> None:
    block = readme_block(REPO_ROOT / "README.md")
    assert "dvc repro" in block and "visionops predict" in block


def test_your_own_images_block_runs_verbatim_in_a_fresh_clone(tmp_path: Path) -> None:
    block = readme_block(REPO_ROOT / "README.md")
    clone = checked_out_copy(tmp_path / "clone")
    assert not (clone / "data").exists(), "a fresh clone has no data/"
    set_params(clone, TINY_PARAMS)
    for label in ("red", "green", "blue"):  # the user's photos, one folder per class
        write_class_images(clone / "data" / label, label, 14)
    write_class_images(tmp_path / "photo", "green", 1)[0].rename(clone / "photo.jpg")
    env = new_user_env(tmp_path / "home")

    proc = bash(block, clone, env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"README block failed ({proc.returncode}):\n{out[-6000:]}"
    decision = json.loads((clone / "artifacts" / "register" / "decision.json").read_text())
    assert decision["alias"] == "champion", decision
    assert re.search(r"\b(red|green|blue)\b", proc.stdout), proc.stdout[-2000:]

    # What `make demo` prints last: its "Next" commands work as typed in a new terminal.
    summary = bash(".venv/bin/python -m visionops.orchestrate.demo_summary", clone, env)
    assert summary.returncode == 0, summary.stderr
    assert "true " in summary.stdout and " right" in summary.stdout, summary.stdout
    # small test splits: the accuracy comes with its 95% interval
    assert re.search(r"test accuracy \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", summary.stdout), (
        summary.stdout
    )
    nxt = summary.stdout.split("Next, in this folder:\n", 1)[1].splitlines()
    typed = [line.strip() for line in nxt if line.strip().startswith(("source ", "visionops "))]
    assert len(typed) == 2, nxt
    proc = bash("\n".join(typed), clone, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # The pre-fix habit: `.venv/bin/dvc repro` with no activated venv must find `visionops` too.
    set_params(clone, {"evaluate.top_losses": 4})
    proc = bash(".venv/bin/dvc repro", clone, env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "Running stage 'evaluate'" in proc.stdout, proc.stdout[-2000:]
    for kept in ("evaluate/metrics.json", "evaluate/per_class.csv", "train/run.json"):
        assert (clone / "artifacts" / kept).is_file(), kept

    # README: "`make repro` does the `dvc add data` and `dvc repro` lines".
    proc = bash("make repro", clone, env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "up to date" in proc.stdout + proc.stderr, proc.stdout[-2000:]
