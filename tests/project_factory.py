"""Build a throw-away VisionOps project: repo files + generated images + git + dvc, in tmp dirs.

Shared by the e2e tests (dvc repro, Prefect flow). The package itself is used from the venv
(installed editable), so only the project files are copied.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Small, fast, still a real network: Lite0 from scratch at 64 px.
TINY_PARAMS = {
    "model.pretrained": False,
    "model.image_size": 64,
    "model.resize": 72,
    "train.batch_size": 16,
    "train.head_epochs": 1,
    "train.finetune_epochs": 1,
    "train.early_stopping_patience": 0,
    "validate.min_side": 16,
}

COLOURS = {
    "red": (200, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 60, 200),
    "gold": (220, 180, 40),
}


def write_class_images(
    folder: Path, label: str, count: int, size: int = 48, start: int = 0
) -> list[Path]:
    """``count`` distinct JPEGs of one colour family (noise makes every file's hash unique)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash((label, start))) % 2**32)
    base = np.array(COLOURS.get(label, (128, 128, 128)), dtype=np.int16)
    paths = []
    for i in range(start, start + count):
        noise = rng.integers(-40, 40, size=(size, size, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        path = folder / f"{label}_{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def project_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    env.update(
        {"DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
    )
    return env


def run(
    cmd: list[str], root: Path, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=root, env=project_env(root), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def set_params(root: Path, overrides: dict) -> None:
    params_file = root / "params.yaml"
    raw = yaml.safe_load(params_file.read_text())
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        node = raw
        for s in sections:
            node = node.setdefault(s, {})
        node[key] = value
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


def make_project(
    root: Path,
    classes: tuple[str, ...] = ("red", "green", "blue"),
    per_class: int = 14,
    overrides: dict | None = None,
) -> Path:
    """A git + dvc project at ``root`` with generated images in data/ tracked by data.dvc."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", "curation.csv"):  # validate deps
        shutil.copy(REPO_ROOT / name, root / name)
    (root / ".gitignore").write_text("/data/\n/artifacts/\n/mlruns/\n/.cache/\n/dvc-storage/\n")
    # dvc.yaml lists src/visionops/... files as deps: link the package source in.
    (root / "src").mkdir(exist_ok=True)
    shutil.copytree(
        REPO_ROOT / "src" / "visionops",
        root / "src" / "visionops",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    set_params(root, {**TINY_PARAMS, **(overrides or {})})
    for label in classes:
        write_class_images(root / "data" / label, label, per_class)
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "t@example.com"], root)
    run(["git", "config", "user.name", "test"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    run(["dvc", "remote", "add", "-d", "local", str(root / "dvc-storage")], root)
    run(["dvc", "add", "-q", "data"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "init"], root)
    return root
