"""Stages that run on different machines exchange data through a shared DVC remote, not a shared
folder: before a stage, ``dvc pull`` the outputs of every stage it depends on (and ``data.dvc``);
after it, ``dvc push`` its own outputs. Any DVC remote works the same way — a folder, SSH
(``dvc-ssh``: ``ssh://user@host/path``), S3 or an S3-compatible store (``dvc-s3``:
``s3://bucket/prefix`` with ``endpointurl``) — because every byte goes through ``dvc`` itself.

Only cached outputs travel (``dvc.yaml`` outs without ``cache: false``); the small
``cache: false`` reports stay on the machine that wrote them (docs/DEPLOY.md says which).
A remote that does not answer raises :class:`~visionops.orchestrate.stages.Transient`: the flow's
task retries it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from visionops.errors import VisionOpsError
from visionops.orchestrate.stages import (
    LineSink,
    StageResult,
    Transient,
    dvc_executable,
    failure_message,
    run_command,
    run_dvc,
    run_stage,
)

log = logging.getLogger(__name__)


def remote_names(root: Path | str) -> list[str]:
    """Names from ``dvc remote list`` (project, local and global config merged)."""
    proc = run_dvc(Path(root), ["remote", "list"])
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def check_remote(root: Path | str, remote: str) -> None:
    """A one-line error when ``remote`` is not configured in the project."""
    names = remote_names(root)
    if remote not in names:
        known = ", ".join(names) or "none"
        raise VisionOpsError(
            f"DVC remote '{remote}' is not configured in {root} (known: {known}). Fix: "
            f"dvc remote add {remote} <url>  (ssh://host/path, s3://bucket/prefix or a folder)"
        )


def add_remote(
    root: Path | str, name: str, url: str, options: dict[str, str] | None = None
) -> None:
    """``dvc remote add --local -f name url`` + ``dvc remote modify --local`` per option.

    ``--local`` writes ``.dvc/config.local`` (git-ignored), so key files, passwords and endpoint
    URLs of one machine never reach git."""
    root = Path(root)
    steps = [["remote", "add", "--local", "-f", name, url]]
    steps += [["remote", "modify", "--local", name, k, str(v)] for k, v in (options or {}).items()]
    for args in steps:
        proc = run_dvc(root, args)
        if proc.returncode != 0:
            raise VisionOpsError(f"dvc {' '.join(args[:4])} failed: {proc.stderr.strip()}")


def pull_inputs(root: Path, stage: str, remote: str, on_line: LineSink) -> None:
    """``dvc pull --with-deps --allow-missing -r REMOTE STAGE``: the outputs of ``stage`` and of
    every stage and ``.dvc`` file upstream of it that the remote holds. Missing ones are fine
    (a first run, or a stage that changed): DVC then decides what to run from ``dvc.lock``."""
    check_remote(root, remote)
    args = [dvc_executable(), "pull", "--with-deps", "--allow-missing", "-r", remote, stage]
    on_line(f"$ dvc {' '.join(args[1:])}")
    out = run_command(args, root, on_line)
    if out.returncode != 0:
        raise Transient(f"dvc pull for stage '{stage}' from '{remote}': {failure_message(out)}")


def push_outputs(root: Path, stage: str, remote: str, on_line: LineSink) -> None:
    """``dvc push -r REMOTE STAGE``: the stage's cached outputs, so the next stage can run
    elsewhere."""
    args = [dvc_executable(), "push", "-r", remote, stage]
    on_line(f"$ dvc {' '.join(args[1:])}")
    out = run_command(args, root, on_line)
    if out.returncode != 0:
        raise Transient(f"dvc push of stage '{stage}' to '{remote}': {failure_message(out)}")


def run_synced_stage(
    root: Path | str,
    stage: str,
    remote: str | None = None,
    force: bool = False,
    on_line: LineSink | None = None,
    experiment: str | None = None,
) -> StageResult:
    """:func:`~visionops.orchestrate.stages.run_stage`, between a pull of its inputs from
    ``remote`` and a push of its outputs to it; without ``remote`` just the stage."""
    root = Path(root)
    say = on_line or log.info
    if remote:
        pull_inputs(root, stage, remote, say)
    result = run_stage(root, stage, force=force, on_line=on_line, experiment=experiment)
    if remote:
        push_outputs(root, stage, remote, say)
    return result
