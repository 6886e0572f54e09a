"""The disk budget of ``<cache_dir>`` (``base.cache_max_gb``): byte estimates and LRU pruning.

Sizes are apparent bytes, decimal units (1 GB = 10^9 bytes, as ``du -sb`` and BENCHMARKS.md count).
What a run will add is estimated before it writes anything:

- the image cache: each missing image is ``resize`` on its short side, uint8 RGB; photos are
  ~4:3, so ``resize^2 * 3 * 4/3`` bytes (measured: 235 KB at resize 240, estimate 230 KB), or
  the mean of the files already in the folder when there are some;
- a feature store (:mod:`visionops.train.features`): ``views * n_train`` float16 activations and
  float32 pooled vectors, ``n_val`` float32 of each, plus the exported frozen graph.

Pruning (:func:`prune`) never touches a folder the run needs or one another training holds
(:class:`~visionops.train.cache_folders.FolderUse`). It first removes *stale* folders —
half-written (no done marker) and unused for a day: a fill killed mid-way — and then complete
folders, least recently used first, until what stays plus what the run adds fits the budget.
A half-written folder younger than a day is left alone: on a network filesystem, where ``flock``
may not reach other machines, it may be another machine's fill in progress.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from visionops.train.cache_folders import CacheFolder, age_text, exclusive, when_text

GB = 1_000_000_000
STALE_AFTER_S = 86_400.0
NPY_HEADER = 128


def gb(n: float) -> str:
    """Bytes as ``1.23 GB`` (``0.004 GB`` for small ones)."""
    return f"{n / GB:.3g} GB"


def image_bytes_each(resize: int, existing: Sequence[Path] = ()) -> int:
    """Bytes one cached image takes: the mean of ``existing`` files, else the 4:3 estimate."""
    sizes = []
    for path in existing:
        try:
            sizes.append(path.stat().st_size)
        except OSError:
            continue
    if sizes:
        return int(sum(sizes) / len(sizes))
    return resize * math.ceil(resize * 4 / 3) * 3 + NPY_HEADER


def feature_bytes(
    views: int,
    n_train: int,
    n_val: int,
    acts_shape: Sequence[int] | None,
    pooled_dim: int,
    graph_bytes: int = 0,
) -> int:
    """Bytes of one feature store: ``acts_shape`` is one image's (C, H, W) output of the frozen
    units (None when none are stored), ``pooled_dim`` the pooled backbone width."""
    acts = math.prod(acts_shape) if acts_shape else 0
    train = views * n_train * (acts * 2 + pooled_dim * 4)  # activations float16, pooled float32
    val = n_val * (acts * 4 + pooled_dim * 4)
    return train + val + graph_bytes + 4 * NPY_HEADER


@dataclass(frozen=True)
class Removal:
    folder: CacheFolder
    reason: str  # "stale" | "lru"


@dataclass
class PruneResult:
    removed: list[Removal] = field(default_factory=list)
    kept_busy: list[CacheFolder] = field(default_factory=list)
    total_after: int = 0  # bytes under the cache after pruning (before the run adds any)

    @property
    def freed(self) -> int:
        return sum(r.folder.bytes for r in self.removed)


def prune_order(
    folders: Iterable[CacheFolder], needed: set[str], now: float
) -> list[tuple[CacheFolder, str]]:
    """Candidates in removal order: stale half-written folders (oldest first), then complete
    folders least recently used first. Needed folders and young half-written ones never appear."""
    stale, complete = [], []
    for folder in folders:
        if folder.id in needed:
            continue
        if folder.complete:
            complete.append(folder)
        elif now - folder.last_used > STALE_AFTER_S:
            stale.append(folder)
    by_age = lambda f: (f.last_used, str(f.path))  # noqa: E731
    return [(f, "stale") for f in sorted(stale, key=by_age)] + [
        (f, "lru") for f in sorted(complete, key=by_age)
    ]


def remove_own_stale_work(
    folders: Iterable[CacheFolder], key_id: str, now: float, say: Callable[[str], None] = print
) -> int:
    """Remove dead fills (``features/.tmp-<key>-*``, no file written for a day) of the store this
    run needs: :func:`prune` skips them (their lock is this run's own), and the run starts a
    fresh fill anyway. Returns the bytes freed."""
    freed = 0
    for folder in folders:
        work = folder.path.name.startswith(".tmp-") and not folder.path.is_symlink()
        if folder.id != key_id or not work or now - folder.last_used <= STALE_AFTER_S:
            continue
        shutil.rmtree(folder.path, ignore_errors=True)
        if not folder.path.exists():
            freed += folder.bytes
            say(
                f"cache: removed {folder.path} ({gb(folder.bytes)}, stale, half-written, "
                f"last used {when_text(folder.last_used)}, {age_text(now - folder.last_used)})"
            )
    return freed


def removable_bytes(cache_dir: Path, folders: Iterable[CacheFolder], needed: set[str]) -> int:
    """What :func:`prune` could free at most now: candidates no other training holds."""
    total = 0
    for folder, _ in prune_order(folders, needed, time.time()):
        with exclusive(cache_dir, folder.kind, folder.name) as free:
            total += folder.bytes if free else 0
    return total


def prune(
    cache_dir: Path,
    folders: list[CacheFolder],
    needed: set[str],
    budget: int,
    incoming: int,
    other_bytes: int = 0,
    now: float | None = None,
    say: Callable[[str], None] = print,
) -> PruneResult:
    """Remove stale folders, then least-recently-used ones, until everything under ``cache_dir``
    (``folders`` + ``other_bytes`` outside them) plus ``incoming`` fits ``budget`` bytes.

    ``say`` gets one line per folder removed (path, size, last use). A folder is only removed
    under its exclusive lock, and only if it lies inside ``cache_dir``.
    """
    now = time.time() if now is None else now
    root = Path(cache_dir).resolve()
    result = PruneResult(total_after=sum(f.bytes for f in folders) + other_bytes)
    for folder, reason in prune_order(folders, needed, now):
        if reason == "lru" and result.total_after + incoming <= budget:
            break
        path = folder.path
        if path.is_symlink() or not path.resolve().is_relative_to(root) or path.resolve() == root:
            continue
        with exclusive(cache_dir, folder.kind, folder.name) as free:
            if not free:
                result.kept_busy.append(folder)
                continue
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():  # a file we may not delete: count what is left
                continue
        result.removed.append(Removal(folder, reason))
        result.total_after -= folder.bytes
        what = "stale, half-written" if reason == "stale" else "least recently used"
        say(
            f"cache: removed {path} ({gb(folder.bytes)}, {what}, last used "
            f"{when_text(folder.last_used)}, {age_text(now - folder.last_used)})"
        )
    return result
