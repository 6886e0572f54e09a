"""Check out a registered version's lineage for :mod:`visionops.orchestrate.reproduce`: a
temporary git worktree of its commit, whose DVC uses the project's cache and remotes, with
``data/`` restored to the recorded data version.

The worktree lives in a fresh temporary folder and is removed (``git worktree remove`` + prune)
however the block ends: an exception, Ctrl-C, or SIGTERM (turned into ``SystemExit`` while it
runs). Nothing in the user's work tree, index or ``.dvc/tmp`` is touched; the worktree's DVC
writes new objects into the shared cache only (content-addressed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from visionops.errors import VisionOpsError
from visionops.orchestrate.stages import (
    dvc_executable,
    failure_message,
    run_command,
    subprocess_env,
)

LineSink = Callable[[str], None]


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``git <args>`` in ``cwd``, output captured; never raises (no git, a vanished ``cwd``:
    exit code 127 with the reason as stderr), so a cleanup step cannot skip the next one."""
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        return subprocess.CompletedProcess(["git", *args], 127, "", str(exc))


def _dvc(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        [dvc_executable(), *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise VisionOpsError(f"dvc {' '.join(args)} in {cwd} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


@contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables for the block (the DVC subprocesses inherit them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Let ``finally`` blocks run (worktree removal) when the process is terminated."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):  # noqa: ARG001
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_processes_in(folder: Path, timeout_s: float = 10.0) -> int:
    """Terminate (then kill) every process of this user working inside ``folder``.

    A stage DVC started survives ``dvc`` itself being terminated (it is re-parented, so it is
    no longer our child): found by its working directory, so an interrupted reproduction leaves
    no training running in a deleted folder. Returns how many were stopped.
    """
    try:
        import psutil  # a DVC dependency
    except ImportError:
        return 0
    inside = []
    prefix = str(folder.resolve())
    for proc in psutil.process_iter():
        try:
            cwd = proc.cwd()
        except (psutil.Error, OSError):
            continue
        if proc.pid != os.getpid() and (cwd == prefix or cwd.startswith(prefix + os.sep)):
            inside.append(proc)
    for proc in inside:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(inside, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return len(inside)


@contextmanager
def temporary_worktree(repo: Path, sha: str, say: LineSink) -> Iterator[Path]:
    """``git worktree add --detach`` in a fresh temp folder; removed (and pruned) on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="visionops-reproduce-")).resolve()  # as git prints it
    tree = tmp / "worktree"
    try:
        say(f"$ git worktree add --detach {tree} {sha[:12]}")
        proc = git(repo, "worktree", "add", "--detach", str(tree), sha)
        if proc.returncode != 0:
            raise VisionOpsError(f"git worktree add failed: {proc.stderr.strip()}")
        yield tree
    finally:
        with contextlib.suppress(Exception):  # best effort: the folder goes in any case
            stop_processes_in(tmp)
        removed = git(repo, "worktree", "remove", "--force", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)
        git(repo, "worktree", "prune")
        listed = git(repo, "worktree", "list", "--porcelain").stdout
        if f"worktree {tree}\n" in listed:
            say(
                f"warning: git still lists the worktree {tree} ({removed.stderr.strip()}); "
                f"remove it with `git worktree prune`"
            )
        else:
            say(f"removed the temporary worktree {tree}")


def _point_dvc_at_project(project: Path, wproj: Path, scratch: Path) -> tuple[Path, str | None]:
    """Worktree DVC: the project's cache dir and its remotes' resolved URLs (and credentials,
    from the project's ``config.local``); DVC's per-repository state under ``scratch``, not in
    the system's site cache. Returns (cache dir, default remote or None)."""
    local = project / ".dvc" / "config.local"
    if local.is_file():
        shutil.copy(local, wproj / ".dvc" / "config.local")
    _dvc(wproj, "config", "--local", "core.site_cache_dir", str(scratch / "dvc-site-cache"))
    cache = Path(_dvc(project, "cache", "dir"))
    _dvc(wproj, "cache", "dir", "--local", str(cache))
    default = None
    for line in _dvc(project, "remote", "list").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            _dvc(wproj, "remote", "modify", "--local", parts[0], "url", parts[1])
            default = parts[0] if "(default)" in parts[2:] else default
    if default:
        _dvc(wproj, "config", "--local", "core.remote", default)
    return cache, default


def cache_object(cache: Path, md5: str) -> Path | None:
    """The file holding ``md5`` in a DVC cache (DVC 3 ``files/md5/`` layout, or DVC 2's)."""
    for sub in ("files/md5", "."):
        path = cache / sub / md5[:2] / md5[2:]
        if path.is_file():
            return path
    return None


def restore_data(
    project: Path, wproj: Path, md5: str | None, scratch: Path, say: LineSink
) -> tuple[str, str, Path]:
    """Make the worktree's ``data/`` the recorded data version ``md5`` (``data.dvc``'s at the
    commit when None or ``untracked``). Returns (md5, where it came from, the DVC cache dir)."""
    raw = yaml.safe_load((wproj / "params.yaml").read_text(encoding="utf-8")) or {}
    data = Path((raw.get("base") or {}).get("data_dir") or "data")
    dvc_file = (data if data.is_absolute() else wproj / data).with_name(f"{data.name}.dvc")
    if not dvc_file.is_file():
        raise VisionOpsError(f"the commit holds no {dvc_file.name}: its data is not versioned")
    cache, remote = _point_dvc_at_project(project, wproj, scratch)
    spec = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
    out = spec["outs"][0]
    if md5 and md5 not in ("untracked", out.get("md5")):
        say(f"{dvc_file.name} at the commit says {out.get('md5')}; using the recorded {md5}")
        out.update(md5=md5)
        for stale in ("size", "nfiles"):
            out.pop(stale, None)
        dvc_file.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    md5 = str(out.get("md5"))
    if cache_object(cache, md5):
        done = run_command([dvc_executable(), "checkout", dvc_file.name], dvc_file.parent, say)
        if done.returncode == 0:
            return md5, f"DVC cache {cache}", cache
        say(f"dvc checkout failed ({failure_message(done)}); trying the remote")
    if not remote:
        raise VisionOpsError(
            f"data version {md5} is not in the DVC cache ({cache}) and the project has no DVC "
            "remote to pull it from: restore the images and `dvc add` them, or add the remote "
            "that holds them (dvc remote add -d ...)"
        )
    done = run_command([dvc_executable(), "pull", dvc_file.name], dvc_file.parent, say)
    if done.returncode != 0:
        raise VisionOpsError(
            f"data version {md5} is neither in the DVC cache ({cache}) nor pullable from remote "
            f"'{remote}': {failure_message(done)}"
        )
    return md5, f"DVC remote '{remote}'", cache
