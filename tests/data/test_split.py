"""Split rules: hash-stable, stratified within the binomial bound, duplicate-safe, layout-aware."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.data.imagegen import make_dataset, write_image
from visionops.data import split as split
from visionops.data import validate as validate
from visionops.errors import DataError
from visionops.paths import SPLITS, stage_paths

pytestmark = pytest.mark.data

RATIOS = {"train": 0.70, "val": 0.15, "test": 0.15}


def _run(config) -> dict[str, str]:
    """validate + split; return {path: split}."""
    validate.run(config)
    split.run(config)
    paths = stage_paths(config)
    assigned = {}
    for name in SPLITS:
        for p in pd.read_csv(paths.split_file(name), dtype=str, keep_default_na=False)["path"]:
            assert p not in assigned, f"{p} is in two splits"
            assigned[p] = name
    return assigned


def _binomial_bound(n: int, ratio: float) -> float:
    """|count - ratio*n| allowed: 3 standard deviations, never below the ±1 of exact quotas."""
    return max(1.0, 3 * math.sqrt(n * ratio * (1 - ratio)))


def _fake_hashes(n: int, salt: str) -> list[str]:
    return [hashlib.sha256(f"{salt}-{i}".encode()).hexdigest() for i in range(n)]


@pytest.mark.slow
def test_adding_30_percent_never_moves_an_old_image(data_root: Path, make_config) -> None:
    config = make_config()
    make_dataset(data_root, {"cat": 40, "dog": 30, "fox": 20})
    before = _run(config)
    make_dataset(data_root, {"cat": 12, "dog": 9, "fox": 6}, prefix="new")
    after = _run(config)
    assert len(after) == len(before) + 27
    moved = [p for p, s in before.items() if after[p] != s]
    assert moved == [], f"{len(moved)} old images changed split: {moved[:5]}"

    for victim in sorted(before)[::7]:  # removals do not move the others either
        (data_root / victim).unlink()
    again = _run(config)
    assert all(again[p] == s for p, s in after.items() if p in again)


def test_assignment_is_a_function_of_hash_seed_and_ratios() -> None:
    old = pd.DataFrame({"sha256": _fake_hashes(3000, "old")})
    grown = pd.concat([old, pd.DataFrame({"sha256": _fake_hashes(900, "new")})], ignore_index=True)
    first = split.assign_splits(old, RATIOS, seed=42)
    second = split.assign_splits(grown, RATIOS, seed=42)
    assert (second.iloc[: len(old)] == first).all()
    assert (split.assign_splits(old, RATIOS, seed=7) != first).mean() > 0.3  # the seed matters


def test_per_class_counts_stay_within_the_binomial_bound(data_root: Path, make_config) -> None:
    """Exact ±1 quotas are impossible with hash stability (see split.py); this is the guarantee."""
    make_dataset(data_root, {"cat": 60, "dog": 35, "fox": 20})
    config = make_config()
    _run(config)
    counts = json.loads(stage_paths(config).split_counts.read_text())
    for label, n in {"cat": 60, "dog": 35, "fox": 20}.items():
        for name, ratio in RATIOS.items():
            deviation = counts["deviation_from_target"][name][label]
            assert deviation == pytest.approx(counts[name][label] - ratio * n)
            assert abs(deviation) <= _binomial_bound(n, ratio), (label, name, deviation)
        assert counts["train"][label] > 0


def test_deviation_statistics_over_many_classes() -> None:
    """The measured spread is the binomial one, and the overall ratios are on target."""
    rng = np.random.default_rng(0)
    deviations, totals = [], dict.fromkeys(RATIOS, 0)
    for c in range(200):
        n = int(rng.integers(20, 200))
        images = pd.DataFrame({"sha256": _fake_hashes(n, f"class{c}")})
        assigned = split.assign_splits(images, RATIOS, seed=42).value_counts()
        for name, ratio in RATIOS.items():
            got = int(assigned.get(name, 0))
            totals[name] += got
            deviations.append((got - ratio * n) / math.sqrt(n * ratio * (1 - ratio)))
    z = np.asarray(deviations)
    assert abs(z.mean()) < 0.15 and 0.8 < z.std() < 1.2  # unbiased, binomial spread
    assert np.percentile(np.abs(z), 99) < 3.0
    grand = sum(totals.values())
    for name, ratio in RATIOS.items():
        assert totals[name] / grand == pytest.approx(ratio, abs=0.01)


def test_duplicates_stay_together(data_root: Path, make_config) -> None:
    make_dataset(data_root, {"cat": 25, "dog": 25})
    for i in range(0, 25, 5):
        shutil.copy2(
            data_root / "cat" / f"img_{i:04d}.png", data_root / "cat" / f"zz_copy_{i:04d}.png"
        )
    config = make_config()
    assigned = _run(config)
    assert not any(p.startswith("cat/zz_copy_") for p in assigned)  # kept once, as the first path
    frames = [pd.read_csv(stage_paths(config).split_file(s), dtype=str) for s in SPLITS]
    hashes = pd.concat(frames)["sha256"]
    assert hashes.is_unique

    twins = pd.DataFrame({"sha256": ["ab" * 32] * 5 + ["cd" * 32] * 5})
    assert split.assign_splits(twins, RATIOS, seed=1).groupby(twins["sha256"]).nunique().max() == 1


def test_presplit_folders_are_honoured(data_root: Path, make_config) -> None:
    for name, n in {"train": 14, "val": 4, "test": 5}.items():
        make_dataset(data_root, {"cat": n, "dog": n}, split=name)
    assigned = _run(make_config())
    assert len(assigned) == 46
    assert all(s == p.split("/")[0] for p, s in assigned.items())


def test_missing_test_split_is_carved_from_train(data_root: Path, make_config) -> None:
    make_dataset(data_root, {"cat": 60, "dog": 50}, split="train")
    make_dataset(data_root, {"cat": 10, "dog": 8}, split="validation")
    config = make_config()
    assigned = _run(config)
    assert all(p.startswith("validation/") for p, s in assigned.items() if s == "val")
    assert sum(s == "val" for s in assigned.values()) == 18
    carved = [p for p, s in assigned.items() if s == "test"]
    assert carved and all(p.startswith("train/") for p in carved)
    share = RATIOS["test"] / (RATIOS["train"] + RATIOS["test"])
    assert abs(len(carved) - share * 110) <= _binomial_bound(110, share)

    write_image(data_root / "train" / "cat" / "late_arrival.png")  # carving is hash-stable too
    later = _run(config)
    assert all(later[p] == s for p, s in assigned.items())


def test_content_in_two_split_folders_lands_once(data_root: Path, make_config) -> None:
    make_dataset(data_root, {"cat": 6, "dog": 6}, split="train")
    make_dataset(data_root, {"cat": 2, "dog": 2}, split="test")
    shutil.copy2(
        data_root / "train" / "cat" / "img_0003.png", data_root / "test" / "cat" / "leak.png"
    )
    assigned = _run(make_config())
    assert assigned.get("test/cat/leak.png") == "test"
    assert "train/cat/img_0003.png" not in assigned


def test_a_class_missing_from_train_is_an_error(data_root: Path, make_config) -> None:
    make_dataset(data_root, {"cat": 5, "dog": 5}, split="train")
    make_dataset(data_root, {"cat": 2, "dog": 2, "fox": 3}, split="val")
    config = make_config()
    validate.run(config)
    with pytest.raises(DataError, match="no training image: fox"):
        split.run(config)


def test_split_files_and_counts_follow_the_contract(data_root: Path, make_config) -> None:
    make_dataset(data_root, {"cat": 20, "dog": 20})
    write_image(data_root / "dog" / "日本 語.jpg")
    config = make_config()
    validate.run(config)
    result = split.run(config)
    paths = stage_paths(config)
    for name in SPLITS:
        frame = pd.read_csv(paths.split_file(name), dtype=str, keep_default_na=False)
        assert list(frame.columns) == ["path", "label", "sha256"]
        assert frame["path"].tolist() == sorted(frame["path"])
        assert all((data_root / p).is_file() for p in frame["path"])
    counts = json.loads(paths.split_counts.read_text())
    assert counts["total"]["all"] == 41 == sum(counts["total"][s] for s in SPLITS)
    assert set(counts["train"]) == {"cat", "dog"}
    assert "split (flat layout)" in result.summary()


def test_split_without_manifest_says_run_validate(make_config) -> None:
    with pytest.raises(DataError, match="run `visionops validate` first"):
        split.run(make_config())
