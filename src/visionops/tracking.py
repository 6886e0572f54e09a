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


def git_commit(root: Path | str = ".") -> str:
    """HEAD's commit (with ``-dirty`` if the tree has changes), or ``unknown`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
    """What every run and model version carries so it can be traced and rebuilt."""
    return {
        "git_commit": git_commit(config.root),
        "data_version": data_version(config),
        "params_hash": params_hash(config),
    }
