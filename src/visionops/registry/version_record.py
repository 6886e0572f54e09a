"""What a registered version records: a few tags, a markdown description, and the full record.

The MLflow *Models* page shows every tag of every version in its rows, so a version carries only
the tags people filter and scan by (:data:`TAG_KEYS` plus the headline test metric). The rest —
``dvc.lock`` hashes, every test metric, parity, the decision's numbers — goes into
``visionops_record.json`` among the model's own files (beside ``model.onnx`` and
``seen_images.txt``) and, for people, into the version's description (markdown, shown on the
version page). :func:`read_record` gives readers one flat ``{key: str}`` view: the record file
overlaid with the current tags (tags change after registration: ``decision.state``,
``champion.*`` moves, ``git_commit`` completed by the flow's ``commit: true``).
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)

RECORD_FILE = "visionops_record.json"
TAG_KEYS = (
    "decision",
    "decision.state",
    "experiment",
    "git_commit",
    "git_dirty",
    "data_version",
    "params_hash",
    "onnx_sha256",
    "seen_images.sha",
)


def version_tags(record: dict[str, str], metric: str) -> dict[str, str]:
    """The handful of tags a version carries (empty values left out)."""
    tags = {k: record[k] for k in TAG_KEYS if record.get(k)}
    if record.get(f"test.{metric}"):
        tags[f"test.{metric}"] = record[f"test.{metric}"]
    return tags


def read_record(client, mv, tracking_uri: str) -> dict[str, str]:
    """``visionops_record.json`` of a version (``{}`` if it has none) overlaid with its tags."""
    import mlflow.artifacts

    record: dict[str, str] = {}
    try:
        location = client.get_model_version_download_uri(mv.name, mv.version)
        text = mlflow.artifacts.load_text(f"{location.rstrip('/')}/{RECORD_FILE}")
        record = {str(k): str(v) for k, v in json.loads(text).items()}
    except Exception as exc:  # noqa: BLE001 - older versions and orphans have no record file
        log.debug("version %s of %s: no %s (%s)", mv.version, mv.name, RECORD_FILE, exc)
    return {**record, **dict(mv.tags or {})}


def _num(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def description(decision: dict, record: dict[str, str]) -> str:
    """Markdown for the version page: decision, scores, test metrics, lineage."""
    d, r = decision, record
    alias = f"@{d['alias']}" if d["alias"] else "no alias"
    lines = [f"**{alias}** — {d['reason']}", ""]
    if d.get("champion_version"):
        lines += [
            f"| {d['metric']} on {d['eval_images']} test images neither model has seen "
            f"| this version | champion v{d['champion_version']} |",
            "| --- | --- | --- |",
            f"| | {_num(d['new_score'])} | {_num(d['champion_score'])} |",
            "",
        ]
    scores = d.get("test_scores") or {}
    shown = [k for k in ("accuracy", "macro_f1", "log_loss", "ece") if k in scores]
    if shown:
        lines += [
            f"Whole test split ({d['test_images']} images): "
            + ", ".join(f"{k} {scores[k]:.4f}" for k in shown),
            "",
        ]
    dirty = f" + uncommitted {r['git_dirty']}" if r.get("git_dirty") else ""
    lines += [
        f"- data version `{r.get('data_version', '?')}`, commit `{r.get('git_commit', '?')}`"
        f"{dirty}, params `{r.get('params_hash', '?')}`",
        f"- trained/selected on {r.get('seen_images.count', '?')} images "
        f"(set `{r.get('seen_images.sha', '?')}`, `seen_images.txt`)",
        f"- {r.get('backbone', '?')}, ONNX opset {r.get('opset', '?')}, parity max |Δprob| "
        f"{r.get('parity.max_abs_diff_prob', '?')}",
    ]
    if d.get("experiment"):
        lines.append(f"- experiment `{d['experiment']}`")
    lines += ["", f"Everything else: `{RECORD_FILE}` in this version's files."]
    return "\n".join(lines)
