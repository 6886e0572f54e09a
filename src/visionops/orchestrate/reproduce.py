"""``visionops reproduce models:/<name>@<alias>``: rebuild a registered version from its lineage
and say whether it comes out the same.

1. The version's tags give the git commit (``git_commit``; ``-dirty`` = built with uncommitted
   changes, listed in ``git_dirty``: refused unless ``allow_dirty``, then rebuilt from the base
   commit), the data version (``data_version``: ``data.dvc``'s md5), the split's hashes
   (``dvc.split``) and the test metrics (``test.<metric>``).
2. ``git worktree add --detach`` of that commit in a temporary folder, always removed afterwards
   (failure, Ctrl-C, SIGTERM). The user's work tree, ``dvc.lock`` and DVC state are not touched.
3. The worktree's DVC uses the project's cache (``dvc cache dir --local``) and remotes (URLs as
   the project resolves them); ``data.dvc`` is set to the recorded data version if the commit
   holds another one, then ``dvc checkout`` (``dvc pull`` when the cache lacks it).
4. ``dvc repro --force evaluate`` there (validate, split, train, evaluate; never register: the
   user's registry gains no version and no alias moves). ``--force`` also keeps DVC's run-cache
   from restoring old outputs instead of rerunning. The commit's own ``src/`` runs (first on
   ``PYTHONPATH``); MLflow logs to a SQLite store in the temporary folder.
5. Compared: md5 of every reproduced split file vs ``dvc.split``; test metric recorded vs
   reproduced, in points. Reproduced = split identical and |Δ| <= ``tolerance_pt``.

Each reproduced stage's outputs are added to the project's DVC cache (content-addressed, so
nothing there changes meaning); everything else written lives in the temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from visionops.errors import VisionOpsError
from visionops.orchestrate.lineage_checkout import (
    cache_object,
    environ,
    git,
    restore_data,
    sigterm_as_exit,
    temporary_worktree,
)
from visionops.orchestrate.stages import dvc_executable, failure_message, run_command
from visionops.registry.model_uri import default_tracking_uri, get_model_version
from visionops.registry.version_record import read_record

log = logging.getLogger(__name__)

LineSink = Callable[[str], None]
TOLERANCE_PT = 0.5
SPLIT_TAG = "dvc.split"
TARGET = "evaluate"  # the last stage that makes what is compared; register is never run


@dataclass
class Reproduction:
    """The verdict and what it rests on (JSON-able through :meth:`to_dict`)."""

    model_uri: str
    name: str
    version: str
    commit: str
    recorded_commit: str
    dirty: list[str]
    data_version: str
    data_source: str
    code: str
    split: dict[str, dict] = field(default_factory=dict)  # file -> recorded, reproduced, same
    split_identical: bool | None = None
    # best.pt's tensors vs the recorded ones (dvc.train tag -> the DVC cache); information only:
    # {"identical", "tensors", "tensors_differing", "max_abs_diff"}
    weights: dict = field(default_factory=dict)
    metric: str = "macro_f1"
    metrics: dict[str, dict] = field(default_factory=dict)  # name -> old, new, delta[, delta_pt]
    tolerance_pt: float = TOLERANCE_PT
    reproduced: bool = False
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        state = f"dirty at register: {', '.join(self.dirty) or '?'}" if self.dirty else "clean"
        same = _yes(self.split_identical)
        lines = [
            f"reproduce {self.model_uri} (version {self.version})",
            f"  commit   {self.commit[:12]} ({state})",
            f"  data     {self.data_version} ({self.data_source})",
            f"  code     {self.code}",
            f"  split    identical: {same} ({', '.join(self.split) or 'no recorded hashes'})",
            f"  weights  {_weights_line(self.weights)}",
            f"  {'metric':<10} {'recorded':>9} {'reproduced':>11} {'delta':>12}",
        ]
        for name, m in self.metrics.items():
            old, new = m.get("old"), m.get("new")
            if m.get("delta_pt") is not None:
                delta = f"{round(m['delta_pt'], 2) + 0.0:+.2f} pt"  # + 0.0: no "-0.00"
            else:
                delta = "-" if m.get("delta") is None else f"{round(m['delta'], 4) + 0.0:+.4f}"
            lines.append(f"  {name:<10} {_num(old, '9.4f')} {_num(new, '11.4f')} {delta:>12}")
        verdict = "REPRODUCED" if self.reproduced else "NOT REPRODUCED: " + "; ".join(self.reasons)
        lines.append(f"  verdict  {verdict} ({self.seconds:.0f} s)")
        return "\n".join(lines)


def _weights_line(w: dict) -> str:
    if not w:
        return "not compared (recorded best.pt not in the DVC cache, or unreadable)"
    if w["identical"]:
        return f"identical (all {w['tensors']} tensors of best.pt)"
    return (
        f"differ: {w['tensors_differing']} of {w['tensors']} tensors, "
        f"max |difference| {w['max_abs_diff']:.2g}"
    )


def _yes(flag: bool | None) -> str:
    return {True: "yes", False: "NO", None: "unknown"}[flag]


def _num(value: float | None, spec: str) -> str:
    width = spec.lstrip("+").split(".")[0]
    return format(value, spec) if value is not None else format("-", f">{width}")


def _md5(path: Path) -> str | None:
    return hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else None  # noqa: S324


def parse_out_hashes(text: str) -> dict[str, str]:
    """``"train.csv:<md5> val.csv:<md5>"`` (register's ``dvc.<stage>`` tags) -> {file: md5}."""
    pairs = (token.rpartition(":") for token in text.split())
    return {name: md5 for name, _, md5 in pairs if name and md5}


def _lock_hashes(lock: Path, stage: str) -> dict[str, str]:
    try:
        entry = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {})["stages"][stage]
        return {Path(o["path"]).name: str(o.get("md5")) for o in entry.get("outs", [])}
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}


