"""What DVC itself records about a stage, read as data: ``dvc status --json``, ``dvc.lock`` and the
run-cache folder. :func:`visionops.orchestrate.stages.run_stage` decides ran / skipped / restored
from these, never from the words DVC prints (they change between releases and locales).

* before a run: ``dvc status --json <stage>`` lists the stage when its deps, params, command or
  outs differ from ``dvc.lock`` (``{}`` when it is up to date);
* the run-cache (``.dvc/cache/runs/<key[:2]>/<key>/<value>``) gains an entry only when DVC really
  executed the command (``StageCache.save``); a restore from the run-cache reuses an entry;
* after a run: the stage's ``dvc.lock`` entry (deps, params, outs hashes).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path

import yaml

from visionops.errors import VisionOpsError

#: ran: the command executed; skipped: nothing changed; restored: outputs from the run-cache.
RAN, SKIPPED, RESTORED = "ran", "skipped", "restored"


def parse_status_json(text: str) -> dict:
    """``dvc status --json`` output -> dict. DVC may print warnings before the JSON on stdout
    (e.g. an update notice), so the document starts at the first ``{``."""
    start = text.find("{")
    if start < 0:
        raise VisionOpsError(f"`dvc status --json` printed no JSON: {text.strip()[:200]!r}")
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError as exc:
        raise VisionOpsError(f"`dvc status --json` printed unreadable JSON ({exc})") from None


def stage_changed(status: dict, stage: str) -> bool:
    """True when ``dvc status --json`` reports the stage (an entry keyed by its name, or by
    ``dvc.yaml:<stage>`` in other folders' pipelines)."""
    return any(key == stage or key.endswith(f":{stage}") for key in status)


def lock_entry(root: Path, stage: str) -> dict | None:
    """The stage's entry in ``dvc.lock`` (None before its first run or without a lock file)."""
    path = Path(root) / "dvc.lock"
    if not path.exists():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise VisionOpsError(f"{path}: unreadable ({exc}); restore it with git") from None
    return (data.get("stages") or {}).get(stage)


def run_cache_entries(root: Path) -> set[str]:
    """Every run-cache entry in the default cache folder ``.dvc/cache/runs`` (relative paths).

    With a custom ``cache.dir`` this is empty and :func:`classify` reports a changed stage as
    ``ran`` (never ``restored``): it only compares two listings of the same folder."""
    runs = Path(root) / ".dvc" / "cache" / "runs"
    if not runs.is_dir():
        return set()
    return {
        str(Path(dirpath, name).relative_to(runs))
        for dirpath, _, files in os.walk(runs)
        for name in files
    }


def run_cache_key(lock: dict | None) -> str | None:
    """The run-cache key DVC files this ``dvc.lock`` entry under (``runs/<key[:2]>/<key>/``): a
    hash of its command, deps and params hashes and out paths. None when DVC's hashing helper
    is unavailable (another DVC release): :func:`classify` then never reports a restore."""
    if not lock:
        return None
    try:
        from dvc.stage.cache import _get_cache_hash  # the function DVC itself keys runs with
    except ImportError:
        return None
    return _get_cache_hash(copy.deepcopy(lock), key=True)


def classify(
    changed_before: bool,
    forced: bool,
    runs_before: set[str],
    runs_after: set[str],
    lock_before: dict | None,
    lock_after: dict | None,
) -> str:
    """ran / skipped / restored from DVC's records of one successful ``dvc repro --single-item``.

    ``--force`` always executes the command. An unchanged stage is skipped. A changed stage that
    left a new run-cache entry ran. A changed stage that left none was restored when the
    run-cache already held an entry under the key of its new ``dvc.lock`` entry (DVC checks
    those outputs out instead of running); otherwise it ran without a run-cache (``persist``
    outs, ``always_changed``, or the same result as an existing entry).
    """
    if forced:
        return RAN
    if not changed_before:
        return SKIPPED
    if runs_after - runs_before:
        return RAN
    key = run_cache_key(lock_after) if lock_after != lock_before else None
    if key and any(entry.startswith(f"{key[:2]}/{key}/") for entry in runs_before):
        return RESTORED
    return RAN


def status_json(run: Callable[[list[str]], tuple[int, str]], stage: str) -> dict:
    """``dvc status --json <stage>`` through ``run`` (args -> (exit code, stdout))."""
    code, stdout = run(["status", "--json", stage])
    if code != 0:
        tail = stdout.strip()[-300:]
        raise VisionOpsError(f"`dvc status --json {stage}` failed ({code}): {tail}")
    return parse_status_json(stdout)
