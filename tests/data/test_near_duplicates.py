"""Near-duplicates, junk, colliding class names and curation.csv in validate + split.

The photos are the bundled CC0 sample (``sample/clothing-mini``: 300 photos of clothes, 10 classes),
so the perceptual hash is tested on real photographs, not on noise.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageDraw

from tests.data.imagegen import make_dataset, tree_digest
from visionops.data import split as split
from visionops.data import validate as validate
from visionops.data.curation import Decision, read_curation, write_curation
from visionops.data.near_duplicates import near_pairs
from visionops.errors import DataError
from visionops.paths import SPLITS, stage_paths

pytestmark = pytest.mark.data

SAMPLE = Path(__file__).resolve().parents[2] / "sample" / "clothing-mini"
COPIES = ("png", "q55", "half")


def _copies(photo: Path) -> dict[str, bytes]:
    """The same photo saved as PNG, re-encoded as JPEG quality 55, and resized to half."""
    with Image.open(photo) as im:
        im.load()
        out = {}
        for kind in COPIES:
            buf = io.BytesIO()
            if kind == "png":
                im.save(buf, "PNG")
            elif kind == "q55":
                im.save(buf, "JPEG", quality=55)
            else:
                im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS).save(
                    buf, "JPEG", quality=85
                )
            out[kind] = buf.getvalue()
    return out


def _photo_set(data: Path, classes: int = 10) -> dict[str, list[str]]:
    """Copy the sample's photos of ``classes`` classes into ``data``; add 3 copies of 10 of them
    (in the same class folder). Returns {original: [original + copies]} (paths rel. to data/)."""
    if not SAMPLE.is_dir():
        pytest.skip(f"{SAMPLE} missing")
    names = sorted(p.name for p in SAMPLE.iterdir() if p.is_dir())[:classes]
    for name in names:
        shutil.copytree(SAMPLE / name, data / name)
    photos = sorted(data.glob("*/*.jpg"))
    groups = {}
    for photo in photos[:: len(photos) // 10][:10]:
        rel = photo.relative_to(data).as_posix()
        members = [rel]
        for kind, blob in _copies(photo).items():
            ext = ".png" if kind == "png" else ".jpg"
            copy = photo.with_name(f"{photo.stem}-{kind}{ext}")
            copy.write_bytes(blob)
            members.append(copy.relative_to(data).as_posix())
        groups[rel] = members
    return groups


def _manifest(config) -> pd.DataFrame:
    return pd.read_csv(stage_paths(config).manifest, dtype=str, keep_default_na=False)


def _split_of(config) -> dict[str, str]:
    where = {}
    for s in SPLITS:
        for p in pd.read_csv(stage_paths(config).split_file(s), dtype=str)["path"]:
            where[p] = s
    return where


@pytest.mark.slow
def test_copies_of_10_photos_are_grouped_and_never_straddle_splits(
    data_root: Path, make_config
) -> None:
    truth = _photo_set(data_root)
    before = tree_digest(data_root)
    config = make_config(**{"base.workers": 2})
    result = validate.run(config)
    split.run(config)
    assert tree_digest(data_root) == before  # data/ only read

    df = _manifest(config).set_index("path")
    grouped = df[df["dup_group"] != ""]
    true_pairs = {(a, b) for m in truth.values() for a in m for b in m if a < b}
    found_pairs = {
        (a, b) for _, g in grouped.groupby("dup_group") for a in g.index for b in g.index if a < b
    }
    hits = len(true_pairs & found_pairs)
    precision = hits / len(found_pairs) if found_pairs else 1.0
    recall = hits / len(true_pairs)
    print(
        f"\nnear-duplicates over {len(df)} files: {len(found_pairs)} pairs found, "
        f"{len(true_pairs)} true, precision {precision:.3f}, recall {recall:.3f}"
    )
    assert recall == 1.0 and precision == 1.0, sorted(found_pairs ^ true_pairs)[:10]
    assert result.near_duplicates["groups"] == 10 and result.near_duplicates["conflicts"] == 0

    where = _split_of(config)
    for original, members in truth.items():
        assert len({where[m] for m in members}) == 1, (original, {m: where[m] for m in members})
    sheet = stage_paths(config).validation_summary.with_name("near_duplicates.png")
    assert sheet.stat().st_size > 5000
    assert "near_duplicates.png" in stage_paths(config).validation_summary.read_text()


def test_a_near_copy_under_another_label_is_a_reported_conflict(
    data_root: Path, make_config
) -> None:
    photo = sorted((SAMPLE / "hat").glob("*.jpg"))[0] if SAMPLE.is_dir() else None
    if photo is None:
        pytest.skip("sample missing")
    make_dataset(data_root, {"hat": 3, "shoes": 3})
    shutil.copy(photo, data_root / "hat" / "photo.jpg")
    (data_root / "shoes" / "photo.png").write_bytes(_copies(photo)["png"])
    config = make_config()
    result = validate.run(config)
    split.run(config)
    assert result.near_duplicates["conflicts"] == 1
    conflict = [n for n in result.notices if "different labels" in n]
    assert conflict and "hat/photo.jpg ~ shoes/photo.png" in conflict[0], result.notices
    where = _split_of(config)
    assert where["hat/photo.jpg"] == where["shoes/photo.png"]
    report = json.loads(stage_paths(config).validation_report.read_text())
    assert report["near_duplicates"]["list"][0]["labels"] == ["hat", "shoes"]


def test_a_near_copy_of_a_test_image_in_train_folder_is_skipped(
    data_root: Path, make_config
) -> None:
    photo = sorted((SAMPLE / "hat").glob("*.jpg"))[0] if SAMPLE.is_dir() else None
    if photo is None:
        pytest.skip("sample missing")
    for s in ("train", "test"):
        make_dataset(data_root, {"hat": 3, "shoes": 3}, split=s)
    shutil.copy(photo, data_root / "test" / "hat" / "photo.jpg")
    (data_root / "train" / "hat" / "photo.png").write_bytes(_copies(photo)["half"])
    config = make_config()
    validate.run(config)
    df = _manifest(config).set_index("path")
    assert df.at["test/hat/photo.jpg", "usable"] == "True"
    assert df.at["train/hat/photo.png", "usable"] == "False"
    assert df.at["train/hat/photo.png", "problem"].startswith(
        "near-duplicate: of test/hat/photo.jpg"
    )


@pytest.mark.parametrize(
    ("folders", "named"),
    [
        (("Cats", "cats", "dogs"), ("Cats/", "cats/")),
        (("dog ", "dog", "cat"), ("dog /", "dog/")),
        (("T-Shirt", "t_shirt", "hat"), ("T-Shirt/", "t_shirt/")),
    ],
)
def test_class_names_equal_up_to_case_or_spacing_warn_naming_both(
    data_root: Path, make_config, folders: tuple[str, ...], named: tuple[str, str]
) -> None:
    make_dataset(data_root, dict.fromkeys(folders, 3))
    result = validate.run(make_config())
    clash = [n for n in result.notices if "differ only in case" in n]
    assert len(clash) == 1, result.notices
    assert all(f"{data_root}/{n}" in clash[0] for n in named), clash[0]
    assert "warning: class folders differ" in result.summary()
    assert len(result.per_class) == len(folders)  # still separate classes: a warning, no guess


def _blank(path: Path) -> None:
    Image.new("RGB", (120, 90), (250, 250, 250)).save(path)


def _placeholder(path: Path) -> None:
    img = Image.new("RGB", (200, 150), (233, 233, 233))
    draw = ImageDraw.Draw(img)
    draw.rectangle((80, 35, 120, 75), outline=(150, 150, 150), width=3)
    draw.line((80, 75, 100, 52, 120, 75), fill=(150, 150, 150), width=3)
    draw.text((52, 95), "image not found", fill=(120, 120, 120))
    img.save(path)


def _screenshot(path: Path) -> None:
    img = Image.new("RGB", (320, 200), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, 320, 18), fill=(45, 45, 48))
    for y in range(30, 190, 14):
        draw.text((10, y), "Lorem ipsum dolor sit amet, consectetur adipiscing", fill="black")
    img.save(path, "JPEG", quality=80)


def test_junk_images_are_kept_but_reported(data_root: Path, make_config) -> None:
    if not SAMPLE.is_dir():
        pytest.skip("sample missing")
    for name in ("hat", "shoes"):
        shutil.copytree(SAMPLE / name, data_root / name)
    junk = {"hat/blank.png": _blank, "hat/placeholder.png": _placeholder}
    junk["shoes/screenshot.jpg"] = _screenshot
    for rel, draw in junk.items():
        draw(data_root / rel)
    result = validate.run(make_config())
    df = _manifest(make_config()).set_index("path")
    flagged = set(df.index[df["suspect"] != ""])
    # A screenshot full of text is busy at 64 px (52 % one colour, gray std 63): flatness cannot
    # tell it from a photo; it is left to the outlier ranking of the trained model's embeddings.
    assert flagged == {"hat/blank.png", "hat/placeholder.png"}, flagged
    assert (df.loc[list(junk), "usable"] == "True").all()  # kept: a person decides
    assert result.suspect_junk["count"] == 2
    assert any("look like junk" in n for n in result.notices)


def test_curation_relabels_and_excludes_by_content_hash(data_root: Path, make_config) -> None:
    make_dataset(data_root, {"cat": 6, "dog": 6})
    config = make_config()
    validate.run(config)
    df = _manifest(config).set_index("path")
    moved, dropped = "dog/img_0001.png", "cat/img_0002.png"
    write_curation(
        config.root / "curation.csv",
        {
            df.at[moved, "sha256"]: Decision(df.at[moved, "sha256"], "relabel", "cat", moved),
            df.at[dropped, "sha256"]: Decision(df.at[dropped, "sha256"], "exclude", "", dropped),
            "0" * 64: Decision("0" * 64, "exclude"),  # an image no longer in data/
        },
    )
    before = tree_digest(data_root)
    result = validate.run(config)
    split.run(config)
    assert tree_digest(data_root) == before
    after = _manifest(config).set_index("path")
    assert after.at[moved, "label"] == "cat" and after.at[moved, "folder_label"] == "dog"
    assert after.at[dropped, "usable"] == "False"
    assert after.at[dropped, "problem"].startswith("excluded: by curation.csv")
    assert result.per_class == {"cat": 6, "dog": 5}
    assert result.curation == {"relabeled": 1, "excluded": 1, "kept": 0, "not_found": 1}
    totals = json.loads(stage_paths(config).split_counts.read_text())["total"]
    assert totals["all"] == 11


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sha256,action,label\nabc,exclude,\n", "curation.csv:2: sha256 'abc'"),
        (f"sha256,action,label\n{'a' * 64},delete,\n", "action 'delete' unknown"),
        (f"sha256,action,label\n{'a' * 64},relabel,\n", "relabel needs the new label"),
        ("path,label\nx,y\n", "header must be sha256,action"),
    ],
)
def test_a_bad_curation_file_names_the_line(
    data_root: Path, make_config, text: str, message: str
) -> None:
    make_dataset(data_root, {"cat": 3, "dog": 3})
    config = make_config()
    (config.root / "curation.csv").write_text(text)
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        validate.run(config)


def test_relabel_to_a_class_that_does_not_exist_is_an_error(data_root: Path, make_config) -> None:
    make_dataset(data_root, {"cat": 3, "dog": 3})
    config = make_config()
    write_curation(config.root / "curation.csv", {"a" * 64: Decision("a" * 64, "relabel", "cow")})
    with pytest.raises(DataError, match="relabel to 'cow', which is not a class folder"):
        validate.run(config)


def test_missing_or_header_only_curation_file_means_no_decisions(tmp_path: Path) -> None:
    assert read_curation(tmp_path / "absent.csv") == {}
    write_curation(tmp_path / "c.csv", {})
    assert (tmp_path / "c.csv").read_text() == "sha256,action,label,path,decided_at\n"
    assert read_curation(tmp_path / "c.csv") == {}


def test_near_pairs_threshold_is_inclusive() -> None:
    a = "0" * 64
    b = "f" * 6 + "8" + "0" * 57  # 25 bits set
    c = "f" * 7 + "0" * 57  # 28 bits set
    assert near_pairs([a, b, c], max_distance=26) == [(0, 1, 25), (1, 2, 3)]
