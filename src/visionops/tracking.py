"""MLflow and lineage plumbing shared by train, evaluate, register and lineage.

The embedded default is a SQLite store at ``mlruns/mlflow.db`` with artifacts under
``mlruns/artifacts``; ``MLFLOW_TRACKING_URI`` in the environment wins (a tracking server, say).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from visionops.config import Config


def tracking_uri(config: Config) -> str:
    """The URI in force: the environment's, else params' with a relative sqlite path resolved."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or config.base.mlflow_tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        db = config.path(uri.removeprefix(prefix))
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = prefix + str(db.resolve())
    return uri


def setup_tracking(config: Config) -> str:
    """Point mlflow at the project's store and select (or create) the experiment.

    A new experiment's artifacts go to ``base.mlflow_artifacts_dir`` so the embedded store keeps
    everything under ``mlruns/``. Returns the experiment id.
    """
    import mlflow

    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = config.base.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:"):
            artifacts = config.path(config.base.mlflow_artifacts_dir).resolve()
            artifacts.mkdir(parents=True, exist_ok=True)
            location = artifacts.as_uri()
        experiment_id = mlflow.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


#: Written by ``dvc repro`` while the stages run (each finished stage updates its entry), so it
#: is always modified mid-run: train, export and register would all see it "dirty" although it
#: is an output of the very run being recorded, not an input. It is left out of the dirty list.
GIT_DIRTY_IGNORED = ("dvc.lock",)
GIT_DIRTY_MAX_CHARS = 1000  # the ``git_dirty`` tag: MLflow caps tag values, people read it


def _git(root: Path | str, *args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout


def git_state(root: Path | str = ".") -> tuple[str, list[str]]:
    """(HEAD's sha or ``unknown``, tracked paths with uncommitted changes).

    Dirty = ``git status --porcelain --untracked-files=no``: staged or unstaged changes to tracked
    files (untracked files are not part of any checkout, so they do not count). Paths are
    relative to the repository's top level (as git prints them; both sides of a rename are
    listed). The project's ``dvc.lock`` is not counted (see :data:`GIT_DIRTY_IGNORED`). Outside
    a git repository, without git, or before the first commit: ``("unknown", [])``.
    """
    try:
        sha = _git(root, "rev-parse", "HEAD").strip()
        top = Path(_git(root, "rev-parse", "--show-toplevel").strip())
        status = _git(root, "status", "--porcelain", "-z", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown", []
    here = Path(root).resolve()
    ignored = {Path(os.path.relpath(here / n, top.resolve())).as_posix() for n in GIT_DIRTY_IGNORED}
    entries = status.split("\0")
    paths, i = [], 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        paths.append(entry[3:])
        if {"R", "C"} & set(entry[:2]):  # with -z a rename/copy is followed by its source
            if i < len(entries) and entries[i]:
                paths.append(entries[i])
            i += 1
    return sha, [p for p in dict.fromkeys(paths) if p not in ignored]


def git_commit(root: Path | str = ".") -> str:
    """HEAD's commit, ``<sha>-dirty`` when :func:`git_state` finds uncommitted changes (other
    than ``dvc.lock``), or ``unknown`` outside git."""
    sha, dirty = git_state(root)
    return f"{sha}-dirty" if dirty and sha != "unknown" else sha


def data_version(config: Config) -> str:
    """The md5 of ``data/`` recorded in ``data.dvc`` (DVC's own version id), or ``untracked``."""
    dvc_file = config.root / f"{Path(config.base.data_dir).name}.dvc"
    if not dvc_file.exists():
        return "untracked"
    try:
        outs = yaml.safe_load(dvc_file.read_text()).get("outs", [])
        return str(outs[0].get("md5", "untracked"))
    except (yaml.YAMLError, AttributeError, IndexError, KeyError):
        return "untracked"


def params_hash(config: Config) -> str:
    """Short stable hash of every resolved param (paths excluded from nothing: they matter too)."""
    blob = json.dumps(config.as_flat_dict(), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def lineage_tags(config: Config) -> dict[str, Any]:
    """What every run and model version carries so it can be traced and rebuilt.

    ``git_commit`` is ``<sha>-dirty`` when tracked files had uncommitted changes; ``git_dirty``
    names them (comma-separated, cut at ~1000 characters; ``""`` when clean), so a dirty
    version says what a checkout of ``<sha>`` would miss.
    """
    sha, dirty = git_state(config.root)
    listed = ",".join(dirty)
    if len(listed) > GIT_DIRTY_MAX_CHARS:
        listed = listed[: GIT_DIRTY_MAX_CHARS - 20].rsplit(",", 1)[0] + f",... ({len(dirty)} paths)"
    return {
        "git_commit": f"{sha}-dirty" if dirty and sha != "unknown" else sha,
        "git_dirty": listed,
        "data_version": data_version(config),
        "params_hash": params_hash(config),
    }
