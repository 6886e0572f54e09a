"""Selection on small data: the pipeline on 2 classes x N images of clothing-small, several seeds.

For each seed, draws ``--per-class`` images of each class of ``--pair`` from ``train/`` +
``validation/`` of clothing-small (with that seed), copies them into a flat project
(``data/<class>/``, the repository's ``params.yaml`` with ``base.seed`` = the seed, its
``curation.csv``) and runs ``visionops validate``, ``split``, ``train``, ``evaluate`` with
``PYTHONPATH=--code``, so the same draw can be trained by two versions of the source (issue 14,
item 1: before / after the tie-break by validation loss). One stage runs at a time.

    .venv/bin/python benchmarks/small_subsets.py --pair t-shirt,shirt --per-class 120 \\
        --seeds 1,2,3 --code /work/main/src --out /tmp/small/after

Writes ``<out>/seed-<s>/`` (the projects, with each stage's log) and ``<out>/results.json``
(a later call with the same pair, size and code adds its seeds to it), and prints one row per
seed and the mean, std (sample) and min-max over all the seeds in it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATASET = Path("/work/shared/datasets/clothing-small")
STAGES = ("validate", "split", "train", "evaluate")
QUIET_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
}
BEST_LINE = re.compile(r"train: best epoch (\d+)/(\d+): .*\(selected on (\w+);")


def build_project(project: Path, pair: list[str], per_class: int, seed: int, code: Path) -> None:
    """A fresh project: the seeded draw of images, params.yaml (seed set) and curation.csv."""
    if project.exists():
        shutil.rmtree(project)
    rng = random.Random(seed)
    for name in pair:
        pool = sorted(
            p for split in ("train", "validation") for p in (DATASET / split / name).iterdir()
        )
        target = project / "data" / name
        target.mkdir(parents=True)
        for src in rng.sample(pool, per_class):
            shutil.copy2(src, target / f"{src.parent.parent.name}-{src.name}")
    text = (REPO / "params.yaml").read_text()
    text, n = re.subn(r"(?m)^(  seed:)\s*\d+", rf"\g<1> {seed}", text, count=1)
    if n != 1:
        raise SystemExit("params.yaml: no base.seed line")
    if "calibrate" not in (code / "visionops" / "config.py").read_text():
        # Source from before temperature scaling: its config rejects the unknown key.
        text = re.sub(r"(?m)^  calibrate:.*\n", "", text)
    (project / "params.yaml").write_text(text)
    shutil.copy2(REPO / "curation.csv", project / "curation.csv")


def run_stages(project: Path, code: Path) -> dict:
    """Runs the four stages in ``project`` with ``code`` first on the import path."""
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(code)}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    check = [sys.executable, "-c", "import visionops; print(visionops.__file__)"]
    imported = subprocess.run(check, env=env, cwd=project, capture_output=True, text=True)
    out: dict = {"visionops": imported.stdout.strip(), "seconds": {}, "load": {}}
    for stage in STAGES:
        out["load"][stage] = Path("/proc/loadavg").read_text().split()[:3]
        started = time.perf_counter()
        proc = subprocess.run(
            ["visionops", stage], env=env, cwd=project, capture_output=True, text=True
        )
        out["seconds"][stage] = round(time.perf_counter() - started, 1)
        (project / f"{stage}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode:
            raise SystemExit(f"{project}: visionops {stage} failed, see {stage}.log")
        if stage == "train":
            found = BEST_LINE.search(proc.stdout + proc.stderr)
            if not found:
                raise SystemExit(f"{project}: no 'train: best epoch' line in train.log")
            out["best_epoch"], out["epochs"] = int(found[1]), int(found[2])
            out["selection_metric"] = found[3]
    out["load"]["end"] = Path("/proc/loadavg").read_text().split()[:3]
    return out


def collect(project: Path, run: dict, head_epochs: int) -> dict:
    """The row of one seed: best epoch, its val scores, n_val, test scores, wall time."""
    art = project / "artifacts"
    metrics = json.loads((art / "train" / "metrics.json").read_text())
    scores = json.loads((art / "evaluate" / "scores.json").read_text())
    with (art / "train" / "history.csv").open() as f:
        history = list(csv.DictReader(f))
    with (art / "split" / "val.csv").open() as f:
        n_val = sum(1 for _ in csv.DictReader(f))
    with (art / "split" / "test.csv").open() as f:
        n_test = sum(1 for _ in csv.DictReader(f))
    key = "val_macro_f1" if run["selection_metric"] == "macro_f1" else "val_acc"
    best = run["best_epoch"]
    best_score = float(next(r[key] for r in history if int(r["epoch"]) == best))
    return {
        "best_epoch": best,
        "epochs_run": len(history),
        "phase": "head" if best <= head_epochs else "finetune",
        "selection_metric": run["selection_metric"],
        "val_accuracy": metrics["val_accuracy"],
        "val_macro_f1": metrics["val_macro_f1"],
        "val_loss": metrics["val_loss"],
        "n_val": n_val,
        "n_test": n_test,
        # Epochs scoring the same as the selected one (within float slack): the ties.
        "epochs_at_best_score": [
            int(r["epoch"]) for r in history if abs(float(r[key]) - best_score) < 1e-9
        ],
        "history": [
            {k: r[k] for k in ("epoch", "phase", "val_loss", "val_acc", "val_macro_f1")}
            for r in history
        ],
        "test_accuracy": scores["accuracy"],
        "test_macro_f1": scores["macro_f1"],
        "seconds": run["seconds"],
        "wall_seconds": round(sum(run["seconds"].values()), 1),
        "load": run["load"],
        "visionops": run["visionops"],
    }


def spread(values: list[float]) -> dict:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pair", default="t-shirt,shirt", help="two class folders, comma-separated"
    )
    parser.add_argument("--per-class", type=int, default=120)
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated")
    parser.add_argument("--code", type=Path, default=REPO / "src", help="src folder to import")
    parser.add_argument("--out", type=Path, required=True, help="folder for projects + results")
    args = parser.parse_args()

    pair = args.pair.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    code = args.code.resolve()
    head_epochs = int(
        re.search(r"(?m)^  head_epochs:\s*(\d+)", (REPO / "params.yaml").read_text())[1]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"pair": pair, "per_class": args.per_class, "code": str(code), "seeds": {}}
    saved = args.out / "results.json"
    if saved.exists():  # a later call adds its seeds to those of the same study
        old = json.loads(saved.read_text())
        if {k: old[k] for k in ("pair", "per_class", "code")} == {
            k: results[k] for k in ("pair", "per_class", "code")
        }:
            results["seeds"] = old["seeds"]
    for seed in seeds:
        project = args.out / f"seed-{seed}"
        build_project(project, pair, args.per_class, seed, code)
        row = collect(project, run_stages(project, code), head_epochs)
        results["seeds"][str(seed)] = row
        print(
            f"seed {seed}: best epoch {row['best_epoch']}/{row['epochs_run']} ({row['phase']}), "
            f"val acc {row['val_accuracy']:.4f} F1 {row['val_macro_f1']:.4f} on {row['n_val']}, "
            f"ties at {row['epochs_at_best_score']}; test acc {row['test_accuracy']:.4f} "
            f"F1 {row['test_macro_f1']:.4f} on {row['n_test']}; {row['wall_seconds']:.0f} s",
            flush=True,
        )
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = list(results["seeds"].values())
    results["summary"] = {
        k: spread([float(r[k]) for r in rows])
        for k in (
            "best_epoch",
            "val_accuracy",
            "val_macro_f1",
            "test_accuracy",
            "test_macro_f1",
            "wall_seconds",
        )
    }
    results["summary"]["finetune_selected"] = sum(r["phase"] == "finetune" for r in rows)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for k, s in results["summary"].items():
        if isinstance(s, dict):
            print(f"{k}: {s['mean']:.4f} ± {s['std']:.4f} (min {s['min']:.4f}, max {s['max']:.4f})")
    print(f"fine-tune epoch selected: {results['summary']['finetune_selected']} of {len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
