"""Build the bundled demo sample from clothing-small: N images per class, short side downsized.

    python tools/make_sample.py ../shared/datasets/clothing-small sample/clothing-mini \
        --per-class 65 --short-side 200 --quality 70   # the bundled sample: 650 images, 5.7 MB

Deterministic: images are taken in sorted-name order from train/ then validation/.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image


def build_sample(source: Path, target: Path, per_class: int, short_side: int, quality: int) -> int:
    classes = sorted(p.name for p in (source / "train").iterdir() if p.is_dir())
    count = 0
    for label in classes:
        files = sorted((source / "train" / label).glob("*.jpg"))
        files += sorted((source / "validation" / label).glob("*.jpg"))
        out_dir = target / label
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in files[:per_class]:
            with Image.open(path) as img:
                img = img.convert("RGB")
                scale = short_side / min(img.size)
                if scale < 1:
                    img = img.resize(
                        (round(img.width * scale), round(img.height * scale)),
                        Image.Resampling.LANCZOS,
                    )
                img.save(out_dir / path.name, "JPEG", quality=quality, optimize=True)
            count += 1
    shutil.copy(source / "LICENSE", target.parent / "LICENSE")
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--per-class", type=int, default=25)
    parser.add_argument("--short-side", type=int, default=160)
    parser.add_argument("--quality", type=int, default=85)
    args = parser.parse_args()
    n = build_sample(args.source, args.target, args.per_class, args.short_side, args.quality)
    print(f"wrote {n} images to {args.target}")


if __name__ == "__main__":
    main()
