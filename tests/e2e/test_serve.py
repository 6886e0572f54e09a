"""``visionops serve`` over real HTTP: endpoints, every bad-input case, the token, the timeout.

A real uvicorn server on a free loopback port runs a tiny real ONNX CNN through the real
Predictor (ONNX Runtime). Limits are shrunk so the cases stay small and fast.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.e2e.serve_support import LABELS, free_port, image_bytes, live_server, tiny_cnn
from visionops.inference import Predictor
from visionops.serve.app import ServeSettings, create_app
from visionops.serve.holder import ModelHolder

pytestmark = pytest.mark.e2e

LIMITS = ServeSettings(max_upload_mb=0.25, max_files=3, timeout_seconds=5, max_pixels=200_000)
JPEG = image_bytes("JPEG", seed=1)
PNG = image_bytes("PNG", seed=2)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb stays this small)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return tiny_cnn(tmp_path_factory.mktemp("serve") / "tiny.onnx")


@pytest.fixture(scope="module")
def server(model_path):
    app = create_app(ModelHolder(str(model_path)), LIMITS)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client
        assert client.get("/health").status_code == 200  # still alive after everything


def post(client: httpx.Client, *files: tuple[str, bytes, str], **kw) -> httpx.Response:
    return client.post("/predict", files=[("files", f) for f in files], **kw)


def test_health_and_metadata(server, model_path):
    health = server.get("/health").json()
    assert health["status"] == "ok"
    assert health["model"] == "tiny" and health["provider"] == "CPUExecutionProvider"
    meta = server.get("/metadata").json()
    assert meta["labels"] == LABELS
    assert meta["input"]["image_size"] == 32 and meta["input"]["resize"] == 36
    assert meta["limits"]["max_files"] == 3 and meta["auth_required"] is False


def test_predict_one_and_several(server):
    r = post(server, ("a.jpg", JPEG, "image/jpeg"))
    assert r.status_code == 200, r.text
    body = r.json()
    [pred] = body["predictions"]
    assert pred["filename"] == "a.jpg" and pred["label"] in LABELS and pred["error"] is None
    assert len(pred["top_k"]) == 3
    assert abs(sum(t["probability"] for t in pred["top_k"]) - 1) < 1e-4
    assert body["model"]["name"] == "tiny" and body["latency_ms"] > 0

    r = post(
        server, ("a.jpg", JPEG, "image/jpeg"), ("b.png", PNG, "image/png"), params={"top_k": 2}
    )
    assert r.status_code == 200
    assert [p["filename"] for p in r.json()["predictions"]] == ["a.jpg", "b.png"]
    assert all(len(p["top_k"]) == 2 for p in r.json()["predictions"])


def test_raw_image_body(server):
    r = server.post("/predict", content=PNG, headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] in LABELS


def test_mixed_batch_reports_per_file_errors(server):
    r = post(server, ("good.jpg", JPEG, "image/jpeg"), ("notes.txt", b"hello", "text/plain"))
    assert r.status_code == 200
    good, bad = r.json()["predictions"]
    assert good["status"] == 200 and good["label"] in LABELS
    assert bad["status"] == 415 and "not an image" in bad["error"]


BOMB = png_header(100_000, 100_000)  # 1e10 pixels: Pillow's own bomb check fires
OVER_LIMIT = png_header(1000, 1000)  # 1e6 pixels > LIMITS.max_pixels, header only


def truncated_jpeg() -> bytes:
    big = image_bytes("JPEG", size=(300, 200), seed=3)
    return big[: len(big) // 2]


@pytest.mark.parametrize(
    ("name", "data", "status", "message"),
    [
        ("notes.txt", b"just some text, not pixels", 415, "not an image"),
        ("empty.jpg", b"", 415, "empty file"),
        ("script.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "not an image"),
        ("header.jpg", JPEG[:200], 422, "corrupt"),
        ("half.jpg", truncated_jpeg(), 422, "unusable image"),
        ("bomb.png", BOMB, 422, "decompression-bomb"),
        ("big.png", OVER_LIMIT, 422, "1000x1000 is over the 200,000-pixel limit"),
    ],
)
def test_bad_image_is_refused_with_a_clear_message(server, name, data, status, message):
    r = post(server, (name, data, "application/octet-stream"))
    assert r.status_code == status, r.text
    assert message in r.json()["detail"] and r.json()["detail"].startswith(name)


def test_upload_over_the_size_limit_is_413(server):
    big = os.urandom(400 * 1024)  # > 0.25 MB
    r = post(server, ("big.jpg", big, "image/jpeg"))
    assert r.status_code == 413 and "upload too large" in r.json()["detail"]


def test_size_limit_holds_without_content_length(server):
    """Chunked upload: counted while it streams in, refused once past the limit."""

    def body():
        yield b"--xx\r\nContent-Disposition: form-data; name=files; filename=a.jpg\r\n\r\n"
        for _ in range(64):
            yield b"\0" * 16384  # 1 MiB in total, never declared up front

    r = server.post(
        "/predict", content=body(), headers={"content-type": "multipart/form-data; boundary=xx"}
    )
    assert r.status_code == 413 and "max_upload_mb" in r.json()["detail"]


def test_too_many_files_is_413(server):
    r = post(server, *[(f"{i}.jpg", JPEG, "image/jpeg") for i in range(4)])
    assert r.status_code == 413 and "at most 3" in r.json()["detail"]


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"json": {"image": "base64?"}}, 415, "unsupported content type"),
        ({"data": {"comment": "no file"}, "files": {"x": ("", b"", "")}}, 400, "no file"),
        (
            {"content": b"garbage", "headers": {"content-type": "multipart/form-data"}},
            400,
            "malformed multipart",
        ),
    ],
)
def test_malformed_requests(server, kwargs, status, message):
    r = server.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_bad_top_k_is_422(server):
    assert post(server, ("a.jpg", JPEG, "image/jpeg"), params={"top_k": 0}).status_code == 422


def test_page_is_self_contained(server):
    html = server.get("/").text
    assert 'id="file"' in html and "/predict" in html
    for needle in ('src="http', "src='http", 'href="http', "@import", "//cdn"):
        assert needle not in html
    assert server.get("/docs").status_code == 404  # Swagger UI would need a CDN


def test_token_required_on_predict_when_set(model_path):
    settings = ServeSettings(token="s3cret")
    with live_server(create_app(ModelHolder(str(model_path)), settings)) as url:
        files = [("files", ("a.jpg", JPEG, "image/jpeg"))]
        assert httpx.post(f"{url}/predict", files=files).status_code == 401
        wrong = httpx.post(f"{url}/predict", files=files, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = httpx.post(f"{url}/predict", files=files, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200  # only /predict is guarded
        assert httpx.get(f"{url}/metadata").json()["auth_required"] is True


class SlowPredictor(Predictor):
    """The real predictor, made slow on demand (a stand-in for an overloaded machine)."""

    delay = 0.0

    def predict_arrays(self, batch):
        self.batch_sizes = [*getattr(self, "batch_sizes", []), len(batch)]
        time.sleep(self.delay)
        return super().predict_arrays(batch)


def test_slow_inference_times_out_with_504(model_path):
    holder = ModelHolder(str(model_path), factory=lambda m, uri: SlowPredictor(m, uri))
    settings = ServeSettings(timeout_seconds=0.3, infer_workers=1)
    with live_server(create_app(holder, settings)) as url:
        holder.current.delay = 1.0
        r = httpx.post(f"{url}/predict", files=[("files", ("a.jpg", JPEG, "image/jpeg"))])
        assert r.status_code == 504 and "timeout_seconds" in r.json()["detail"]
        holder.current.delay = 0.0
        time.sleep(0.8)  # the abandoned job finishes; the service carries on
        ok = httpx.post(f"{url}/predict", files=[("files", ("a.jpg", JPEG, "image/jpeg"))])
        assert ok.status_code == 200


def test_cli_serves_and_stops_cleanly(tmp_path, model_path):
    """`visionops serve` end to end: binds 127.0.0.1, answers, exits 0 on SIGINT; no torch."""
    port = free_port()
    (tmp_path / "params.yaml").write_text("serve:\n  poll_seconds: 5\n")
    code = (
        "import sys\n"
        "from visionops.cli import main\n"
        "rc = main(['serve', '--model', sys.argv[1], '--port', sys.argv[2],\n"
        "           '--precision', 'fp32'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported by the serving path'\n"
        "sys.exit(rc)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(model_path), str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.2)
        assert health["model"] == "tiny" and health["precision"] == "fp32"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "on http://127.0.0.1:" in out


def test_cli_reports_a_missing_model(tmp_path):
    (tmp_path / "params.yaml").write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "visionops.cli", "serve", "--model", "nope.onnx"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: nope.onnx: no such model file"), proc.stderr


def test_image_helpers_are_real_images():
    assert Image.open(io.BytesIO(JPEG)).format == "JPEG"
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(BOMB))


def test_micro_batching_returns_each_request_its_own_answers(model_path):
    """Concurrent requests merged into shared runs still get exactly their own results."""
    from concurrent.futures import ThreadPoolExecutor

    images = [image_bytes("JPEG", seed=s) for s in range(12)]
    expected = [p.top_k for p in Predictor(model_path).predict(images, top_k=3)]
    settings = ServeSettings(micro_batch=True, infer_workers=1, max_batch=5)
    holder = ModelHolder(str(model_path), factory=lambda m, uri: SlowPredictor(m, uri))
    holder.current.delay = 0.2  # so requests queue up behind the busy worker
    with live_server(create_app(holder, settings)) as url:

        def ask(i: int) -> httpx.Response:
            files = [("files", (f"{i}.jpg", images[i], "image/jpeg"))]
            if i % 4 == 0:  # a few two-file requests, and a bad file in the mix
                files.append(("files", (f"{i}.txt", b"text", "text/plain")))
            return httpx.post(f"{url}/predict", files=files, params={"top_k": 1 + i % 3})

        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(ask, range(12)))
    assert max(holder.current.batch_sizes) > 1, holder.current.batch_sizes  # merges happened
    assert max(holder.current.batch_sizes) <= 5
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        rows = r.json()["predictions"]
        assert len(rows) == (2 if i % 4 == 0 else 1) and rows[0]["filename"] == f"{i}.jpg"
        got = [(t["label"], t["probability"]) for t in rows[0]["top_k"]]
        want = expected[i][: 1 + i % 3]
        assert [g[0] for g in got] == [w[0] for w in want]
        assert all(abs(g[1] - w[1]) < 1e-5 for g, w in zip(got, want, strict=True))
        if i % 4 == 0:
            assert rows[1]["status"] == 415
