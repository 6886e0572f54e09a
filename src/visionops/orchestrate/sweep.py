"""``visionops sweep``: a grid or random search queued on DVC's experiment queue.

Each point of the search space (:mod:`visionops.orchestrate.sweep_space`) becomes one
``dvc exp run --queue -n <name> -S key=value ...``; ``--run`` then runs the queue
(``dvc exp run --run-all -j N``: DVC starts its queue workers and follows their logs) and the
results are read back from ``dvc exp show --json``, best first by ``register.metric``.

A queued experiment runs the whole ``dvc.yaml`` in a copy of the repository under
``.dvc/tmp/exps/``: its MLflow runs and model versions still land in the project's store
(:func:`visionops.tracking.store_root`), the training run tagged ``experiment=<name>``, and
``register`` moves no alias for it (``register.promote_experiments``). Promote the winner with
``dvc exp apply <name>``, ``git commit``, ``dvc repro`` (docs/ORCHESTRATION.md, "Sweeps").
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visionops.config import load_config
from visionops.errors import VisionOpsError
from visionops.orchestrate.stages import dvc_executable, run_command, subprocess_env
from visionops.orchestrate.sweep_space import check_points, load_space, sweep_points
from visionops.paths import display_path, stage_paths

log = logging.getLogger(__name__)
LineSink = Callable[[str], None]
DONE = ("Success", "Failed")


@dataclass
class SweepRow:
    name: str
    status: str  # Queued | Running | Success | Failed | (missing: not in the queue any more)
    params: dict[str, Any]  # every params.yaml leaf, dotted
    test: dict[str, float]  # evaluate's scores.json
    val: dict[str, float]  # train's metrics.json


@dataclass
class SweepResult:
    prefix: str
    keys: list[str]
    metric: str
    names: list[str]
    rows: list[SweepRow] = field(default_factory=list)
    ran: bool = False
    sort_by: str = ""

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.rows if r.status == "Failed"]


def hydra_value(value: Any) -> str:
    """A value as ``dvc exp run -S key=<value>`` reads it back (Hydra's override grammar)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", text) and yaml.safe_load(text) == text:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def experiment_name(prefix: str, point: dict[str, Any]) -> str:
    """``sweep-3f2a-head_lr-0.003-head_epochs-5``: readable in ``dvc exp show`` and MLflow; only
    characters a git ref (DVC keeps experiments as refs) takes. The section is dropped from the
    key unless two swept keys share their last part."""
    leaves = [k.rsplit(".", 1)[-1] for k in point]
    parts = [prefix]
    for key, leaf in zip(point, leaves, strict=True):
        label = leaf if leaves.count(leaf) == 1 else key
        value = point[key]
        shown = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        parts += [label, shown]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))
    return re.sub(r"\.{2,}", ".", name).strip(".-")


