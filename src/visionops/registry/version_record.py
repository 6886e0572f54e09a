"""What a registered version records: a few tags, a markdown description, and the full record.

The MLflow *Models* page shows every tag of every version in its rows, so a version carries only
the tags people filter and scan by (:data:`TAG_KEYS` plus the headline test metric). The rest —
``dvc.lock`` hashes, every test metric, parity, the int8 gate, the decision's numbers — goes into
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
    "int8",  # passed | failed | none: is there an int8 model among the files (issue 12)
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


def int8_record(block: dict | None, logged: bool) -> dict[str, str]:
    """Record keys for export's int8 gate (``report.json`` block): the tag ``int8`` is
    ``passed`` only when ``model.int8.onnx`` was logged with the version, ``failed`` when the
    gate ran and said no, ``none`` when there was no gate (int8 off, older exports)."""
    block = block or {}
    if "agreement" not in block:
        return {"int8": "passed" if logged else "none"}
    record = {"int8": "passed" if logged else "failed", "int8.passed": str(logged).lower()}
    for key in ("agreement", "accuracy_delta", "speedup", "n_images"):
        if isinstance(block.get(key), int | float):
            record[f"int8.{key}"] = f"{block[key]:.6g}"
    if not logged:
        reason = block.get("reason") or ""
        if block.get("passed"):  # passed, yet not logged: passed_int8 refused the file
            reason = "export's model.int8.onnx is missing or was not made from this model.onnx"
        record["int8.reason"] = str(reason)[:500]
    return record


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
    if r.get("int8") == "passed":
        lines.append(
            f"- int8 `model.int8.onnx`: top-1 agreement {r.get('int8.agreement', '?')} with fp32 "
            f"on {r.get('int8.n_images', '?')} val+test images, accuracy delta "
            f"{r.get('int8.accuracy_delta', '?')}, {r.get('int8.speedup', '?')}x faster"
        )
    elif r.get("int8") == "failed":
        lines.append(f"- no int8 model: {r.get('int8.reason', 'the export gate failed')}")
    if d.get("experiment"):
        lines.append(f"- experiment `{d['experiment']}`")
    lines += ["", f"Everything else: `{RECORD_FILE}` in this version's files."]
    return "\n".join(lines)
