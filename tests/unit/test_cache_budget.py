"""The cache budget (issue 14, item 6): sizes, LRU pruning order, in-use and stale folders.

Real folders and files in tmp, real ``flock`` locks: a folder "in use by another training" is one
this test holds a shared lock on through its own file descriptor, exactly what a training does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from visionops.train.cache_budget import (
    GB,
    feature_bytes,
    image_bytes_each,
    prune,
    prune_order,
    removable_bytes,
    remove_own_stale_work,
)
from visionops.train.cache_folders import (
    FolderUse,
    mark_used,
    other_bytes,
    scan_cache,
)

pytestmark = pytest.mark.unit

NOW = time.time()
DAY = 86_400


def _folder(root: Path, rel: str, size: int, used_days_ago: float | None, done: bool = True):
    """A cache folder of ``size`` bytes, last used ``used_days_ago`` (None: no marker)."""
    path = root / rel
    path.mkdir(parents=True)
    (path / "data.npy").write_bytes(b"\0" * size)
    kind = rel.split("/")[0]
    if done and kind == "features":
        (path / "done.json").write_text("{}")
    if done and kind == "checkpoints":
        (path / "last.pt").write_bytes(b"")
    when = NOW - (used_days_ago if used_days_ago is not None else 30) * DAY
    if used_days_ago is not None:
        mark_used(path, now=when)
    os.utime(path / "data.npy", (when, when))
    os.utime(path, (when, when))
    return path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    _folder(root, "images/r72-bilinear", 1000, 1)
    _folder(root, "images/r256-bilinear", 3000, 10)
    _folder(root, "features/aaaa", 2000, 5)
    _folder(root, "features/bbbb", 2000, 2)
    _folder(root, "checkpoints/cccc", 500, 20)
    return root


def test_scan_reads_kind_size_last_use_and_completeness(cache: Path) -> None:
    _folder(cache, "features/.tmp-dddd-x1y2", 700, None, done=False)
    folders = {f.id: f for f in scan_cache(cache)}
    assert set(folders) == {
        "images/r72-bilinear",
        "images/r256-bilinear",
        "features/aaaa",
        "features/bbbb",
        "features/dddd",
        "checkpoints/cccc",
    }
    assert folders["images/r256-bilinear"].bytes == 3000
    assert folders["features/aaaa"].bytes == 2000 + len("{}")
    assert folders["features/aaaa"].last_used == pytest.approx(NOW - 5 * DAY, abs=1)
    assert not folders["features/dddd"].complete  # a work folder, locked under its key
    assert folders["features/dddd"].last_used == pytest.approx(NOW - 30 * DAY, abs=1)


def test_prune_order_is_stale_first_then_least_recently_used(cache: Path) -> None:
    _folder(cache, "features/eeee", 100, 3, done=False)  # half-written, 3 days: stale
    _folder(cache, "features/ffff", 100, 0.1, done=False)  # half-written, 2 h: maybe alive
    order = prune_order(scan_cache(cache), {"images/r72-bilinear"}, NOW)
    assert [(f.id, why) for f, why in order] == [
        ("features/eeee", "stale"),
        ("checkpoints/cccc", "lru"),
        ("images/r256-bilinear", "lru"),
        ("features/aaaa", "lru"),
        ("features/bbbb", "lru"),
    ]


@pytest.mark.parametrize(
    ("budget", "incoming", "removed"),
    [
        (10_000, 0, []),  # 8,504 bytes fit (two done.json of 2 bytes)
        (8_504, 0, []),  # exactly at the budget
        (8_504, 1, ["checkpoints/cccc"]),  # one byte over: the oldest goes
        (8_000, 1_000, ["checkpoints/cccc", "images/r256-bilinear"]),
        (4_000, 0, ["checkpoints/cccc", "images/r256-bilinear", "features/aaaa"]),
        (1, 0, ["checkpoints/cccc", "images/r256-bilinear", "features/aaaa", "features/bbbb"]),
    ],
)
def test_prune_removes_least_recently_used_until_the_run_fits(
    cache: Path, budget: int, incoming: int, removed: list[str]
) -> None:
    lines: list[str] = []
    folders = scan_cache(cache)
    result = prune(cache, folders, {"images/r72-bilinear"}, budget, incoming, say=lines.append)
    assert [r.folder.id for r in result.removed] == removed
    assert len(lines) == len(removed)
    for rid, line in zip(removed, lines, strict=True):
        assert str(cache / rid) in line and "GB" in line and "last used" in line
        assert not (cache / rid).exists()
    assert (cache / "images/r72-bilinear").is_dir()  # needed: kept even at budget 1
    assert result.total_after == sum(f.bytes for f in scan_cache(cache))


def test_a_folder_another_training_holds_is_never_removed(cache: Path) -> None:
    other = FolderUse()  # another training: its own descriptor, a shared lock
    other.hold(cache, "checkpoints", "cccc")
    other.hold(cache, "images", "r256-bilinear")
    try:
        folders = scan_cache(cache)
        assert removable_bytes(cache, folders, {"images/r72-bilinear"}) == 4000 + 2 * len("{}")
        lines: list[str] = []
        result = prune(cache, folders, {"images/r72-bilinear"}, 1, 0, say=lines.append)
    finally:
        other.release()
    assert (cache / "checkpoints/cccc").is_dir() and (cache / "images/r256-bilinear").is_dir()
    assert {f.id for f in result.kept_busy} == {"checkpoints/cccc", "images/r256-bilinear"}
    assert [r.folder.id for r in result.removed] == ["features/aaaa", "features/bbbb"]
    assert len(lines) == 2


def test_stale_partial_folders_go_even_under_budget_young_and_held_ones_stay(
    cache: Path,
) -> None:
    _folder(cache, "features/.tmp-dead-abc123", 100, None, done=False)  # 30 days, no one holds
    _folder(cache, "features/.tmp-busy-abc123", 100, None, done=False)  # 30 days, held
    _folder(cache, "features/young", 100, 0.2, done=False)  # 5 h: maybe another machine's fill
    other = FolderUse()
    other.hold(cache, "features", "busy")
    try:
        result = prune(cache, scan_cache(cache), set(), 10 * GB, 0, say=lambda _: None)
    finally:
        other.release()
    assert [(r.folder.id, r.reason) for r in result.removed] == [("features/dead", "stale")]
    assert (cache / "features/.tmp-busy-abc123").is_dir()
    assert (cache / "features/young").is_dir()
    assert (cache / "features/aaaa").is_dir()  # under budget: nothing complete goes


def test_nothing_outside_the_cache_is_touched(tmp_path: Path, cache: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("x" * 5000)
    (cache / "features" / "link").symlink_to(outside, target_is_directory=True)
    (cache / "notes.txt").write_text("y" * 50)
    folders = scan_cache(cache)
    assert "features/link" not in {f.id for f in folders}
    others = other_bytes(cache)
    assert others == 50
    prune(cache, folders, set(), 1, 0, other_bytes=others, say=lambda _: None)
    assert (outside / "keep.txt").read_text() == "x" * 5000
    assert (cache / "notes.txt").exists()


def test_byte_estimates() -> None:
    # resize 240: 240 x 320 x 3 + header; measured on clothing-small: 235 KB per image
    assert image_bytes_each(240) == 240 * 320 * 3 + 128
    # Lite1 at 240, cut at unit 5 of 9: (40, 30, 30) float16 acts, 1280 pooled float32
    one = feature_bytes(6, 1000, 0, (40, 30, 30), 1280) - 4 * 128
    assert one == 6 * 1000 * (40 * 30 * 30 * 2 + 1280 * 4)
    assert feature_bytes(1, 0, 10, None, 8, graph_bytes=100) == 10 * 8 * 4 + 100 + 4 * 128


def test_image_estimate_uses_files_already_cached(tmp_path: Path) -> None:
    files = []
    for i, size in enumerate((100, 300)):
        path = tmp_path / f"{i}.npy"
        path.write_bytes(b"\0" * size)
        files.append(path)
    assert image_bytes_each(240, files + [tmp_path / "missing.npy"]) == 200


def test_a_fill_still_writing_is_not_stale_a_dead_one_of_this_runs_key_goes(cache: Path) -> None:
    dead = _folder(cache, "features/.tmp-mine-aaaa11", 100, None, done=False)
    alive = _folder(cache, "features/.tmp-mine-bbbb22", 100, None, done=False)
    (alive / "train_acts.npy").write_bytes(b"\0" * 10)  # written just now
    folders = {f.path.name: f for f in scan_cache(cache)}
    assert folders[alive.name].last_used == pytest.approx(time.time(), abs=60)
    lines: list[str] = []
    freed = remove_own_stale_work(folders.values(), "features/mine", time.time(), lines.append)
    assert freed == 100 and not dead.exists() and alive.is_dir()
    assert len(lines) == 1 and "stale, half-written" in lines[0]


def test_another_process_holding_a_folder_keeps_it_until_it_dies(cache: Path) -> None:
    """A real second process holds ``features/aaaa``; after ``kill -9`` the kernel frees it."""
    import signal
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from visionops.train.cache_folders import FolderUse\n"
        f"FolderUse().hold({str(cache)!r}, 'features', 'aaaa')\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline().strip() == b"held"
        result = prune(cache, scan_cache(cache), set(), 1, 0, say=lambda _: None)
        assert (cache / "features/aaaa").is_dir()
        assert [f.id for f in result.kept_busy] == ["features/aaaa"]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    result = prune(cache, scan_cache(cache), set(), 1, 0, say=lambda _: None)
    assert not (cache / "features/aaaa").exists()
