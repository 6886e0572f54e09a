"""Atomic writes: a crash mid-write leaves the previous file intact, never half a file.

Files come out with the mode any other write would give them (``0o666 & ~umask``, so ``0644``
under the usual umask 022): the temporary file is created by :func:`os.open` with ``0o666`` and
the kernel applies the umask. Not :func:`tempfile.mkstemp`: it creates ``0600`` files and
:func:`os.replace` keeps that mode, so a service running as another user could not read
``model.onnx`` or the metrics, nor the copies MLflow makes of them (``shutil.copy2`` keeps modes).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _new_temp_file(target: Path) -> Path:
    """Create an empty, uniquely named file beside ``target`` (mode ``0o666 & ~umask``)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp{target.suffix}")
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{target.parent}: could not create a temporary file for {target.name}")


@contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    The rename is atomic on POSIX within one filesystem, so readers see the old file or the new
    one. On an exception the temporary file is removed and ``target`` is untouched. The new file
    gets the umask's mode, even when it replaces a file with another mode.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp_file(target)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: Path | str, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json(target: Path | str, data: Any) -> Path:
    return write_text(target, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_with(target: Path | str, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` (e.g. ``df.to_csv`` or ``fig.savefig``) and publish atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)
