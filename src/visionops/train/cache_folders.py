"""The folders under ``<cache_dir>``: what each one is, how big, when last used, who uses it.

Training keeps three kinds of folder under ``base.cache_dir`` (each one a unit that is kept or
removed whole):

- ``images/<variant>/``: decoded images for one ``model.resize`` + interpolation
  (:class:`visionops.train.data.ImageCache`); always usable, since each file is written
  atomically, so it never counts as half-written;
- ``features/<key>/``: one frozen-feature store (:mod:`visionops.train.features`), complete when it
  holds ``done.json``; its work folders ``features/.tmp-<key>-*`` are half-written by definition;
- ``checkpoints/<key>/``: the resume state of an interrupted run (:mod:`visionops.train.resume`),
  complete when it holds ``last.pt``.

Last use: a training touches ``<folder>/.last_used`` (an empty file; its mtime is the time) for
every folder it reads or fills; a folder without one (written before this existed) falls back to
its own mtime.

In use: a training holds a *shared* ``flock`` on ``<cache_dir>/.locks/<kind>.<name>.lock`` for each
folder it needs, from before any pruning until it ends; a pruner takes the *exclusive* lock
without waiting before it deletes, so a folder another training (in this project or any other
sharing the cache) holds is never removed. The kernel drops a lock when its holder dies, even by
``kill -9``, as with :mod:`visionops.locks`. Lock files are tiny and never deleted: deleting one
while another process has it open would let two processes "hold" the same name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

KINDS = ("images", "features", "checkpoints")
LAST_USED = ".last_used"
LOCKS = ".locks"
WORK_PREFIX = ".tmp-"  # features/.tmp-<key>-XXXX: a fill in progress (or a dead one)
DONE = {"features": "done.json", "checkpoints": "last.pt"}  # images: never half-written


@dataclass(frozen=True)
class CacheFolder:
    """One removable unit under ``<cache_dir>``. ``name`` is the key its lock is named after
    (for a work folder, the key of the store it was filling)."""

    path: Path
    kind: str
    name: str
    bytes: int
    last_used: float  # epoch seconds
    complete: bool

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.name}"


def folder_bytes(path: Path) -> int:
    """Apparent size of every regular file under ``path`` (symlinks are not followed)."""
    total = 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:  # removed while we looked
                continue
    return total


def last_used(path: Path, complete: bool = True) -> float:
    """mtime of ``<path>/.last_used``, else of the folder itself. For a half-written folder,
    the newest of those and of the files in it: a fill in progress keeps writing its arrays
    (memory-mapped writes move their mtime), so only a dead one ages."""
    times = []
    for candidate in (path / LAST_USED, path):
        with contextlib.suppress(OSError):
            times.append(candidate.stat().st_mtime)
            break
    if not complete:
        with contextlib.suppress(OSError):
            times += [e.stat().st_mtime for e in os.scandir(path) if e.is_file()]
    return max(times, default=0.0)


def mark_used(path: Path, now: float | None = None) -> None:
    """Record that a training uses ``path`` now (creates the marker; the folder must exist)."""
    marker = path / LAST_USED
    marker.touch()
    if now is not None:
        os.utime(marker, (now, now))


def scan_cache(cache_dir: Path) -> list[CacheFolder]:
    """Every removable folder of the known kinds under ``cache_dir`` (symlinks are skipped:
    what they point to is not the cache's to delete)."""
    found = []
    for kind in KINDS:
        parent = Path(cache_dir) / kind
        if not parent.is_dir() or parent.is_symlink():
            continue
        for child in sorted(parent.iterdir()):
            if child.is_symlink() or not child.is_dir():
                continue
            name, work = child.name, child.name.startswith(WORK_PREFIX)
            if work:  # .tmp-<key>-<random>: locked under the key it fills
                name = child.name[len(WORK_PREFIX) :].rsplit("-", 1)[0]
            done = DONE.get(kind)
            complete = not work and (done is None or (child / done).exists())
            used = last_used(child, complete)
            found.append(CacheFolder(child, kind, name, folder_bytes(child), used, complete))
    return found


def other_bytes(cache_dir: Path) -> int:
    """Bytes under ``cache_dir`` outside the folders :func:`scan_cache` lists (lock files,
    anything else put there): they count against the budget and are never removed."""
    total = 0
    root = Path(cache_dir)
    if not root.is_dir():
        return 0
    for entry in os.scandir(root):
        path = Path(entry.path)
        if entry.name in KINDS and entry.is_dir(follow_symlinks=False):
            for child in os.scandir(path):  # loose files next to the folders
                if child.is_file(follow_symlinks=False):
                    total += child.stat(follow_symlinks=False).st_size
        elif entry.is_dir(follow_symlinks=False):
            total += folder_bytes(path)
        elif entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_size
    return total


def lock_path(cache_dir: Path, kind: str, name: str) -> Path:
    return Path(cache_dir) / LOCKS / f"{kind}.{name}.lock"


class FolderUse:
    """Shared locks on the folders one training needs; :meth:`release` (or process exit)
    drops them."""

    def __init__(self) -> None:
        self._fds: list[int] = []

    def hold(self, cache_dir: Path, kind: str, name: str) -> None:
        """Take the shared lock on ``kind/name``; waits while a pruner deletes that folder."""
        path = lock_path(cache_dir, kind, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        self._fds.append(fd)

    def release(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing drops the flock
        self._fds.clear()

    def __enter__(self) -> FolderUse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def exclusive(cache_dir: Path, kind: str, name: str):
    """Yields True while this process holds the exclusive lock on ``kind/name``, False (at once)
    when any training holds it shared."""
    path = lock_path(cache_dir, kind, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def age_text(seconds_ago: float) -> str:
    """``3 h ago``, ``2 d ago``: how a pruned folder's last use reads in one line."""
    if seconds_ago < 3600:
        return f"{max(0, int(seconds_ago // 60))} min ago"
    if seconds_ago < 2 * 86400:
        return f"{seconds_ago / 3600:.0f} h ago"
    return f"{seconds_ago / 86400:.0f} d ago"


def when_text(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
