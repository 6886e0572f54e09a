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

#: Experiment tag MLflow 3 reads to decide what an experiment is for (``mlflow.utils.
#: mlflow_tags`` has no constant for it; the UI and ``mlflow.demo`` use the literal).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # "Machine learning", not "GenAI apps & agents"
#: For MLflow UI links. The UI of MLflow 3.17 picks the GenAI pages (traces) or the model pages
#: (runs, models) from this switch, not from the tag above: the sidebar's "GenAI" | "Model
#: training" toggle (remembered per browser; default GenAI) or this query parameter.
UI_MODEL_TRAINING = "workflowType=machine_learning"

#: Where ``dvc exp run --queue`` / ``--temp`` copies the repository for each experiment.
_DVC_EXEC_DIR = Path(".dvc") / "tmp" / "exps"
EXPERIMENT_ENV = ("DVC_EXP_NAME", "VISIONOPS_EXPERIMENT")


def store_root(config: Config) -> Path:
    """The folder a relative store path (``sqlite:///mlruns/...``) is resolved against.

    Normally the project (``config.root``). A queued DVC experiment runs in a throw-away copy of
    the repository under ``<repo>/.dvc/tmp/exps/<tmp>/``, deleted when it ends; DVC gives its
    stage commands ``DVC_ROOT`` = the original repository. There, the same relative path is
    resolved in the original project, so the experiment's runs and versions land in the
    project's ``mlruns/``, not in the copy.
    """
    root = config.root.resolve()
    dvc_root = os.environ.get("DVC_ROOT")
    if not dvc_root:
        return root
    origin = Path(dvc_root).resolve()
    if not root.is_relative_to(origin / _DVC_EXEC_DIR):
        return root
    copy = next((p for p in (root, *root.parents) if (p / ".dvc").is_dir()), None)
    if copy is None or copy == origin:
        return root
    return origin / root.relative_to(copy)


def current_experiment() -> str | None:
    """The experiment this process belongs to: ``dvc exp run`` / ``dvc queue`` set
    ``DVC_EXP_NAME`` for stage commands; the Prefect flow sets ``VISIONOPS_EXPERIMENT`` when it
    applies param overrides. ``None`` for a plain ``dvc repro``."""
    for var in EXPERIMENT_ENV:
        if os.environ.get(var):
            return os.environ[var]
    return None


def tracking_uri(config: Config) -> str:
    """The URI in force: the environment's, else params' with a relative sqlite path resolved
    against :func:`store_root` (the project, also from a queued experiment's copy of it)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or config.base.mlflow_tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        db = store_root(config) / uri.removeprefix(prefix)
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = prefix + str(db.resolve())
    return uri


def setup_tracking(config: Config) -> str:
    """Point mlflow at the project's store and select (or create) the experiment.

    A new experiment's artifacts go to ``base.mlflow_artifacts_dir`` (under :func:`store_root`)
    so the embedded store keeps everything under ``mlruns/``. The experiment, new or existing,
    is marked for model development (:data:`EXPERIMENT_KIND_TAG`) unless it already says it is
    one of the model kinds. Returns the experiment id.
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
            artifacts = (store_root(config) / config.base.mlflow_artifacts_dir).resolve()
            artifacts.mkdir(parents=True, exist_ok=True)
            location = artifacts.as_uri()
        experiment_id = mlflow.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    else:
        experiment_id = experiment.experiment_id
        if experiment.tags.get(EXPERIMENT_KIND_TAG) not in _MODEL_KINDS:
            mlflow.MlflowClient(uri).set_experiment_tag(
                experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
            )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


# Kinds the UI files under "Machine learning"; anything else (GenAI, none) is set to ours.
_MODEL_KINDS = {
    EXPERIMENT_KIND,
    "custom_model_development_inferred",
    "finetuning",
    "forecasting",
    "classification",
    "regression",
    "automl",
}


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
