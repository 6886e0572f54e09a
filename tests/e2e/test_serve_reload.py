"""The service follows ``@champion`` in a real MLflow SQLite registry without dropping requests."""

from __future__ import annotations

import threading
import time

import httpx
import mlflow
import pytest
from mlflow import MlflowClient

from tests.e2e.serve_support import image_bytes, live_server, register_version, tiny_cnn
from visionops.serve.app import ServeSettings, create_app
from visionops.serve.holder import ModelHolder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "serve-test-classifier"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One SQLite registry for the module: v1 is champion, v2 is registered but not promoted."""
    tmp_path = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = MlflowClient(uri).create_experiment(
        "serve", artifact_location=(tmp_path / "art").as_uri()
    )
    mlflow.set_experiment(experiment_id=exp)
    v1 = register_version(uri, NAME, tiny_cnn(tmp_path / "v1.onnx", seed=1), alias="champion")
    v2 = register_version(uri, NAME, tiny_cnn(tmp_path / "v2.onnx", seed=2))
    return uri, v1, v2


def test_champion_move_is_picked_up_without_dropping_requests(registry):
    uri, v1, v2 = registry
    holder = ModelHolder(f"models:/{NAME}@champion", tracking_uri=uri)
    app = create_app(holder, ServeSettings(poll_seconds=0.5))
    jpeg = image_bytes()
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    with live_server(app) as url:
        assert httpx.get(f"{url}/health").json()["version"] == v1

        def hammer() -> None:
            with httpx.Client(base_url=url, timeout=10) as client:
                while not stop.is_set():
                    r = client.post("/predict", files=[("files", ("a.jpg", jpeg, "image/jpeg"))])
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        versions.append(r.json()["model"]["version"])

        clients = [threading.Thread(target=hammer) for _ in range(3)]
        for t in clients:
            t.start()
        try:
            time.sleep(0.3)
            MlflowClient(uri, uri).set_registered_model_alias(NAME, "champion", v2)
            deadline = time.monotonic() + 30
            while httpx.get(f"{url}/health").json()["version"] != v2:
                assert time.monotonic() < deadline, "the service never picked up version 2"
                time.sleep(0.1)
            time.sleep(0.3)  # keep requests flowing after the swap too
        finally:
            stop.set()
            for t in clients:
                t.join()
        health = httpx.get(f"{url}/health").json()

    assert health["reload_error"] is None and health["follows_alias"] is True
    assert statuses and set(statuses) == {200}, f"{statuses.count(200)} of {len(statuses)} ok"
    assert versions[0] == v1 and versions[-1] == v2


def test_registry_failure_keeps_serving(registry):
    uri, v1, v2 = registry
    client = MlflowClient(uri, uri)
    client.set_registered_model_alias(NAME, "champion", v1)
    holder = ModelHolder(f"models:/{NAME}@champion", tracking_uri=uri)
    client.delete_registered_model_alias(NAME, "champion")
    try:
        assert holder.refresh() is False
        assert "not found" in holder.last_error
        assert holder.current.model_version == v1  # still serving the last good version
    finally:
        client.set_registered_model_alias(NAME, "champion", v2)
    assert holder.refresh() is True and holder.last_error is None
    assert holder.current.model_version == v2