def _dvc(root: Path, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run(
        [dvc_executable(), *args],
        cwd=root,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise VisionOpsError(f"dvc {' '.join(args)} failed: {detail[-1] if detail else ''}")
    return proc.stdout


def check_repo(root: Path) -> None:
    """DVC's queue stashes each experiment as a git commit on top of HEAD: it needs both."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--verify", "HEAD"], cwd=root, capture_output=True, text=True
        ).returncode
    except OSError:  # no git at all
        head = -1
    if head != 0:
        raise VisionOpsError(
            f"{root}: DVC's experiment queue needs a git repository with at least one commit; "
            "run: git init && git add -A && git commit -m 'baseline'"
        )
    if not (root / ".dvc").is_dir():
        raise VisionOpsError(f"{root}: not a DVC project (no .dvc/); run: dvc init")


def existing_names(root: Path) -> set[str]:
    out = _dvc(root, "exp", "list", "--all-commits", "--name-only")
    queued = queue_status(root)
    return {line.strip() for line in out.splitlines() if line.strip()} | set(queued)


def queue_status(root: Path) -> dict[str, str]:
    """``{name: status}`` from ``dvc queue status`` (queued, running and finished tasks)."""
    status = {}
    for line in _dvc(root, "queue", "status").splitlines():
        cells = line.split()
        if len(cells) >= 4 and cells[-1] in ("Queued", "Running", *DONE) and cells[0] != "Task":
            status[cells[1]] = cells[-1]
    return status


def queue(root: Path, points: list[dict[str, Any]], names: list[str], on_line: LineSink) -> None:
    done: list[str] = []
    for name, point in zip(names, points, strict=True):
        sets = [a for k, v in point.items() for a in ("-S", f"{k}={hydra_value(v)}")]
        try:
            _dvc(root, "exp", "run", "--queue", "-n", name, *sets)
        except VisionOpsError as exc:
            if done:
                raise VisionOpsError(
                    f"{exc} (queued before it: {', '.join(done)}; drop them with "
                    f"dvc queue remove {' '.join(done)})"
                ) from None
            raise
        done.append(name)
        on_line(f"queued {name}")


def run_queue(root: Path, jobs: int, on_line: LineSink) -> None:
    """``dvc exp run --run-all -j N``: start N queue workers, stream their logs until the queue
    is empty (every queued experiment, this sweep's and any queued before)."""
    args = [dvc_executable(), "exp", "run", "--run-all", "-j", str(jobs)]
    on_line("$ dvc " + " ".join(args[1:]))
    try:
        out = run_command(args, root, on_line)
    except KeyboardInterrupt:
        on_line("the queued experiments go on in the background: dvc queue status / dvc queue kill")
        raise
    if out.returncode != 0:
        raise VisionOpsError(
            f"dvc exp run --run-all failed (exit {out.returncode}); see `dvc queue status` "
            "and `dvc queue logs <name>`"
        )


def _scalars(entry: dict | None) -> dict[str, float]:
    data = (entry or {}).get("data") or {}
    return {k: v for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_results(root: Path, prefix: str, metric: str) -> list[SweepRow]:
    """This sweep's experiments (names starting with ``prefix-``) from ``dvc exp show --json``
    plus their queue status, best ``metric`` (test) first; unfinished ones last."""
    config = load_config(root / "params.yaml")
    paths = stage_paths(config)
    scores = display_path(paths.evaluate_scores, config.root)
    val = display_path(paths.train_metrics, config.root)
    status = queue_status(root)
    rows: dict[str, SweepRow] = {}
    for commit in json.loads(_dvc(root, "exp", "show", "--json", "--all-commits")):
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                name = rev.get("name") or exp.get("name") or ""
                if not name.startswith(prefix + "-"):
                    continue
                data = rev.get("data") or {}
                params_file = (data.get("params") or {}).get("params.yaml") or {}
                params = _flat(params_file.get("data") or {})
                metrics = data.get("metrics") or {}
                rows[name] = SweepRow(
                    name=name,
                    status=status.get(name, "Success"),
                    params=params,
                    test=_scalars(metrics.get(scores)),
                    val=_scalars(metrics.get(val)),
                )
    for name, state in status.items():  # failed or unfinished: no experiment commit yet
        if name.startswith(prefix + "-") and name not in rows:
            rows[name] = SweepRow(name, state, {}, {}, {})

    def order(row: SweepRow) -> tuple:
        score = row.test.get(metric)
        return (score is None, -(score or 0.0), row.name)

    return sorted(rows.values(), key=order)


def sort_command(root: Path, metric: str) -> str:
    """DVC's own table of the experiments, best first; ``--drop`` hides the md5 columns of
    the data, code and stage outputs (metric columns keep their ``file:key`` or bare names)."""
    config = load_config(root / "params.yaml")
    scores = display_path(stage_paths(config).evaluate_scores, config.root)
    data = re.escape(display_path(config.data_dir, config.root))
    art = re.escape(display_path(config.artifacts_dir, config.root))
    drop = f"'^({data}|src/.*|{art}/[^:]*)$'"
    return (
        f"dvc exp show --only-changed --drop {drop} --sort-by {scores}:{metric} --sort-order desc"
    )


def run_sweep(
    root: Path | str = ".",
    space_file: Path | str = "sweep.yaml",
    *,
    n: int | None = None,
    seed: int | None = None,
    prefix: str | None = None,
    run: bool = False,
    jobs: int = 1,
    dry_run: bool = False,
    on_line: LineSink | None = None,
) -> SweepResult:
    """Check every point, queue them (nothing is queued if one is wrong), optionally run."""
    on_line = on_line or log.info
    root = Path(root).resolve()
    params = root / "params.yaml"
    config = load_config(params)
    given = Path(space_file)  # in the project, else as given (from the cwd)
    space_path = given if not (root / given).exists() and given.exists() else root / given
    space = load_space(space_path, n=n, seed=seed, source=str(space_file))
    points = sweep_points(space)
    check_points(space, points, params, root / "dvc.yaml")
    prefix = prefix or f"sweep-{secrets.token_hex(2)}"
    names = [experiment_name(prefix, p) for p in points]
    result = SweepResult(prefix, space.keys, config.register.metric, names)
    result.sort_by = sort_command(root, result.metric)
    if dry_run:
        planned = zip(names, points, strict=True)
        result.rows = [SweepRow(name, "planned", point, {}, {}) for name, point in planned]
        return result
    check_repo(root)
    if jobs < 1:
        raise VisionOpsError(f"-j {jobs}: need at least 1 worker")
    taken = existing_names(root) & set(names)
    if taken:
        raise VisionOpsError(
            f"experiment name(s) already used: {', '.join(sorted(taken))}; pick another --name "
            "(or remove them: dvc exp remove <name>)"
        )
    queue(root, points, names, on_line)
    if run:
        run_queue(root, jobs, on_line)
        result.ran = True
    result.rows = read_results(root, prefix, result.metric)
    return result


def show_sweep(root: Path | str, prefix: str) -> SweepResult:
    """The table of an earlier sweep (``visionops sweep --show sweep-3f2a``); its columns are
    the params that differ between its experiments."""
    root = Path(root).resolve()
    metric = load_config(root / "params.yaml").register.metric
    rows = read_results(root, prefix, metric)
    known = [r.params for r in rows if r.params]
    keys = [k for k in (known[0] if known else {}) if len({repr(p.get(k)) for p in known}) > 1]
    result = SweepResult(prefix, keys, metric, [r.name for r in rows], rows, ran=True)
    result.sort_by = sort_command(root, metric)
    return result
