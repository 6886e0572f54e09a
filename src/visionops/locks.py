"""Per-project locks: ``flock`` on a small file that also says who holds it.

Why ``flock``: the kernel drops the lock when the file descriptor closes, which happens when its
holder exits for any reason — ``kill -9``, OOM killer, a crash — so a dead run never leaves a
stale lock and nothing has to guess from a PID whether the holder is still alive (DVC's own
``rwlock`` does guess, and a zombie process fools it). The file itself is never deleted: it only
carries the holder's ``pid``, host, start time and command (one JSON line) for the message the
next process prints. ``flock`` is advisory, POSIX only, and reliable on local filesystems only.
A forked child closes its inherited copy at once (``os.register_at_fork``), so a worker that
outlives a killed holder does not keep the lock; ``O_CLOEXEC`` does the same across ``exec``.

Where the lock files live (:func:`project_lock_path`): in ``<project>/.dvc/tmp/`` when the
project is a DVC repository — DVC keeps its own locks there, git-ignores the folder
(``.dvc/.gitignore``) and never removes it, unlike a stage's outputs, which ``dvc repro`` deletes
before it runs the stage — else in ``<artifacts_dir>/`` as a dot-file: per project (unlike
``base.cache_dir``, which may be shared between projects on purpose) and git-ignored like the
rest of the artifacts. Neither place is a declared DVC output.

Users: :func:`visionops.orchestrate.stages.pipeline_lock` (a second pipeline run waits) and
``visionops train`` (a second training in the same project stops at once, see
:mod:`visionops.train.lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from visionops.errors import VisionOpsError


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as its holder wrote it; fields are empty/None when unknown."""

    pid: int | None = None
    host: str = ""
    started: str = ""  # ISO local time, seconds
    command: str = ""

    def started_text(self) -> str:
        """``12:03:11`` when the holder started today, else ``2026-11-30 12:03:11``."""
        try:
            when = datetime.fromisoformat(self.started)
        except ValueError:
            return self.started or "at an unknown time"
        if when.date() == datetime.now().date():
            return when.strftime("%H:%M:%S")
        return when.strftime("%Y-%m-%d %H:%M:%S")

    def describe(self) -> str:
        """``pid 1234, started 12:03:11`` (plus ``on <host>`` when it is another machine)."""
        if self.pid is None:
            return "holder unknown"
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        return f"pid {self.pid}{where}, started {self.started_text()}"


class LockBusy(VisionOpsError):
    """The lock was still held by another process after the allowed wait."""

    def __init__(self, path: Path, holder: LockHolder, waited_s: float) -> None:
        super().__init__(
            f"{path} is held by another process ({holder.describe()}, {holder.command or '?'})"
        )
        self.path = path
        self.holder = holder
        self.waited_s = waited_s


@dataclass(eq=False)
class HeldLock:
    """An acquired lock; release it with :meth:`release` or by leaving a ``with`` block.

    ``contended`` says whether another process held it when we first asked (the caller may
    want to log how long it waited: ``waited_s``).
    """

    path: Path
    fd: int
    contended: bool
    waited_s: float

    def release(self) -> None:
        if self.fd < 0:
            return
        _HELD.discard(self)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = -1

    def _forget_in_child(self) -> None:
        """In a forked child: close our copy of the descriptor without unlocking (unlocking
        would free the parent's lock too) and never release it from here."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# Locks this process holds. A forked child (a ProcessPoolExecutor or DataLoader worker) would
# otherwise share the parent's open file description, and so keep the lock alive if it outlived
# a parent killed with SIGKILL: children close their copies right after the fork.
_HELD: set[HeldLock] = set()
_FORK_HOOK = False


def _after_fork_in_child() -> None:
    for held in list(_HELD):
        held._forget_in_child()
    _HELD.clear()


def project_lock_path(root: Path, artifacts_dir: Path, name: str) -> Path:
    """``<root>/.dvc/tmp/<name>`` in a DVC project, else ``<artifacts_dir>/.<name>``."""
    dvc = Path(root) / ".dvc"
    if dvc.is_dir():
        return dvc / "tmp" / name
    return Path(artifacts_dir) / f".{name}"


def read_holder(path: Path) -> LockHolder:
    """What the current holder wrote into ``path`` (an empty :class:`LockHolder` if unreadable).

    The holder writes right after it gets the lock, so a reader can catch the file empty:
    it looks once more after a short pause.
    """
    for attempt in range(2):
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            text = ""
        if text:
            break
        if attempt == 0:
            time.sleep(0.05)
    try:
        data = json.loads(text)
        return LockHolder(
            pid=int(data["pid"]) if data.get("pid") is not None else None,
            host=str(data.get("host", "")),
            started=str(data.get("started", "")),
            command=str(data.get("command", "")),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return LockHolder()


def acquire(
    path: Path | str,
    timeout_s: float = 0.0,
    poll_s: float = 1.0,
    on_wait: Callable[[LockHolder], None] | None = None,
    command: str | None = None,
) -> HeldLock:
    """Take the exclusive lock on ``path`` (created with its folder if missing).

    Tries at once; while another process holds it, calls ``on_wait(holder)`` once and polls
    every ``poll_s`` s up to ``timeout_s`` (0: do not wait), then raises :class:`LockBusy`. Once
    held, writes this process's pid, host, start time and ``command`` (default: the command
    line) into the file. The lock lasts until :meth:`HeldLock.release`, or until this process
    exits.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    started = time.monotonic()
    contended = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - started
                if waited >= timeout_s:
                    raise LockBusy(path, read_holder(path), waited) from None
                if not contended and on_wait is not None:
                    on_wait(read_holder(path))
                contended = True
                time.sleep(min(poll_s, timeout_s - waited))
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now().isoformat(timespec="seconds"),
            "command": command if command is not None else _command_line(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    except BaseException:
        os.close(fd)  # closing drops the lock if we had it
        raise
    global _FORK_HOOK
    if not _FORK_HOOK:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _FORK_HOOK = True
    held = HeldLock(path, fd, contended, time.monotonic() - started)
    _HELD.add(held)
    return held


def _command_line() -> str:
    args = list(sys.argv)
    if args:
        args[0] = Path(args[0]).name
    return " ".join(args)[:300]
