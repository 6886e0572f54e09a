"""Run the DVC pipeline one stage at a time on behalf of an orchestrator (the Prefect flow).

The flow never runs a stage function itself: each step here is a ``dvc`` subprocess, so
``dvc.lock``, the DVC cache and the orchestrator's history always agree with what a plain
``dvc repro`` would do. Pieces:

* :func:`run_stage` — ``dvc repro --single-item [--force] <stage>``, every output line handed to a
  callback as it arrives (Prefect logs), classified ``ran`` / ``skipped`` / ``restored`` from
  ``dvc status --json``, the run-cache and ``dvc.lock`` (:mod:`.dvc_state`), not from DVC's
  printed messages; a failure raises :class:`StageFailed` carrying the stage's own ``error:``
  line. :mod:`.remote_sync` wraps it for a shared DVC remote (pull inputs, push outputs).
* :mod:`visionops.orchestrate.version_data` — ``dvc add data`` when ``data/`` changed, ``dvc push``.
* :func:`pipeline_lock` — one pipeline run per project at a time (``flock`` on a file under
  ``.dvc/tmp``); a second run waits, then finds the stages up to date.

Failures that a retry can cure (DVC's own lock held by a manual ``dvc repro``, a remote that did
not answer) raise :class:`Transient`; everything else is deterministic and must not be retried.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from visionops import locks
from visionops.errors import VisionOpsError
from visionops.locks import LockHolder
from visionops.offline import OFFLINE_ENV
from visionops.orchestrate import dvc_state

log = logging.getLogger(__name__)

#: The stages of dvc.yaml in pipeline order (the flow has one task per stage).
PIPELINE_STAGES = ("validate", "split", "train", "evaluate", "export", "register")

LineSink = Callable[[str], None]

_TAIL = 40  # output lines kept for an error message without a recognisable error line
DVC_LOCKED = "Unable to acquire lock"
# The last line of a traceback: "ValueError: ...", "torch.OutOfMemoryError: ...", "KeyError: 'x'".
_EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit)(?::\s.*)?$"
)
_LOCK_FILE = Path(".dvc") / "tmp" / "visionops-pipeline.lock"


class StageFailed(VisionOpsError):
    """A stage's command failed; the message is the stage's own ``error: ...`` line."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"stage '{stage}' failed: {message}")
        self.stage = stage
        self.reason = message


class Transient(VisionOpsError):
    """A failure another attempt may cure (DVC repository locked, remote unreachable)."""


@dataclass
class StageResult:
    """One ``dvc repro --single-item`` call. ``status``: ran | skipped | restored (run-cache)."""

    stage: str
    status: str
    duration_s: float
    command: str

    def summary(self) -> str:
        verb = {
            "ran": "ran",
            "skipped": "skipped (unchanged: DVC deps, params and outs match dvc.lock)",
            "restored": "restored from the DVC run-cache (same inputs ran before)",
        }[self.status]
        return f"stage '{self.stage}' {verb} in {self.duration_s:.1f} s"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CommandOutput:
    returncode: int
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL))
    errors: list[str] = field(default_factory=list)  # the CLI's "error: ..." lines
    exceptions: list[str] = field(default_factory=list)  # last lines of Python tracebacks
    dvc_errors: list[str] = field(default_factory=list)  # DVC's "ERROR: ..." lines
    markers: set[str] = field(default_factory=set)


def dvc_executable() -> str:
    """The ``dvc`` beside the running interpreter (a venv need not be activated), else PATH's."""
    beside = Path(sys.executable).parent / "dvc"
    if beside.exists():
        return str(beside)
    found = shutil.which("dvc")
    if not found:
        raise VisionOpsError("dvc not found: install the project (make install) or put dvc on PATH")
    return found


def subprocess_env() -> dict[str, str]:
    """Environment for ``dvc``: offline switches, unbuffered output, and the interpreter's bin
    folder first on PATH so ``cmd: visionops <stage>`` finds this install's ``visionops``."""
    env = dict(os.environ)
    for key, value in OFFLINE_ENV.items():
        env.setdefault(key, value)
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _lines(stream) -> Iterator[str]:
    """Decoded lines from a binary pipe; ``\\r`` also ends a line (progress bars redraw with it)."""
    pending = b""
    while chunk := stream.read1(65536):
        pending += chunk
        parts = re.split(rb"\r\n|\r|\n", pending)
        pending = parts.pop()
        for part in parts:
            yield part.decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")


