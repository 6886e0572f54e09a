"""Helpers for the serve tests: a tiny real ONNX CNN, a real MLflow SQLite registry, a live server.

No torch: the model is built with ``onnx.helper`` (Conv -> Relu -> GlobalAveragePool -> Gemm), has
the ``input``/``logits`` names, a dynamic batch and visionops metadata, and runs in ONNX Runtime.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from visionops.export.onnx_meta import build_metadata
from visionops.images import PreprocessSpec

LABELS = ["boot", "coat", "dress"]
SPEC = PreprocessSpec(image_size=32, resize=36)


def tiny_cnn(path: Path, labels: list[str] = LABELS, seed: int = 0) -> Path:
    """Write a seeded 3x3-conv classifier for ``labels`` with visionops metadata."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 1.0, (n, 8)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, n).astype(np.float32), "b2"),
    ]
    size = SPEC.image_size
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1),
        ],
        "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, build_metadata(labels, SPEC, "tiny-cnn", seed=seed))
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def register_version(
    tracking_uri: str, name: str, onnx_path: Path, alias: str | None = None
) -> str:
    """Log ``onnx_path`` with mlflow.onnx in a new run, register it, optionally set ``alias``."""
    import mlflow
    import mlflow.onnx
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with mlflow.start_run():
        info = mlflow.onnx.log_model(
            onnx.load(str(onnx_path)),
            name="model",
            registered_model_name=name,
            pip_requirements=["onnxruntime"],  # skips requirement inference (~10 s)
        )
    version = str(info.registered_model_version)
    if alias:
        MlflowClient(tracking_uri, tracking_uri).set_registered_model_alias(name, alias, version)
    return version


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app, port: int | None = None):
    """Run ``app`` in a thread on 127.0.0.1 with the server ``visionops serve`` uses (uvicorn +
    the connection deadlines of ``app.state.settings``); yields the base URL."""
    from visionops.serve.app import ServeSettings
    from visionops.serve.connections import raise_fd_limit, uvicorn_server

    raise_fd_limit()
    settings = getattr(app.state, "settings", None) or ServeSettings()
    port = port or free_port()
    server = uvicorn_server(
        app, "127.0.0.1", port, settings.header_timeout_seconds, settings.keep_alive_seconds
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def multipart(
    files: list[tuple[str, bytes]], boundary: str = "visionops-test"
) -> tuple[str, bytes]:
    """(content type, body) of a multipart/form-data upload of ``files`` in the field ``files``."""
    parts = []
    for name, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    return f"multipart/form-data; boundary={boundary}", b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode()


class RawClient:
    """One kept-alive HTTP/1.1 connection over asyncio streams: cheap enough to run hundreds at
    once in a test, and a reset shows up as the ``ConnectionError`` it is."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader = self.writer = None

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        import asyncio

        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("connection closed before a response")
        status = int(status_line.split()[1])
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", 0))
        data = await self.reader.readexactly(length) if method != "HEAD" else b""
        if headers.get("connection") == "close":
            await self.close()
        return status, headers, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None
