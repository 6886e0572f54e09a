"""Every policy case of the validate stage, each built here with PIL; data/ must stay untouched."""

from __future__ import annotations

import json
import shutil
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.data.imagegen import make_dataset, tree_digest, write_image
from visionops.data import validate as validate
from visionops.data.expectations import check_manifest
from visionops.data.inspect_file import allowed_formats
from visionops.data.scan import scan_images
from visionops.errors import DataError
from visionops.paths import stage_paths

pytestmark = pytest.mark.data


def _base(data: Path) -> None:
    make_dataset(data, {"cat": 3, "dog": 3})


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width x height`` RGB pixels (a decompression bomb header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# Each builder adds its case to a folder and returns the file (relative to data/) to look for.
def truncated_jpeg(data: Path) -> str:
    _base(data)
    path = write_image(data / "cat" / "truncated.jpg", size=(64, 64), quality=95)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return "cat/truncated.jpg"


def zero_bytes(data: Path) -> str:
    _base(data)
    (data / "cat" / "empty.jpg").write_bytes(b"")
    return "cat/empty.jpg"


def text_named_jpg(data: Path) -> str:
    _base(data)
    (data / "dog" / "notes.jpg").write_text("this is not a picture\n")
    return "dog/notes.jpg"


def text_file(data: Path) -> str:
    _base(data)
    (data / "dog" / "README.txt").write_text("labels by Ann\n")
    return "dog/README.txt"


def cmyk_jpeg(data: Path) -> str:
    _base(data)
    write_image(data / "cat" / "cmyk.jpg", mode="CMYK")
    return "cat/cmyk.jpg"


def png_16bit(data: Path) -> str:
    _base(data)
    arr = (np.arange(48 * 40, dtype=np.uint16).reshape(40, 48) * 27).astype(np.uint16)
    Image.fromarray(arr).save(data / "cat" / "deep.png")  # uint16 -> mode I;16
    return "cat/deep.png"


def palette_png_transparent(data: Path) -> str:
    _base(data)
    path = data / "dog" / "palette.png"
    rgb = Image.open(write_image(data / "tmp.png")).convert("P")
    (data / "tmp.png").unlink()
    rgb.save(path, transparency=0)
    return "dog/palette.png"


def exif_rotated_jpeg(data: Path) -> str:
    _base(data)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    write_image(data / "cat" / "rotated.jpg", size=(40, 64), exif=exif.tobytes())
    return "cat/rotated.jpg"


def grayscale_and_alpha(data: Path) -> str:
    _base(data)
    write_image(data / "dog" / "alpha.png", mode="RGBA")
    write_image(data / "dog" / "gray.png", mode="L")
    return "dog/gray.png"


def bomb_header_png(data: Path) -> str:
    _base(data)
    (data / "cat" / "bomb.png").write_bytes(_png_claiming(30000, 30000))
    return "cat/bomb.png"


def tiny_image(data: Path) -> str:
    _base(data)
    write_image(data / "dog" / "tiny.png", size=(10, 10))
    return "dog/tiny.png"


def unicode_and_spaces(data: Path) -> str:
    _base(data)
    write_image(data / "dog" / "日本 語.jpg")
    write_image(data / "cat" / "été photo 1.png")
    return "cat/été photo 1.png"


def symlink_out_of_tree(data: Path) -> str:
    _base(data)
    outside = write_image(data.parent / "elsewhere" / "secret.png")
    (data / "cat" / "link.png").symlink_to(outside)
    return "cat/link.png"


def symlinked_folder(data: Path) -> str:
    _base(data)
    make_dataset(data.parent / "elsewhere", {"bird": 3})
    (data / "bird").symlink_to(data.parent / "elsewhere" / "bird", target_is_directory=True)
    return "bird/"


def ds_store(data: Path) -> str:
    _base(data)
    (data / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (data / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return "cat/.DS_Store"


def apple_double(data: Path) -> str:
    _base(data)
    (data / "cat" / "._img_0000.png").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)
    return "cat/._img_0000.png"


def hidden_folder(data: Path) -> str:
    _base(data)
    write_image(data / "cat" / ".ipynb_checkpoints" / "x.png")
    return "cat/.ipynb_checkpoints/"


def file_outside_class(data: Path) -> str:
    _base(data)
    write_image(data / "stray.png")
    return "stray.png"


def duplicate_within_class(data: Path) -> str:
    _base(data)
    shutil.copy2(data / "cat" / "img_0000.png", data / "cat" / "zz_copy.png")
    return "cat/zz_copy.png"


def symlink_inside_tree(data: Path) -> str:
    _base(data)
    (data / "cat" / "zz_link.png").symlink_to(data / "cat" / "img_0001.png")
    return "cat/zz_link.png"


def same_image_two_labels(data: Path) -> str:
    _base(data)
    shutil.copy2(data / "cat" / "img_0002.png", data / "dog" / "which_one.png")
    return "dog/which_one.png"


def class_with_one_image(data: Path) -> str:
    _base(data)
    make_dataset(data, {"bird": 1})
    return "bird"


def class_of_corrupt_files(data: Path) -> str:
    _base(data)
    for i in range(3):
        (data / "bird" / f"broken_{i}.jpg").parent.mkdir(exist_ok=True)
        (data / "bird" / f"broken_{i}.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 20)
    return "bird"


def single_class(data: Path) -> str:
    make_dataset(data, {"cat": 4})
    return "cat"


def empty_data(data: Path) -> str:
    return str(data)


def only_loose_files(data: Path) -> str:
    write_image(data / "a.png")
    return "a.png"


# (builder, outcome, problem kind or mode to find in the manifest)
CASES: list[tuple[Callable[[Path], str], str, str]] = [
    (truncated_jpeg, "skipped", "corrupt"),
    (zero_bytes, "skipped", "zero bytes"),
    (text_named_jpg, "skipped", "not an image"),
    (text_file, "skipped", "not an image"),
    (cmyk_jpeg, "normalized", "CMYK"),
    (png_16bit, "normalized", "I;16"),
    (palette_png_transparent, "normalized", "P"),
    (exif_rotated_jpeg, "normalized", "RGB"),
    (grayscale_and_alpha, "normalized", "L"),
    (bomb_header_png, "skipped", "too large"),
    (tiny_image, "skipped", "too small"),
    (unicode_and_spaces, "normalized", "RGB"),
    (symlink_out_of_tree, "skipped", "symlink outside data"),
    (symlinked_folder, "skipped", "symlinked folder"),
    (ds_store, "skipped", "hidden file"),
    (apple_double, "skipped", "hidden file"),
    (hidden_folder, "skipped", "hidden folder"),
    (file_outside_class, "skipped", "outside class folder"),
    (duplicate_within_class, "skipped", "duplicate"),
    (symlink_inside_tree, "skipped", "duplicate"),
    (same_image_two_labels, "error", "two or more labels"),
    (class_with_one_image, "error", "min_images_per_class"),
    (class_of_corrupt_files, "error", "min_images_per_class"),
    (single_class, "error", "only 1 class"),
    (empty_data, "error", "no class folders"),
    (only_loose_files, "error", "no class folders"),
]


def _manifest(config) -> pd.DataFrame:
    return pd.read_csv(stage_paths(config).manifest, dtype=str, keep_default_na=False)


@pytest.mark.parametrize(("build", "outcome", "expect"), CASES, ids=[c[0].__name__ for c in CASES])
def test_policy_case(build, outcome, expect, data_root: Path, make_config) -> None:
    name = build(data_root)
    before = tree_digest(data_root)
    config = make_config()
    paths = stage_paths(config)

    if outcome == "error":
        with pytest.raises(DataError) as err:
            validate.run(config)
        message = str(err.value)
        assert expect in message and name in message
        assert "\n" not in message
        report = json.loads(paths.validation_report.read_text())
        assert any(name in e for e in report["errors"]), "the report must name the file too"
    else:
        result = validate.run(config)
        assert result.usable >= 6 and set(result.per_class) == {"cat", "dog"}
        rows = _manifest(config).set_index("path")
        assert name in rows.index, f"manifest has no row for {name}"
        row = rows.loc[name]
        summary = paths.validation_summary.read_text(encoding="utf-8")
        if outcome == "skipped":
            assert row["usable"] == "False"
            assert row["problem"].startswith(expect), row["problem"]
            assert name in summary
            assert json.loads(paths.validation_report.read_text())["warnings"][expect]["count"] >= 1
        else:
            assert row["usable"] == "True" and row["problem"] == ""
            assert row["mode"] == expect
    assert tree_digest(data_root) == before, "validate must never modify data/"


def test_exif_rotation_reports_upright_size(data_root: Path, make_config) -> None:
    exif_rotated_jpeg(data_root)
    validate.run(make_config())
    row = _manifest(make_config()).set_index("path").loc["cat/rotated.jpg"]
    assert (row["width"], row["height"], row["orientation"]) == ("64", "40", "6")


def test_bomb_header_is_never_decoded(data_root: Path, make_config) -> None:
    bomb_header_png(data_root)
    started = time.perf_counter()
    df = scan_images(data_root, make_config().validate_, workers=1)
    assert time.perf_counter() - started < 5  # decoding 900 MP would take far longer (and 2.7 GB)
    row = df.set_index("path").loc["cat/bomb.png"]
    assert (row["width"], row["height"]) == (30000, 30000) and not row["usable"]


def test_normalized_modes_are_counted_in_report(data_root: Path, make_config) -> None:
    cmyk_jpeg(data_root)
    exif_rotated_jpeg(data_root)
    result = validate.run(make_config())
    assert result.normalized == {"mode CMYK": 1, "EXIF orientation": 1}


def test_error_message_caps_the_file_list(data_root: Path, make_config) -> None:
    make_dataset(data_root, {"cat": 14})
    for src in sorted((data_root / "cat").iterdir()):
        (data_root / "dog").mkdir(exist_ok=True)
        shutil.copy2(src, data_root / "dog" / src.name)
    with pytest.raises(DataError, match=r"14 image\(s\) appear under two or more labels.*\+4 more"):
        validate.run(make_config())


def test_missing_data_dir_is_a_clear_error(tmp_path: Path, make_config) -> None:
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(DataError, match="data folder not found"):
        validate.run(make_config())


def test_presplit_layout_is_detected(data_root: Path, make_config) -> None:
    make_dataset(data_root, {"cat": 3, "dog": 3}, split="train")
    make_dataset(data_root, {"cat": 1, "dog": 1}, split="validation")
    result = validate.run(make_config())
    assert result.layout == "presplit" and result.per_class == {"cat": 4, "dog": 4}
    hints = _manifest(make_config()).set_index("path")["split_hint"]
    assert hints["validation/cat/img_0000.png"] == "val"
    assert hints["train/dog/img_0002.png"] == "train"


@pytest.mark.slow
def test_process_pool_gives_the_same_manifest(data_root: Path, make_config) -> None:
    make_dataset(data_root, {"cat": 40, "dog": 40})
    truncated_jpeg(data_root)
    params = make_config().validate_
    serial = scan_images(data_root, params, workers=1)
    pooled = scan_images(data_root, params, workers=2)
    pd.testing.assert_frame_equal(serial, pooled)


def test_expectations_catch_a_bad_manifest(data_root: Path, make_config) -> None:
    _base(data_root)
    params = make_config().validate_
    df = scan_images(data_root, params, workers=1)
    usable = df[df["usable"]].copy()
    usable.loc[usable.index[0], "width"] = 5
    usable.loc[usable.index[1], "sha256"] = "not-a-hash"
    result = check_manifest(
        usable, params.min_side, params.max_pixels, allowed_formats(params.extensions)
    )
    assert not result.success
    failed = " ".join(result.failed)
    assert "expect_column_values_to_be_between" in failed and "width" in failed
    assert "expect_column_values_to_match_regex" in failed
