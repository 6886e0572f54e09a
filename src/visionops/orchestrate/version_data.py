"""Data versioning for an orchestrated run: ``data/`` becomes a new ``data.dvc`` version only when
its content changed; ``dvc push`` sends data and cached outputs to the default DVC remote.

Both run ``dvc`` as a subprocess (see :mod:`visionops.orchestrate.stages`); a busy DVC lock or an
unreachable remote raises :class:`~visionops.orchestrate.stages.Transient` (worth a retry), anything
else a plain :class:`~visionops.errors.VisionOpsError`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from visionops.errors import DataError, VisionOpsError
from visionops.orchestrate.stages import (
    DVC_LOCKED,
    LineSink,
    Transient,
    dvc_executable,
    failure_message,
    run_command,
    subprocess_env,
)


@dataclass
class DataVersion:
    """What :func:`version_data` found. ``md5`` is DVC's directory hash in ``data.dvc``."""

    dvc_file: str
    changed: bool
    md5: str
    previous_md5: str | None
    nfiles: int | None
    size_bytes: int | None
    duration_s: float = 0.0

    def summary(self) -> str:
        files = f", {self.nfiles} files" if self.nfiles is not None else ""
        if not self.changed:
            return f"data unchanged: {self.dvc_file} md5 {self.md5}{files}"
        before = f" (was {self.previous_md5})" if self.previous_md5 else " (first version)"
        return f"new data version: {self.dvc_file} md5 {self.md5}{before}{files}"

    def to_dict(self) -> dict:
        return asdict(self)


def _dvc_file(root: Path, data_dir: Path) -> Path:
    return (
        data_dir.parent / f"{data_dir.name}.dvc"
        if data_dir.is_absolute()
        else (root / data_dir.parent / f"{data_dir.name}.dvc")
    )


def _read_dvc_file(path: Path) -> dict:
    try:
        outs = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("outs") or [{}]
        return dict(outs[0])
    except (OSError, yaml.YAMLError, AttributeError, TypeError) as exc:
        raise VisionOpsError(f"{path}: unreadable ({exc}); restore it with git") from None


def version_data(
    root: Path | str, data_dir: Path | str = "data", on_line: LineSink | None = None
) -> DataVersion:
    """Make ``data.dvc`` describe the current ``data/``: ``dvc add`` only if something changed.

    ``dvc status`` compares file hashes (cached by mtime in DVC's state db, so an unchanged folder
    costs about a second). The new ``data.dvc`` is left for the user to commit to git.
    """
    root = Path(root)
    data = Path(data_dir) if Path(data_dir).is_absolute() else root / data_dir
    dvc_file = _dvc_file(root, Path(data_dir))
    rel = os.path.relpath(data, root)
    started = time.perf_counter()
    if not data.is_dir():
        hint = (
            f"`dvc checkout {dvc_file.name}` or `dvc pull`"
            if dvc_file.exists()
            else ("put one sub-folder of images per class there")
        )
        raise DataError(f"{data}: data folder not found. Fix: {hint}")
    previous = _read_dvc_file(dvc_file).get("md5") if dvc_file.exists() else None
    changed = previous is None
    if not changed:
        args = [dvc_executable(), "status", "--json", os.path.relpath(dvc_file, root)]
        proc = subprocess.run(
            args,
            cwd=root,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            if DVC_LOCKED in proc.stderr:
                raise Transient(f"dvc status: the DVC repository {root} is locked; retrying later")
            raise VisionOpsError(f"dvc status {dvc_file.name} failed: {proc.stderr.strip()}")
        changed = bool(json.loads(proc.stdout or "{}"))
    if changed:
        out = run_command([dvc_executable(), "add", rel], root, on_line)
        if out.returncode != 0:
            if DVC_LOCKED in out.markers:
                raise Transient(
                    f"dvc add {rel}: the DVC repository {root} is locked; retrying later"
                )
            raise VisionOpsError(f"dvc add {rel} failed: {failure_message(out)}")
    now = _read_dvc_file(dvc_file)
    return DataVersion(
        dvc_file=os.path.relpath(dvc_file, root),
        changed=changed,
        md5=str(now.get("md5", "")),
        previous_md5=previous if changed else None,
        nfiles=now.get("nfiles"),
        size_bytes=now.get("size"),
        duration_s=round(time.perf_counter() - started, 2),
    )


def push(root: Path | str, on_line: LineSink | None = None) -> None:
    """``dvc push`` (data and cached stage outputs) to the default remote."""
    root = Path(root)
    default = subprocess.run(
        [dvc_executable(), "config", "core.remote"],
        cwd=root,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if not default.stdout.strip():
        raise VisionOpsError(
            f"push requested but {root} has no default DVC remote. Fix: dvc remote add -d "
            f"storage <folder or s3://bucket/prefix>, or run without push"
        )
    out = run_command([dvc_executable(), "push"], root, on_line)
    if out.returncode != 0:
        # A remote that did not answer may answer next time; the flow retries this step.
        raise Transient(f"dvc push failed: {failure_message(out)}")
