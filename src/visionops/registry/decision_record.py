"""A registered version's decision as record entries, and back.

``register`` writes them into the version record (:mod:`visionops.registry.version_record`;
``decision`` and ``decision.state`` also as tags) in the same call that creates the version
(``decision.state`` = ``pending`` until the alias has moved); a rerun on the same ONNX content
rebuilds ``decision.json`` from them instead of registering a second version.
"""

from __future__ import annotations

import json

from visionops.registry.champion import CHAMPION
from visionops.registry.recovery import DONE, PENDING
from visionops.registry.version_record import read_record


def _fmt(value: float | None) -> str:
    """Full precision (``repr`` round-trips), so a rebuilt decision equals the original."""
    return "none" if value is None else repr(float(value))


def decision_tags(d: dict) -> dict[str, str]:
    """The decision as version tags (enough to rebuild ``decision.json`` on an idempotent rerun)."""
    return {
        "decision": d["alias"] or "none",
        "decision.state": PENDING,
        "decision.reason": d["reason"][:4900],
        "decision.metric": d["metric"],
        "decision.new_score": _fmt(d["new_score"]),
        "decision.champion_version": d["champion_version"] or "none",
        "decision.champion_score": _fmt(d["champion_score"]),
        "decision.min_improvement": f"{d['min_improvement']:g}",
        "decision.eval_images": str(d["eval_images"]),
        "decision.eval_set_sha": d["eval_set_sha"],
        "decision.test_scores": json.dumps(d["test_scores"]),
        **({"experiment": d["experiment"]} if d["experiment"] else {}),
    }


def decision_from_record(client, name: str, mv, uri: str) -> dict:
    """Rebuild ``decision.json`` for a version registered before (same ONNX content)."""
    t = read_record(client, mv, uri)

    def num(key: str) -> float | None:
        return None if t.get(key, "none") == "none" else float(t[key])

    alias = None if t.get("decision") in (None, "none") else t["decision"]
    return {
        "model_name": name,
        "version": str(mv.version),
        "model_uri": f"models:/{name}/{mv.version}",
        "alias": alias,
        "promoted": alias == CHAMPION,
        "reason": t.get("decision.reason", ""),
        "state": t.get("decision.state", DONE),
        "metric": t.get("decision.metric", ""),
        "min_improvement": float(t.get("decision.min_improvement", "0")),
        "new_score": num("decision.new_score"),
        "champion_version": None if t.get("decision.champion_version") in (None, "none")
        else t["decision.champion_version"],
        "champion_score": num("decision.champion_score"),
        "eval_images": int(t.get("decision.eval_images", "0")),
        "eval_set_sha": t.get("decision.eval_set_sha", ""),
        "test_scores": json.loads(t.get("decision.test_scores", "{}")),
        "experiment": t.get("experiment"),
        "seen_images_sha": t.get("seen_images.sha", ""),
        "run_id": mv.run_id,
        "tracking_uri": uri,
        "already_registered": True,
    }  # fmt: skip
