"""One ``visionops train`` per project at a time: a second one stops at once, in one line.

Two trainings in one project would share the resume folder (``<cache_dir>/checkpoints/<key>``:
both write ``last.pt``, the first to finish deletes it under the other), the MLflow run a resume
continues and ``artifacts/train/``; the second used to die later with a raw traceback. So
:func:`train_lock` takes the project's train lock without waiting (:mod:`visionops.locks`:
``flock``, dropped by the kernel when its holder dies, even by ``kill -9``) and raises
:class:`TrainingRunning` naming the holder's pid and start time.

Under ``torchrun`` only global rank 0 takes it: the ranks of one training must not lock each
other out, and a second ``torchrun`` in the project still stops at its own rank 0 (torchrun then
ends its other ranks). ``--overfit-batch`` takes no lock: it writes nothing a training reads.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from visionops import locks
from visionops.config import Config
from visionops.errors import VisionOpsError
from visionops.paths import display_path

LOCK_NAME = "visionops-train.lock"


class TrainingRunning(VisionOpsError):
    """Another ``visionops train`` holds this project's train lock."""


def train_lock_path(config: Config) -> Path:
    """``.dvc/tmp/visionops-train.lock``, or ``<artifacts_dir>/.visionops-train.lock`` outside
    a DVC project (see :func:`visionops.locks.project_lock_path`)."""
    return locks.project_lock_path(config.root, config.artifacts_dir, LOCK_NAME)


def train_lock(config: Config) -> AbstractContextManager:
    """The held train lock (a context manager releasing it); a no-op on torchrun ranks > 0.

    Raises :class:`TrainingRunning` at once when another training holds it.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return nullcontext()
    path = train_lock_path(config)
    try:
        return locks.acquire(path, timeout_s=0.0, command="visionops train")
    except locks.LockBusy as busy:
        raise TrainingRunning(
            f"another `visionops train` ({busy.holder.describe()}) is running in this project; "
            f"wait for it to finish (lock: {display_path(path, config.root)})"
        ) from None
