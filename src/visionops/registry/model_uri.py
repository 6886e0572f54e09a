"""The MLflow Model Registry side of inference: ``models:/`` URIs to local ``.onnx`` files.

MLflow is imported lazily, only when a registry URI is actually resolved; plain ``.onnx`` files
never touch it. Torch-free.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from visionops.errors import VisionOpsError
from visionops.export.int8_files import INT8_FILE

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


def default_tracking_uri(params: Path | str = "params.yaml") -> str:
    """``MLFLOW_TRACKING_URI``, else the project's store from ``params.yaml`` in the cwd, else
    ``mlruns/mlflow.db`` under the cwd (the project default)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if Path(params).exists():
        from visionops.config import load_config
        from visionops.tracking import tracking_uri

        return tracking_uri(load_config(params))
    return "sqlite:///" + str(Path("mlruns/mlflow.db").resolve())


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` -> (name, alias, None); ``models:/name/3`` -> (name, None, "3")."""
    match = _MODEL_URI.match(uri)
    if not match:
        raise VisionOpsError(
            f"{uri!r} is not a model reference; use a .onnx file, models:/<name>@<alias> "
            "or models:/<name>/<version>"
        )
    return match["name"], match["alias"], match["version"]


@dataclass(frozen=True)
class RegistryModel:
    """A registered model version resolved to local files: ``path`` is the fp32 ``model.onnx``,
    ``int8_path`` its ``model.int8.onnx`` when the version holds one (tag ``int8``)."""

    path: Path
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]
    aliases: list[str]
    int8_path: Path | None = None


def get_model_version(uri: str, tracking_uri: str | None = None):
    """(MlflowClient, ModelVersion) for a ``models:/`` URI; VisionOpsError when it is unknown."""
    name, alias, version = parse_model_uri(uri)
    store = tracking_uri or default_tracking_uri()
    db = store.removeprefix("sqlite:///")
    if store.startswith("sqlite:///") and not Path(db).is_file():  # never create an empty store
        raise VisionOpsError(
            f"{uri}: no MLflow store at {db}; run from the project folder (where mlruns/ is) "
            "or pass --tracking-uri"
        )
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    try:
        if alias is not None:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            mv = client.get_model_version(name, version)
    except MlflowException as exc:
        first = str(exc.message if hasattr(exc, "message") else exc).splitlines()[0]
        raise VisionOpsError(
            f"{uri}: not found in the MLflow registry at {store} ({first}); run `visionops "
            "register` first, or pass --tracking-uri for another store"
        ) from None
    return client, mv


def resolve_registry_model(uri: str, tracking_uri: str | None = None, dst: Path | None = None):
    """Download (or locate, for a local store) the ``.onnx`` files of a registered version."""
    import mlflow.artifacts

    client, mv = get_model_version(uri, tracking_uri)
    store = tracking_uri or default_tracking_uri()
    location = client.get_model_version_download_uri(mv.name, mv.version)
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=location,
            dst_path=None if dst is None else str(dst),
            tracking_uri=store,
            registry_uri=store,
        )
    )
    files = [local] if local.suffix == ".onnx" else sorted(local.rglob("*.onnx"))
    # By name, not by order: a version may hold model.onnx and model.int8.onnx.
    fp32 = [f for f in files if f.name == "model.onnx"] or [
        f for f in files if not f.name.endswith(".int8.onnx")
    ]
    if not fp32:
        raise VisionOpsError(
            f"{uri}: version {mv.version} holds no .onnx file under {location}; "
            "was it logged with mlflow.onnx (visionops register)?"
        )
    return RegistryModel(
        path=fp32[0],
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id,
        tags=dict(mv.tags or {}),
        aliases=list(getattr(mv, "aliases", []) or []),
        int8_path=next((f for f in files if f.name == INT8_FILE), None),
    )