def run_command(
    args: list[str],
    cwd: Path,
    on_line: LineSink | None = None,
    env: dict[str, str] | None = None,
) -> CommandOutput:
    """Run ``args`` in ``cwd`` (with ``env`` added to the environment) with stdout+stderr merged,
    passing each non-blank line to ``on_line`` while it runs. Returns the exit code, the last
    lines and the error lines."""
    on_line = on_line or log.info
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env={**subprocess_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    out = CommandOutput(returncode=-1)
    try:
        for raw in _lines(proc.stdout):
            line = raw.rstrip()
            if not line.strip():
                continue
            out.tail.append(line)
            if line.startswith("error: "):
                out.errors.append(line.removeprefix("error: ").strip())
            elif line.startswith("ERROR: "):
                out.dvc_errors.append(line.removeprefix("ERROR: ").strip())
            elif _EXCEPTION_LINE.match(line):
                out.exceptions.append(line.strip())
            if DVC_LOCKED in line:  # the one message with no structured equivalent
                out.markers.add(DVC_LOCKED)
            on_line(line)
    except BaseException:  # cancelled or interrupted: do not leave dvc and its stage running
        proc.terminate()
        raise
    finally:
        proc.stdout.close()
        out.returncode = proc.wait()
    return out


def failure_message(out: CommandOutput) -> str:
    """The most specific reason: the stage CLI's ``error:`` line, else the exception of a
    traceback (a crash, not a reported error), else DVC's ``ERROR:`` line, else the last lines."""
    if out.errors:
        return out.errors[-1]
    if out.exceptions:
        return f"{out.exceptions[-1]} (a crash: see the traceback in the stage log)"
    if out.dvc_errors:
        return out.dvc_errors[-1]
    tail = " | ".join(list(out.tail)[-5:])
    return f"exit code {out.returncode}: {tail}" if tail else f"exit code {out.returncode}"


def run_dvc(root: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``dvc <args>`` in ``root`` with the offline environment, output captured, no stdin."""
    return subprocess.run(
        [dvc_executable(), *args],
        cwd=root,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def _dvc_query(root: Path, stage: str) -> Callable[[list[str]], tuple[int, str]]:
    """Run ``dvc <args>`` in ``root`` quietly; (exit code, stdout). A held repository lock
    raises :class:`Transient` like a locked ``dvc repro``."""

    def run(args: list[str]) -> tuple[int, str]:
        proc = run_dvc(root, args)
        if proc.returncode != 0 and DVC_LOCKED in proc.stderr + proc.stdout:
            raise Transient(
                f"stage '{stage}': the DVC repository {root} is locked by another DVC process "
                f"(.dvc/tmp/lock; a manual `dvc repro`?); retrying later"
            )
        return proc.returncode, proc.stdout

    return run


def run_stage(
    root: Path | str,
    stage: str,
    force: bool = False,
    on_line: LineSink | None = None,
    experiment: str | None = None,
) -> StageResult:
    """Reproduce one dvc.yaml stage (not its upstream stages: the caller runs them in order).

    ``experiment`` names a run with param overrides: the stage sees it as
    ``VISIONOPS_EXPERIMENT``, so ``register`` tags the version and moves no alias
    (``register.promote_experiments``).

    With a DVC remote shared between machines, call
    :func:`visionops.orchestrate.remote_sync.run_synced_stage` instead (pull, this, push).

    ran / skipped / restored is decided from DVC's records (:mod:`.dvc_state`): ``dvc status
    --json`` before, the run-cache entries and ``dvc.lock`` before and after.

    Raises :class:`Transient` when DVC's repository lock is held by another DVC process, and
    :class:`StageFailed` (never worth a retry) with the stage's own message on any other failure.
    """
    root = Path(root)
    say = on_line or log.info
    query = _dvc_query(root, stage)
    changed = force or dvc_state.stage_changed(dvc_state.status_json(query, stage), stage)
    runs_before = dvc_state.run_cache_entries(root)
    lock_before = dvc_state.lock_entry(root, stage)
    args = [dvc_executable(), "repro", "--single-item", *(["--force"] if force else []), stage]
    command = "dvc " + " ".join(args[1:])
    say(f"$ {command}")
    started = time.perf_counter()
    env = {"VISIONOPS_EXPERIMENT": experiment} if experiment else None
    out = run_command(args, root, on_line, env=env)
    duration = time.perf_counter() - started
    if out.returncode != 0:
        if DVC_LOCKED in out.markers:
            raise Transient(
                f"stage '{stage}': the DVC repository {root} is locked by another DVC process "
                f"(.dvc/tmp/lock; a manual `dvc repro`?); retrying later"
            )
        raise StageFailed(stage, failure_message(out))
    status = dvc_state.classify(
        changed_before=changed,
        forced=force,
        runs_before=runs_before,
        runs_after=dvc_state.run_cache_entries(root),
        lock_before=lock_before,
        lock_after=dvc_state.lock_entry(root, stage),
    )
    return StageResult(stage=stage, status=status, duration_s=round(duration, 2), command=command)


@contextmanager
def pipeline_lock(
    root: Path | str,
    timeout_s: float = 6 * 3600,
    poll_s: float = 2.0,
    on_wait: LineSink | None = None,
) -> Iterator[Path]:
    """Hold the project's pipeline lock: at most one orchestrated run per project at a time.

    ``flock`` on ``.dvc/tmp/visionops-pipeline.lock`` (:mod:`visionops.locks`): the kernel drops
    it when the holder dies, so a killed run never leaves a stale lock. A second run waits
    (logging who holds it) up to ``timeout_s``, then raises :class:`VisionOpsError`. POSIX only;
    local filesystems only.
    """
    root = Path(root)
    if not (root / ".dvc").is_dir():
        raise VisionOpsError(f"{root}: not a DVC project (no .dvc/). Fix: run `dvc init` there")
    path = root / _LOCK_FILE
    sink = on_wait or log.info

    def waiting(holder: LockHolder) -> None:
        sink(f"another pipeline run holds {path} ({holder.describe()}); waiting for it to finish")

    try:
        held = locks.acquire(path, timeout_s, poll_s, on_wait=waiting)
    except locks.LockBusy as busy:
        raise VisionOpsError(
            f"another pipeline run still holds {path} ({busy.holder.describe()}) after "
            f"{busy.waited_s:.0f} s; let it finish, or stop it and run again"
        ) from None
    with held:
        if held.contended:
            sink(f"pipeline lock acquired after {held.waited_s:.0f} s")
        yield path


def tag_training_run(root: Path | str, run_file: Path, tags: dict[str, str]) -> str | None:
    """Set ``tags`` on the MLflow run recorded in ``artifacts/train/run.json``; returns its id.

    Used to record the flow's param overrides and its Prefect run next to the training run.
    Missing run.json (train never ran) returns None.
    """
    if not run_file.exists():
        return None
    info = json.loads(run_file.read_text(encoding="utf-8"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=info.get("tracking_uri"))
    for key, value in tags.items():
        client.set_tag(info["run_id"], key, value)
    return info["run_id"]
