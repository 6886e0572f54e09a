"""The Photo-Rater's state: which image of an unlabeled folder got which class, in order.

The state file (CSV ``sha256,source,label,decided_at``, one row per decision in the order made)
is rewritten atomically after every decision, so a crash loses nothing and a restart resumes
where it stopped; undo drops the last row, even after a restart. ``label`` is a class or
``skip``. Images are known by content hash: the same photo twice in the folder is asked once.

Order: with a model (the registry's champion by default) the most uncertain images come first
(smallest margin between the two most probable classes: active learning, the labels that teach
the next model most); without one, by file name.

:func:`LabelSession.finish` copies the labeled images into ``data/<class>/``: new files only,
never overwriting (a name already taken by other content gets ``-<hash8>`` added; the same
content already there is not copied again), never deleting; then ``dvc add data``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visionops.data.curation import now_utc
from visionops.errors import VisionOpsError
from visionops.images import list_images
from visionops.io import write_text

log = logging.getLogger(__name__)

SKIP = "skip"
FIELDS = ["sha256", "source", "label", "decided_at"]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_state_path(project_root: Path, folder: Path) -> Path:
    """``<project>/.visionops/labels/<folder name>-<hash of its absolute path>.csv``."""
    tag = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]
    return project_root / ".visionops" / "labels" / f"{folder.resolve().name}-{tag}.csv"


@dataclass
class Item:
    sha256: str
    path: Path
    guess: str = ""  # the model's most probable class
    p_guess: float | None = None
    margin: float | None = None  # p1 - p2: small = uncertain


@dataclass
class FinishResult:
    copied: list[str] = field(default_factory=list)  # paths relative to data/
    already_there: int = 0
    dvc: str = ""

    def to_dict(self) -> dict:
        return {"copied": self.copied, "already_there": self.already_there, "dvc": self.dvc}


class LabelSession:
    """One folder being labeled into ``classes``; every method is thread-safe."""

    def __init__(
        self,
        folder: Path,
        classes: list[str],
        state_path: Path,
        data_dir: Path,
        project_root: Path,
        predictor=None,
        extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"),
    ) -> None:
        if len(classes) < 2:
            raise VisionOpsError("give at least two classes, e.g. --classes cat dog")
        bad = [c for c in classes if not c.strip() or "/" in c or c.startswith(".") or c == SKIP]
        if bad or len(set(classes)) != len(classes):
            raise VisionOpsError(
                f"classes {classes}: each must be a distinct folder name (no '/', not hidden, "
                f"not {SKIP!r})"
            )
        if not folder.is_dir():
            raise VisionOpsError(f"{folder}: not a folder of images")
        self.folder, self.classes, self.state_path = folder, classes, state_path
        self.data_dir, self.project_root = data_dir, project_root
        self.lock = threading.Lock()
        self.items = self._scan(folder, {e.lower() for e in extensions})
        if not self.items:
            raise VisionOpsError(f"{folder}: no images found (jpg, png, ...)")
        self.model = None
        if predictor is not None:
            self._rank_by_uncertainty(predictor)
        self.journal = self._read_state()

    @staticmethod
    def _scan(folder: Path, extensions: set[str]) -> list[Item]:
        seen: dict[str, Item] = {}
        for path in sorted(list_images([folder])):
            if path.suffix.lower() not in extensions:
                continue
            sha = sha256_of(path)
            seen.setdefault(sha, Item(sha, path))
        return list(seen.values())

    def _rank_by_uncertainty(self, predictor) -> None:
        results = predictor.predict([str(i.path) for i in self.items], top_k=2)
        for item, pred in zip(self.items, results, strict=True):
            if pred.error or pred.probabilities is None:
                continue
            top = np.sort(pred.probabilities)[::-1]
            item.guess, item.p_guess = pred.label, float(top[0])
            item.margin = float(top[0] - (top[1] if len(top) > 1 else 0.0))
        self.items.sort(key=lambda i: (i.margin is None, i.margin or 0.0, str(i.path)))
        source = str(predictor.source)
        shown = source if source.startswith("models:/") else Path(source).name
        self.model = {"source": shown, "labels": list(predictor.labels)}

    def _read_state(self) -> list[dict]:
        if not self.state_path.exists():
            return []
        rows = list(csv.DictReader(io.StringIO(self.state_path.read_text(encoding="utf-8"))))
        known = {i.sha256 for i in self.items}
        return [r for r in rows if r.get("sha256") in known and r.get("label")]

    def _write_state(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.journal)
        write_text(self.state_path, buf.getvalue())

    def labels(self) -> dict[str, str]:
        return {r["sha256"]: r["label"] for r in self.journal}

    def state(self) -> dict:
        with self.lock:
            done = self.labels()
            pending = [i for i in self.items if i.sha256 not in done]
            counts = {c: 0 for c in [*self.classes, SKIP]}
            for label in done.values():
                counts[label] = counts.get(label, 0) + 1
            current = pending[0] if pending else None
            last = self.journal[-1] if self.journal else None
            return {
                "classes": self.classes,
                "total": len(self.items),
                "done": len(done),
                "counts": counts,
                "model": self.model,
                "state_file": str(self.state_path),
                "can_undo": bool(self.journal),
                "last": last,
                "current": None
                if current is None
                else {
                    "sha256": current.sha256,
                    "name": current.path.name,
                    "guess": current.guess,
                    "p_guess": current.p_guess,
                    "margin": current.margin,
                },
            }

    def label(self, sha256: str, label: str) -> dict:
        if label not in self.classes and label != SKIP:
            raise ValueError(f"label {label!r}: use one of {', '.join(self.classes)} or {SKIP}")
        with self.lock:
            item = next((i for i in self.items if i.sha256 == sha256), None)
            if item is None:
                raise KeyError(sha256)
            self.journal = [r for r in self.journal if r["sha256"] != sha256]
            self.journal.append(
                {
                    "sha256": sha256,
                    "source": str(item.path),
                    "label": label,
                    "decided_at": now_utc(),
                }
            )
            self._write_state()
        return self.state()

    def undo(self) -> dict:
        with self.lock:
            if not self.journal:
                raise LookupError("nothing to undo")
            self.journal.pop()
            self._write_state()
        return self.state()

    def file_of(self, sha256: str) -> Path | None:
        return next((i.path for i in self.items if i.sha256 == sha256), None)

    def finish(self, run_dvc: bool = True) -> FinishResult:
        """Copy labeled images into ``data/<class>/`` (new files only), then ``dvc add``."""
        result = FinishResult()
        with self.lock:
            labeled = [(r["sha256"], r["label"]) for r in self.journal if r["label"] != SKIP]
            for sha, label in labeled:
                source = self.file_of(sha)
                if source is None or not source.exists():
                    continue
                copied = _copy_new(source, self.data_dir / label, sha)
                if copied is None:
                    result.already_there += 1
                else:
                    result.copied.append(copied.relative_to(self.data_dir).as_posix())
        if run_dvc and result.copied:
            result.dvc = dvc_add(self.data_dir, self.project_root)
        log.info(
            "label: copied %d image(s) into %s (%d already there)",
            len(result.copied),
            self.data_dir,
            result.already_there,
        )
        return result


def _copy_new(source: Path, folder: Path, sha: str) -> Path | None:
    """Copy ``source`` into ``folder`` without overwriting; None when the content is there."""
    folder.mkdir(parents=True, exist_ok=True)
    for candidate in (folder / source.name, folder / f"{source.stem}-{sha[:8]}{source.suffix}"):
        if candidate.exists():
            if candidate.is_file() and sha256_of(candidate) == sha:
                return None
            continue
        try:
            with source.open("rb") as src, candidate.open("xb") as dst:  # x: never overwrite
                shutil.copyfileobj(src, dst)
        except FileExistsError:
            continue
        return candidate
    raise VisionOpsError(f"{folder}: cannot find a free name for {source.name}")


def dvc_add(data_dir: Path, project_root: Path) -> str:
    """``dvc add <data_dir>`` in the project; the command's last line, or why it did not run."""
    if not (project_root / ".dvc").is_dir():
        return f"{project_root} is not a DVC project: run `dvc add {data_dir}` yourself"
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    target = (
        data_dir.relative_to(project_root) if data_dir.is_relative_to(project_root) else data_dir
    )
    proc = subprocess.run(
        [dvc, "add", str(target)], cwd=project_root, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise VisionOpsError(
            f"`dvc add {target}` failed ({proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
        )
    return f"dvc add {target}: done; commit {target}.dvc with git to version the new images"
