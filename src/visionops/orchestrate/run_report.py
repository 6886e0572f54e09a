"""The per-run report of an orchestrated pipeline run, built from the stage artifacts on disk.

Two products, both plain data so any front end can show them (the Prefect flow publishes them as
a markdown artifact and a table artifact):

* :func:`build_report` — markdown: outcome, data version, stages ran/skipped, param overrides,
  images per class and split, validation warnings, test metrics (with their 95% intervals),
  champion decision, MLflow run and model version.
* :func:`per_class_rows` — ``artifacts/evaluate/per_class.csv`` as a list of dicts.

A section is shown only for stages that succeeded in this run (ran or skipped as up to date), so
a failed run never presents a previous run's metrics as its own. Missing or unreadable artifacts
leave their section out; the report itself never fails.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionops.config import Config
from visionops.evaluate.intervals import metric_interval
from visionops.orchestrate.override_params import ParamChange
from visionops.orchestrate.stages import PIPELINE_STAGES, StageResult
from visionops.orchestrate.version_data import DataVersion
from visionops.paths import SPLITS, stage_paths
from visionops.tracking import tracking_uri

log = logging.getLogger(__name__)

_FILES_SHOWN = 3  # example files per validation-warning kind
_MLFLOW_UI_ENV = "VISIONOPS_MLFLOW_UI"  # where `make ui` serves MLflow, linked for embedded stores


@dataclass
class PipelineRun:
    """What one orchestrated run did; the flow fills it in as tasks finish."""

    name: str = ""
    data: DataVersion | None = None
    overrides: list[ParamChange] = field(default_factory=list)
    stages: list[StageResult] = field(default_factory=list)
    failed_stage: str | None = None
    failure: str | None = None
    pushed: bool = False

    @property
    def succeeded(self) -> set[str]:
        return {s.stage for s in self.stages}

    def statuses(self) -> dict[str, str]:
        """Stage -> ran | skipped | restored | failed | not run, in pipeline order."""
        done = {s.stage: s.status for s in self.stages}
        return {
            stage: done.get(stage, "failed" if stage == self.failed_stage else "not run")
            for stage in PIPELINE_STAGES
        }


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict | list):
        return f"`{json.dumps(value, default=str)}`"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    aligned = ["---"] + [
        "---:" if all(isinstance(r[i], int | float) for r in rows) else "---"
        for i in range(1, len(header))
    ]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(aligned) + " |"]
    out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return out + [""]


def _data_section(run: PipelineRun) -> list[str]:
    d = run.data
    if d is None:
        return []
    size = f", {d.size_bytes / 1e6:.1f} MB" if d.size_bytes else ""
    files = f"{d.nfiles} files{size}" if d.nfiles is not None else "size unknown"
    if d.changed:
        was = f"was `{d.previous_md5}`" if d.previous_md5 else "first version"
        state = f"**new version** ({was}; commit `{d.dvc_file}` to keep it)"
    else:
        state = "unchanged"
    pushed = "; pushed to the DVC remote" if run.pushed else ""
    return [f"**Data version** (`{d.dvc_file}`): `{d.md5}` — {state}, {files}{pushed}", ""]


def _stage_section(run: PipelineRun) -> list[str]:
    seconds = {s.stage: f"{s.duration_s:.1f}" for s in run.stages}
    rows = [[stage, status, seconds.get(stage, "")] for stage, status in run.statuses().items()]
    return ["## Stages (through DVC)", "", *_table(["stage", "result", "seconds"], rows)]


def _overrides_section(run: PipelineRun) -> list[str]:
    if not run.overrides:
        return []
    rows = [[f"`{c.key}`", c.old, c.new] for c in run.overrides]
    return [
        "## Param overrides (written to params.yaml)",
        "",
        *_table(["key", "was", "now"], rows),
    ]


def _counts_section(cfg: Config, run: PipelineRun) -> list[str]:
    if "split" not in run.succeeded:
        return []
    counts = _load_json(stage_paths(cfg).split_counts)
    if not isinstance(counts, dict) or not all(isinstance(counts.get(s), dict) for s in SPLITS):
        return []
    classes = sorted({c for s in SPLITS for c in counts[s]})
    rows = [
        [
            c,
            *(int(counts[s].get(c, 0)) for s in SPLITS),
            sum(int(counts[s].get(c, 0)) for s in SPLITS),
        ]
        for c in classes
    ]
    rows.append(
        [
            "**all**",
            *(sum(r[i + 1] for r in rows) for i in range(len(SPLITS))),
            sum(r[-1] for r in rows),
        ]
    )
    return ["## Images per class and split", "", *_table(["class", *SPLITS, "total"], rows)]


def _validation_section(cfg: Config, run: PipelineRun) -> list[str]:
    if "validate" not in run.succeeded and run.failed_stage != "validate":
        return []
    report = _load_json(stage_paths(cfg).validation_report)
    if not isinstance(report, dict):
        return []
    out = ["## Validation", ""]
    usable, files = report.get("usable"), report.get("files")
    if usable is not None:
        out += [f"{usable} usable images of {files} files in {report.get('classes')} classes.", ""]
    out += [f"- **error**: {e}" for e in report.get("errors") or []]
    warnings = report.get("warnings") or {}
    if not warnings:
        out.append("- no warnings: every file was usable")
    for kind, info in warnings.items():
        info = info if isinstance(info, dict) else {"count": info}
        examples = "; ".join(f"`{f}`" for f in (info.get("files") or [])[:_FILES_SHOWN])
        out.append(
            f"- skipped {info.get('count')}: {kind}" + (f" — {examples}" if examples else "")
        )
    normalized = report.get("normalized") or {}
    if normalized:
        out.append(
            "- normalised when loaded: " + ", ".join(f"{k} {v}" for k, v in normalized.items())
        )
    return out + [
        f"- full report: `{stage_paths(cfg).validation_summary.relative_to(cfg.root)}`",
        "",
    ]


def _metrics_section(cfg: Config, run: PipelineRun) -> list[str]:
    if "evaluate" not in run.succeeded:
        return []
    metrics = _load_json(stage_paths(cfg).evaluate_metrics)
    if not isinstance(metrics, dict):
        return []
    numbers = {
        k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    rows = [
        [k, v, metric_interval(numbers, k, digits=4)]
        for k, v in numbers.items()
        if not k.endswith(_CI_SUFFIXES)
    ]
    if not rows:
        return []
    fresh = "" if _status(run, "evaluate") == "ran" else " (model unchanged in this run)"
    out = [f"## Test metrics{fresh}", ""]
    if any(r[2] for r in rows):
        rows = [r if r[2] else [*r[:2], "—"] for r in rows]
        out += [
            f"On {numbers.get('n_images', '?')} test images; 95% intervals: accuracy Wilson, "
            "macro-F1 bootstrap over the images (sampling noise of the split only).",
            "",
        ]
        return out + _table(["metric", "value", "95% interval"], rows)
    return out + _table(["metric", "value"], [r[:2] for r in rows])


_CI_SUFFIXES = ("_ci_low", "_ci_high")


def _status(run: PipelineRun, stage: str) -> str:
    return run.statuses()[stage]


_DECISION_FIELDS = (
    "version",
    "alias",
    "promoted",
    "already_registered",
    "experiment",
    "metric",
    "new_score",
    "champion_version",
    "champion_score",
    "eval_images",
    "test_images",
    "min_improvement",
    "min_eval_images",
)


def _decision_section(cfg: Config, run: PipelineRun) -> list[str]:
    if "register" not in run.succeeded:
        return []
    d = _load_json(stage_paths(cfg).register_decision)
    if not isinstance(d, dict):
        return []
    out = ["## Champion decision", ""]
    if {"version", "alias", "metric", "new_score"} <= set(d):
        name = d.get("model_name") or cfg.register.model_name
        versus = (
            f" vs champion version {d['champion_version']} {_fmt(d.get('champion_score'))} "
            f"on {d.get('eval_images', '?')} test images neither model has seen"
            if d.get("champion_score") is not None
            else ""
        )
        alias = f"**@{d['alias']}**" if d["alias"] else "**no alias moved**"
        out += [
            f"`models:/{name}/{d['version']}` → {alias}: {d['metric']} "
            f"{_fmt(d['new_score'])}{versus} — {d.get('reason', '')}",
            "",
        ]
    rows = [[k, "—" if d[k] is None else d[k]] for k in _DECISION_FIELDS if k in d]
    rows = rows or [[k, v] for k, v in d.items() if not isinstance(v, dict | list)]
    return out + _table(["field", "value"], rows)


def _mlflow_section(cfg: Config, run: PipelineRun) -> list[str]:
    if "train" not in run.succeeded:
        return []
    info = _load_json(stage_paths(cfg).train_run) or {}
    decision = (
        (_load_json(stage_paths(cfg).register_decision) or {})
        if ("register" in run.succeeded)
        else {}
    )
    out = ["## MLflow", ""]
    run_id, exp = info.get("run_id"), info.get("experiment_id")
    uri = info.get("tracking_uri") or tracking_uri(cfg)
    if run_id:
        ui = os.environ.get(_MLFLOW_UI_ENV, "http://127.0.0.1:5000").rstrip("/")
        base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else ui
        link = f"{base}/#/experiments/{exp}/runs/{run_id}"
        note = "" if base == uri.rstrip("/") else " (with `make ui` running)"
        out.append(f"- run: [`{run_id}`]({link}){note}, experiment `{exp}`, store `{uri}`")
    name = decision.get("model_name") or cfg.register.model_name
    version = decision.get("version") or decision.get("model_version")
    if version is not None:
        out.append(f"- model version: `models:/{name}/{version}`")
    out.append(f"- serving alias: `models:/{name}@champion`")
    return out + [""]


def build_report(cfg: Config, run: PipelineRun) -> str:
    """Markdown for people; reads the artifacts of the stages that succeeded in ``run``."""
    if run.failure:
        where = f" at stage `{run.failed_stage}`" if run.failed_stage else ""
        head = [f"# VisionOps pipeline FAILED{where}", "", f"> {run.failure}", ""]
    else:
        ran = [s.stage for s in run.stages if s.status != "skipped"]
        what = f"ran {', '.join(ran)}" if ran else "every stage up to date (all skipped)"
        head = [f"# VisionOps pipeline completed: {what}", ""]
    if run.name:
        head[0] += f" — {run.name}"
    sections = [
        head,
        _data_section(run),
        _stage_section(run),
        _overrides_section(run),
        _counts_section(cfg, run),
        _validation_section(cfg, run),
        _metrics_section(cfg, run),
        _decision_section(cfg, run),
        _mlflow_section(cfg, run),
    ]
    return "\n".join(line for section in sections for line in section).rstrip() + "\n"


def per_class_rows(cfg: Config) -> list[dict[str, Any]]:
    """``per_class.csv`` rows with numbers as numbers; [] when evaluate has not produced it."""
    path = stage_paths(cfg).evaluate_dir / "per_class.csv"
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    return [{k: _number(v) for k, v in row.items()} for row in rows]


def _number(text: str | None) -> Any:
    if text is None:
        return ""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
