"""Outputs get the umask's permissions (0644 under umask 022), not mkstemp's 0600.

A service or a teammate running as another user must be able to read ``model.onnx``, the metrics
and the reports; MLflow copies artifacts with ``shutil.copy2``, which keeps the mode, so the same
holds for ``mlruns/`` (tests/e2e/test_register.py checks that end).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.toy_onnx import colour_image
from visionops.config import build_config
from visionops.io import atomic_path, write_json, write_text, write_with

pytestmark = pytest.mark.unit


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    """``umask(0o022)`` sets the process umask for the test; the old one is restored after."""
    before = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_all(folder: Path) -> list[Path]:
    """One file through each io helper."""
    with atomic_path(folder / "raw.bin") as tmp:
        tmp.write_bytes(b"\x00\x01")
    return [
        write_text(folder / "a.txt", "text"),
        write_json(folder / "sub" / "b.json", {"x": 1}),
        write_with(folder / "c.csv", lambda tmp: tmp.write_text("a,b\n")),
        folder / "raw.bin",
    ]


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_io_helpers_follow_the_umask(tmp_path: Path, umask, mask: int, expected: int) -> None:
    umask(mask)
    files = write_all(tmp_path)
    assert {f.name: oct(mode(f)) for f in files} == {f.name: oct(expected) for f in files}
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []  # no temporary file left behind


def test_a_rewrite_replaces_an_old_0600_file_with_0644(tmp_path: Path, umask) -> None:
    old = tmp_path / "metrics.json"
    old.write_text("{}")
    old.chmod(0o600)  # what the mkstemp-based writer left
    write_json(old, {"accuracy": 1.0})
    assert mode(old) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, umask) -> None:
    target = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_stage_outputs_are_0644_under_umask_022(tmp_path: Path, umask) -> None:
    """The real validate and split stages on a tiny folder: every file they write is 0644."""
    from visionops.data import split, validate

    for label in ("blue", "green", "red"):
        for i in range(4):
            colour_image(tmp_path / "data" / label / f"{i}.png", label, seed=i)
    config = build_config(
        {
            "base": {"data_dir": "data", "artifacts_dir": "artifacts", "workers": 1},
            "validate": {"min_images_per_class": 2},
        },
        root=tmp_path,
    )
    validate.run(config)
    split.run(config)
    written = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    assert {"manifest.csv", "report.json", "train.csv", "counts.json"} <= {p.name for p in written}
    assert {str(p.relative_to(tmp_path)): oct(mode(p)) for p in written} == {
        str(p.relative_to(tmp_path)): "0o644" for p in written
    }
