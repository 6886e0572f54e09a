"""Moving ``@champion`` with a record: who, when, why — by ``register`` or by a person.

Every move writes, *before* the alias changes, version tags the MLflow UI shows on the version
page (``champion.<action>_by``, ``_at``, ``_reason``) and the registered model's tags
``champion.last_change`` (one readable line) and ``visionops.champion_stack``: the versions that
held ``@champion``, oldest first. ``promote`` pushes a version on the stack; ``rollback`` pops
the current one and gives the alias back to the one below it, so two rollbacks undo two
promotions. A champion set before this record existed starts a stack of one.

``promote`` refuses a version whose ONNX file cannot be downloaded and loaded: a person decides,
but never for a model that cannot serve.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
from datetime import UTC, datetime

from visionops.errors import VisionOpsError

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
STACK_TAG = "visionops.champion_stack"
LAST_CHANGE_TAG = "champion.last_change"
_MAX_STACK = 50


def who() -> str:
    """The person (or scheduler) to credit: ``VISIONOPS_USER``, else the login name."""
    try:
        return os.environ.get("VISIONOPS_USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return f"uid {os.getuid()}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def current_champion(client, name: str):
    """The ModelVersion behind ``@champion``, or None (no model, or no alias yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def champion_stack(client, name: str) -> list[str]:
    """Versions that held ``@champion``, oldest first (the current champion last)."""
    model = client.get_registered_model(name)
    try:
        stack = [str(v) for v in json.loads((model.tags or {}).get(STACK_TAG, "[]"))]
    except (json.JSONDecodeError, TypeError):
        stack = []
    champion = current_champion(client, name)
    if champion is not None and (not stack or stack[-1] != str(champion.version)):
        stack.append(str(champion.version))  # moved by hand in the UI, or before the record
    return stack


def move_champion(client, name: str, version: str, action: str, reason: str) -> dict:
    """Record the move on the version and the model, then point ``@champion`` at ``version``.

    ``action`` is ``register``, ``promote`` or ``rollback``; a rollback pops the stack.
    """
    stack = champion_stack(client, name)
    previous = stack[-1] if stack else None
    if action == "rollback":
        stack.pop()
    elif previous != version:
        stack.append(version)
    user, at = who(), now()
    record = {
        "model_name": name,
        "version": version,
        "previous_champion": previous,
        "action": action,
        "by": user,
        "at": at,
        "reason": reason,
    }
    for key, value in {"by": user, "at": at, "reason": reason}.items():
        client.set_model_version_tag(name, version, f"champion.{action}_{key}", value)
    client.set_registered_model_tag(name, STACK_TAG, json.dumps(stack[-_MAX_STACK:]))
    client.set_registered_model_tag(
        name,
        LAST_CHANGE_TAG,
        f"v{previous or '-'} -> v{version} ({action}) by {user} at {at}: {reason}",
    )
    client.set_registered_model_alias(name, CHAMPION, version)
    log.info("@champion of %s: version %s -> %s (%s by %s)", name, previous, version, action, user)
    return record


def _client(tracking_uri: str | None):
    from mlflow import MlflowClient

    from visionops.registry.model_uri import default_tracking_uri, get_model_version

    store = tracking_uri or default_tracking_uri()
    return MlflowClient(tracking_uri=store, registry_uri=store), store, get_model_version


def _check_loads(name: str, version: str, store: str) -> None:
    from visionops.export.onnx_model import OnnxClassifier
    from visionops.registry.model_uri import resolve_registry_model

    uri = f"models:/{name}/{version}"
    try:
        OnnxClassifier(resolve_registry_model(uri, store).path, source=uri)
    except VisionOpsError as exc:
        raise VisionOpsError(f"{uri} cannot serve, so it is not promoted: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a download or artifact-store failure
        raise VisionOpsError(
            f"{uri}: its model files cannot be fetched ({type(exc).__name__}: {exc}); not promoted"
        ) from None


def promote(name: str, version: str, reason: str, tracking_uri: str | None = None) -> dict:
    """A person gives ``@champion`` to ``models:/<name>/<version>`` (checked to load first)."""
    client, store, get_model_version = _client(tracking_uri)
    get_model_version(f"models:/{name}/{version}", store)  # a clear error when unknown
    _check_loads(name, str(version), store)
    champion = current_champion(client, name)
    if champion is not None and str(champion.version) == str(version):
        raise VisionOpsError(f"models:/{name}/{version} already holds @champion; nothing to do")
    return move_champion(client, name, str(version), "promote", reason)


def rollback(name: str, reason: str, tracking_uri: str | None = None) -> dict:
    """Give ``@champion`` back to the version that held it before the current one."""
    client, store, get_model_version = _client(tracking_uri)
    get_model_version(f"models:/{name}@{CHAMPION}", store)  # a clear error when none
    stack = champion_stack(client, name)
    if len(stack) < 2:
        raise VisionOpsError(
            f"{name}: version {stack[-1]} is the only champion on record; nothing to roll back "
            f"to. Pick a version by hand: `visionops promote {name} <version> --reason ...`"
        )
    target = stack[-2]
    _check_loads(name, target, store)
    return move_champion(client, name, target, "rollback", reason)