def check_commit(tags: dict[str, str], uri: str, allow_dirty: bool) -> tuple[str, list[str]]:
    """(sha to check out, what was dirty); a one-line error when the tags forbid reproducing."""
    recorded = tags.get("git_commit") or "unknown"
    if recorded == "unknown":
        raise VisionOpsError(
            f"{uri} records no git commit (git_commit={recorded}): it was registered outside a "
            "git repository, so there is nothing to check out"
        )
    sha = recorded.removesuffix("-dirty")
    if sha == recorded:
        return sha, []
    dirty = [p for p in (tags.get("git_dirty") or "").split(",") if p]
    what = ", ".join(dirty) if dirty else "files not recorded (no git_dirty tag)"
    if not allow_dirty:
        raise VisionOpsError(
            f"{uri} was built from a dirty work tree: commit {sha[:12]} plus uncommitted "
            f"changes to {what}, which no checkout can restore. Pass --allow-dirty to rebuild "
            "from the base commit anyway (the data comes from the recorded data_version); "
            "commit the lineage next time (flow option commit: true)"
        )
    return sha, dirty or ["?"]


def compare_weights(old: Path, new: Path) -> dict:
    """Are the two checkpoints' tensors equal? (Bytes are no test: ``torch.save`` names the
    archive's inner folder after the temporary file it writes.) Information only."""
    if not new.is_file():
        return {}
    try:
        import torch

        a, b = (
            torch.load(p, map_location="cpu", weights_only=False)["model_state"] for p in (old, new)
        )
        differ = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
        diffs = [
            float((a[k].double() - b[k].double()).abs().max())
            for k in differ
            if k in b and a[k].shape == b[k].shape and a[k].numel()
        ]
        return {
            "identical": not differ and set(a) == set(b),
            "tensors": len(a),
            "tensors_differing": len(differ),
            "max_abs_diff": max(diffs, default=0.0),
        }
    except Exception as exc:  # noqa: BLE001 - information only: never fail the verdict on it
        log.debug("weights not compared: %s", exc)
        return {}


