"""Finish what an interrupted ``register`` left: every version ends with a decision.

``register`` creates a version with its decision and ``decision.state = pending`` in one
call, moves the alias, then sets ``decision.state = done``. A kill in between leaves a pending
version; a kill inside MLflow's own registration (or a register before this scheme) can leave a
version without any ``decision`` tag. The next ``register`` calls :func:`finish_interrupted`
first, which

* applies a pending ``champion`` decision if ``@champion`` is still the version it was compared
  with, else marks it ``abandoned`` (the comparison is stale) and says how to decide by hand;
* applies a pending ``challenger`` decision unless a newer version already holds
  ``@challenger``;
* marks a version with no decision ``abandoned``.
"""

from __future__ import annotations

import logging

from visionops.registry.champion import CHALLENGER, CHAMPION, current_champion, move_champion
from visionops.registry.version_record import read_record

log = logging.getLogger(__name__)

PENDING, DONE, ABANDONED = "pending", "done", "abandoned"


def _alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _abandon(client, name: str, version: str, why: str) -> str:
    client.set_model_version_tag(name, version, "decision.state", ABANDONED)
    client.set_model_version_tag(name, version, "decision.abandoned_reason", why)
    if "decision" not in (client.get_model_version(name, version).tags or {}):
        client.set_model_version_tag(name, version, "decision", ABANDONED)
    return f"version {version}: abandoned ({why})"


def _finish_one(client, name: str, mv, tracking_uri: str) -> str | None:
    tags, version = dict(mv.tags or {}), str(mv.version)
    hint = f"decide by hand with `visionops promote {name} {version} --reason ...`"
    if "decision" not in tags:
        return _abandon(client, name, version, f"register stopped before deciding; {hint}")
    if tags.get("decision.state") != PENDING:
        return None
    tags = read_record(client, mv, tracking_uri)  # the decision's numbers live in the record
    decision = tags["decision"]
    if decision == CHAMPION:
        champion = current_champion(client, name)
        now = "none" if champion is None else str(champion.version)
        if now != tags.get("decision.champion_version", "none"):
            return _abandon(
                client,
                name,
                version,
                f"@champion moved to {now} since it was compared with "
                f"{tags.get('decision.champion_version')}; {hint}",
            )
        move_champion(
            client,
            name,
            version,
            "register",
            f"{tags.get('decision.reason', '')} (completed after an interrupted register)",
        )
    elif decision == CHALLENGER:
        holder = _alias_version(client, name, CHALLENGER)
        if holder is None or int(holder) < int(version):
            client.set_registered_model_alias(name, CHALLENGER, version)
    client.set_model_version_tag(name, version, "decision.state", DONE)
    return f"version {version}: interrupted @{decision} decision completed"


def finish_interrupted(client, name: str, tracking_uri: str) -> list[str]:
    """Complete or abandon every undecided version of ``name``; one line per version touched."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    done = []
    for mv in sorted(versions, key=lambda v: int(v.version)):
        line = _finish_one(client, name, mv, tracking_uri)
        if line:
            log.warning("%s: %s", name, line)
            done.append(line)
    return done
