"""Where a registered version came from (``visionops lineage <models:/...>`` prints it).

Commit, data version, params hash, decision and ``dvc.lock`` hashes come from the version's
record (its tags over ``visionops_record.json``: :mod:`visionops.registry.version_record`);
params and metrics from the MLflow run the model was logged to.
"""

from __future__ import annotations

from datetime import UTC, datetime

from visionops.registry.model_uri import default_tracking_uri, get_model_version
from visionops.registry.version_record import read_record


def describe(model_uri: str, tracking_uri: str | None = None) -> dict:
    """Everything known about one registered version (JSON-able)."""
    store = tracking_uri or default_tracking_uri()
    client, mv = get_model_version(model_uri, store)
    tags = read_record(client, mv, store)
    out = {
        "model_uri": model_uri,
        "name": mv.name,
        "version": str(mv.version),
        "aliases": list(getattr(mv, "aliases", []) or []),
        "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat()
        if mv.creation_timestamp
        else None,
        "source": mv.source,
        "run_id": mv.run_id,
        "git_commit": tags.get("git_commit"),
        "data_version": tags.get("data_version"),
        "params_hash": tags.get("params_hash"),
        "decision": {
            k.removeprefix("decision").lstrip(".") or "alias": v
            for k, v in tags.items()
            if k.startswith("decision")
        },
        "test_metrics": {
            k.removeprefix("test."): v for k, v in tags.items() if k.startswith("test.")
        },
        "parity": {
            k.removeprefix("parity."): v for k, v in tags.items() if k.startswith("parity.")
        },
        "dvc_lock": {k.removeprefix("dvc."): v for k, v in tags.items() if k.startswith("dvc.")},
        "params": {},
        "metrics": {},
        "tracking_uri": store,
    }
    if mv.run_id:
        run = client.get_run(mv.run_id)
        out["experiment_id"] = run.info.experiment_id
        out["run_name"] = run.info.run_name
        out["params"] = dict(sorted(run.data.params.items()))
        out["metrics"] = dict(sorted(run.data.metrics.items()))
    return out