def compare(
    result: Reproduction, tags: dict[str, str], wproj: Path, lock_split: dict, cache: Path
) -> None:
    """Fill in the split and metric comparison and the verdict."""
    raw = yaml.safe_load((wproj / "params.yaml").read_text(encoding="utf-8")) or {}
    artifacts = wproj / str((raw.get("base") or {}).get("artifacts_dir") or "artifacts")
    recorded = parse_out_hashes(tags.get(SPLIT_TAG, "")) or lock_split
    for name, md5 in recorded.items():
        new = _md5(artifacts / "split" / name)
        result.split[name] = {"recorded": md5, "reproduced": new, "same": new == md5}
    if recorded:
        result.split_identical = all(s["same"] for s in result.split.values())
    if result.split_identical is None:
        result.reasons.append("the version records no split hashes (dvc.split tag)")
    elif not result.split_identical:
        changed = [n for n, s in result.split.items() if not s["same"]]
        result.reasons.append(f"split differs: {', '.join(changed)}")
    recorded_ckpt = parse_out_hashes(tags.get("dvc.train", "")).get("best.pt")
    old_ckpt = cache_object(cache, recorded_ckpt) if recorded_ckpt else None
    if old_ckpt:
        result.weights = compare_weights(old_ckpt, artifacts / "train" / "best.pt")
    try:
        new_metrics = json.loads((artifacts / "evaluate" / "metrics.json").read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        new_metrics = {}
    # The verdict uses the register metric; accuracy and log loss (sensitive to any change of
    # the weights) are shown beside it.
    for name in dict.fromkeys([result.metric, "accuracy", "log_loss"]):
        old, new = tags.get(f"test.{name}"), new_metrics.get(name)
        old = float(old) if old not in (None, "") else None
        new = float(new) if isinstance(new, int | float) else None
        delta = None if old is None or new is None else new - old
        if old is not None or new is not None:
            result.metrics[name] = {"old": old, "new": new, "delta": delta}
            if name != "log_loss":  # fractions in [0, 1]: the difference in points
                result.metrics[name]["delta_pt"] = None if delta is None else delta * 100
    main = result.metrics.get(result.metric, {})
    if main.get("delta_pt") is None:
        result.reasons.append(f"test.{result.metric} missing (recorded or reproduced)")
    elif abs(main["delta_pt"]) > result.tolerance_pt:
        result.reasons.append(
            f"test {result.metric} differs by {main['delta_pt']:+.2f} pt "
            f"(> {result.tolerance_pt:g} pt)"
        )
    result.reproduced = not result.reasons


def reproduce(
    model_uri: str,
    project: Path | str = ".",
    tracking_uri: str | None = None,
    allow_dirty: bool = False,
    tolerance_pt: float = TOLERANCE_PT,
    on_line: LineSink | None = None,
) -> Reproduction:
    """Rebuild ``model_uri`` from its recorded commit + data in a temporary worktree (module
    docstring); raises :class:`VisionOpsError` when it cannot even be attempted."""
    say = on_line or log.info
    started = time.perf_counter()
    project = Path(project).resolve()
    store = tracking_uri or default_tracking_uri(project / "params.yaml")
    client, mv = get_model_version(model_uri, store)
    tags = read_record(client, mv, store)  # tags over the version's visionops_record.json
    sha, dirty = check_commit(tags, model_uri, allow_dirty)
    top = git(project, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise VisionOpsError(f"{project} is not a git repository; run from the project folder")
    repo = Path(top.stdout.strip())
    if git(repo, "cat-file", "-e", f"{sha}^{{commit}}").returncode != 0:
        raise VisionOpsError(
            f"commit {sha[:12]} of {model_uri} is not in {repo}; `git fetch` it (or run from the "
            "clone it was built in)"
        )
    if dirty:
        say(f"version {mv.version} was dirty ({', '.join(dirty)}): rebuilding from {sha[:12]}")
    with sigterm_as_exit(), temporary_worktree(repo, sha, say) as tree:
        wproj = tree / project.relative_to(repo)
        lock_split = _lock_hashes(wproj / "dvc.lock", "split")  # before repro rewrites it
        md5, source, cache = restore_data(
            project, wproj, tags.get("data_version"), tree.parent, say
        )
        code = "the commit's src/ (PYTHONPATH)"
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tree.parent / 'mlflow.db'}"}
        if (wproj / "src" / "visionops").is_dir():
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(wproj / "src"), os.environ.get("PYTHONPATH")) if p
            )
        else:
            code = "the installed visionops (the commit has no src/visionops)"
        say(f"$ dvc repro --force {TARGET}   (in {wproj}; code: {code})")
        with environ(**env):
            done = run_command([dvc_executable(), "repro", "--force", TARGET], wproj, say)
        if done.returncode != 0:
            raise VisionOpsError(f"dvc repro in the worktree failed: {failure_message(done)}")
        result = Reproduction(
            model_uri=model_uri,
            name=mv.name,
            version=str(mv.version),
            commit=sha,
            recorded_commit=tags.get("git_commit", ""),
            dirty=dirty,
            data_version=md5,
            data_source=source,
            code=code,
            metric=tags.get("decision.metric") or "macro_f1",
            tolerance_pt=tolerance_pt,
        )
        compare(result, tags, wproj, lock_split, cache)
    result.seconds = round(time.perf_counter() - started, 1)
    return result
