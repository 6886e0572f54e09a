"""Commit what a pipeline run changed (``data.dvc``, ``dvc.lock``, ``params.yaml``) so the version
it registered can be checked out again (the Prefect flow's ``commit: true``).

Why it is needed: ``dvc add data`` rewrites ``data.dvc``, a param override rewrites
``params.yaml`` and every stage rewrites ``dvc.lock``, and nothing commits them, so every
registered version recorded ``<sha>-dirty``: a commit that does not hold the data version, the
params or the lock it was built from. :func:`commit_lineage` commits exactly those three files
(only those that changed; never any other file, even when others are staged or modified), then
moves the registered version's ``git_commit`` tag to the new commit, because the version was
registered *before* the commit existed.

The tag moves only when that is true to the letter: the version was registered on the commit
the new one sits on, everything it recorded as dirty (tag ``git_dirty``) is among the committed
files, and the committed ``data.dvc`` holds the version's ``data_version``. The old value stays
in ``git_commit.at_register`` (and ``git_dirty.at_register``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from visionops.config import Config
from visionops.errors import VisionOpsError
from visionops.paths import stage_paths
from visionops.tracking import data_version, git_state

log = logging.getLogger(__name__)

LineSink = Callable[[str], None]
_TIMEOUT_S = 120  # hooks may run linters; a commit is never slower than that here
_IDENTITY_FIX = (
    'git config user.email "you@example.com" && git config user.name "Your Name" '
    "(in the project, or with --global; the user the flow runs as needs them)"
)


@dataclass
class LineageCommit:
    """What :func:`commit_lineage` did. ``status``: committed | nothing to commit | skipped."""

    status: str
    reason: str = ""
    sha: str | None = None
    files: list[str] = field(default_factory=list)
    still_dirty: list[str] = field(default_factory=list)  # other tracked files left modified
    model_version: str | None = None  # "models:/name/N" from decision.json
    tagged: bool = False  # git_commit tag of that version moved to ``sha``
    tag_note: str = ""

    def summary(self) -> str:
        if self.status != "committed":
            return f"lineage commit {self.status}: {self.reason}"
        text = f"lineage committed {self.sha[:12]}: {', '.join(self.files)}"
        if self.model_version:
            text += (
                f"; {self.model_version} git_commit -> {self.sha[:12]}"
                if self.tagged
                else f"; {self.model_version} tags unchanged ({self.tag_note})"
            )
        if self.still_dirty:
            text += f"; lineage stays dirty: {', '.join(self.still_dirty)} not committed"
        return text

    def to_dict(self) -> dict:
        return asdict(self)


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=root,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=_TIMEOUT_S,
        )
    except FileNotFoundError:
        raise VisionOpsError("git not found on PATH: cannot commit the lineage") from None
    except subprocess.TimeoutExpired:
        raise VisionOpsError(f"git {args[0]} in {root} took over {_TIMEOUT_S} s; gave up") from None
    if check and proc.returncode != 0:
        raise VisionOpsError(f"git {' '.join(args)} in {root} failed: {_last_lines(proc)}")
    return proc


def _last_lines(proc: subprocess.CompletedProcess, n: int = 3) -> str:
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or f"exit code {proc.returncode}"


def lineage_files(config: Config) -> list[Path]:
    """The files a run changes and a checkout needs: ``<data_dir>.dvc``, dvc.lock, params.yaml."""
    # abspath, not resolve(): data/ may be a symlink, and data.dvc sits beside the link.
    root, data = Path(os.path.abspath(config.root)), Path(os.path.abspath(config.data_dir))
    return [data.parent / f"{data.name}.dvc", root / "dvc.lock", root / "params.yaml"]


def changed_paths(root: Path, paths: list[Path]) -> list[str]:
    """Of ``paths``, those git sees as modified, staged or new (untracked), top-level relative."""
    rel = [str(p) for p in paths if p.exists()]
    if not rel:
        return []
    out = _git(root, "status", "--porcelain", "-z", "--untracked-files=all", "--", *rel).stdout
    return [e[3:] for e in out.split("\0") if len(e) > 3]


def _read_decision(config: Config) -> dict | None:
    path = stage_paths(config).register_decision
    try:
        decision = json.loads(path.read_text(encoding="utf-8"))
        return decision if {"model_name", "version"} <= set(decision) else None
    except (OSError, json.JSONDecodeError):
        return None


def commit_lineage(
    config: Config, flow_run: str = "", on_line: LineSink | None = None
) -> LineageCommit:
    """Commit the run's ``data.dvc``, ``dvc.lock`` and ``params.yaml`` (those that changed), then
    point the registered version's ``git_commit`` tag at the new commit when it may.

    Not a git repository: skipped (logged). Raises :class:`VisionOpsError` with one line when
    git has no user identity (naming the ``git config`` fix) or a hook rejects the commit (the
    three files are left uncommitted, staged only if they were before).
    """
    say = on_line or log.info
    root = config.root.resolve()
    top = _git(root, "rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0:
        say(f"{root} is not a git repository: nothing committed (the lineage stays unrecorded)")
        return LineageCommit("skipped", reason=f"{root} is not a git repository")
    toplevel = Path(top.stdout.strip())
    head = _git(root, "rev-parse", "--verify", "-q", "HEAD", check=False).stdout.strip() or None
    files = changed_paths(toplevel, lineage_files(config))
    _, dirty = git_state(root)
    others = [p for p in dirty if p not in files]
    if not files:
        reason = "data.dvc, dvc.lock and params.yaml are unchanged since the last commit"
        say(f"lineage commit: nothing to commit ({reason})")
        return LineageCommit("nothing to commit", reason=reason, still_dirty=others)
    if _git(root, "var", "GIT_COMMITTER_IDENT", check=False).returncode != 0:
        raise VisionOpsError(
            f"cannot commit {', '.join(files)}: git has no user identity in {toplevel}. "
            f"Fix: {_IDENTITY_FIX}"
        )
    decision = _read_decision(config)
    version = f"models:/{decision['model_name']}/{decision['version']}" if decision else None
    md5 = data_version(config)
    message = (
        f"visionops: lineage of {version or 'the pipeline run'}"
        f"{f' (flow run {flow_run})' if flow_run else ''}\n\n"
        f"data version (data.dvc md5): {md5}\n"
        f"registered version: {version or 'none (no artifacts/register/decision.json)'}\n"
        f"files: {', '.join(files)}\n"
    )
    staged_before = set(
        _git(toplevel, "diff", "--cached", "--name-only", "-z", "--", *files).stdout.split("\0")
    )
    _git(toplevel, "add", "--", *files)
    # A pathspec commit (--only) takes exactly these paths, whatever else the index holds.
    proc = _git(toplevel, "commit", "-q", "-m", message, "--only", "--", *files, check=False)
    if proc.returncode != 0:
        restore = [f for f in files if f not in staged_before]
        if restore:
            _git(toplevel, "reset", "-q", "--", *restore, check=False)
        raise VisionOpsError(
            f"git commit of {', '.join(files)} failed ({_last_lines(proc)}); a pre-commit or "
            "commit-msg hook may have rejected it. Nothing was committed; fix it, then "
            f"`git add {' '.join(files)} && git commit`"
        )
    sha = _git(root, "rev-parse", "HEAD").stdout.strip()
    result = LineageCommit("committed", sha=sha, files=files, still_dirty=others)
    say(f"committed {sha[:12]}: {', '.join(files)}")
    if others:
        say(
            f"warning: other tracked files are modified too and were NOT committed "
            f"({', '.join(others[:10])}{' ...' if len(others) > 10 else ''}): the lineage stays "
            "dirty until they are committed or reverted"
        )
    if decision:
        result.model_version = version
        result.tagged, result.tag_note = retag_version(decision, head, sha, files, md5)
        say(
            f"{version}: git_commit tag -> {sha[:12]}"
            if result.tagged
            else f"{version}: lineage tags unchanged ({result.tag_note})"
        )
    return result


def retag_version(
    decision: dict, parent: str | None, sha: str, committed: list[str], md5: str
) -> tuple[bool, str]:
    """Move the version's ``git_commit`` tag to ``sha`` when the commit completes its lineage.

    Returns (moved, why not). The version must have been registered on ``parent`` (the commit
    the new one sits on), recorded dirty only files that are now committed, and carry the data
    version the committed ``data.dvc`` holds.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, version = decision["model_name"], str(decision["version"])
    store = decision.get("tracking_uri")
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    try:
        tags = dict(client.get_model_version(name, version).tags or {})
    except MlflowException as exc:
        return False, f"version not readable in {decision.get('tracking_uri')}: {exc}"
    recorded = tags.get("git_commit", "")
    base, was_dirty = recorded.removesuffix("-dirty"), recorded.endswith("-dirty")
    dirty = [p for p in tags.get("git_dirty", "").split(",") if p]
    if recorded == sha:
        return False, "already points at this commit"
    if not parent or base != parent:
        return False, f"registered on {recorded[:19] or 'no commit'}, not on the parent commit"
    if was_dirty and "git_dirty" not in tags:
        return False, "it records no git_dirty tag, so what was dirty is unknown"
    if not set(dirty) <= set(committed):
        left = sorted(set(dirty) - set(committed))
        return False, f"it was built with uncommitted changes to {', '.join(left[:5])}"
    if tags.get("data_version") and tags["data_version"] != md5:
        return False, f"its data_version {tags['data_version']} is not the committed {md5}"
    for key, value in {
        "git_commit.at_register": recorded,
        "git_dirty.at_register": tags.get("git_dirty", ""),
        "git_commit": sha,
        "git_dirty": "",
    }.items():
        client.set_model_version_tag(name, version, key, value)
    return True, ""
