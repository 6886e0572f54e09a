"""``visionops serve`` against hostile and overloaded clients (issue 12), over real sockets.

A real uvicorn server (the one ``visionops serve`` builds, with its connection deadlines) on a
free loopback port runs a tiny real ONNX CNN through the real Predictor. Timeouts and limits are
shrunk so each case takes seconds.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.serve_support import (
    RawClient,
    image_bytes,
    live_server,
    multipart,
    tiny_cnn,
)
from visionops.inference import Predictor
from visionops.serve.app import ServeSettings, create_app
from visionops.serve.connections import GuardedHttpToolsProtocol
from visionops.serve.holder import ModelHolder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JPEG = image_bytes("JPEG", seed=1)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return tiny_cnn(tmp_path_factory.mktemp("hostile") / "tiny.onnx")


class SlowPredictor(Predictor):
    """The real predictor whose model run takes at least ``delay`` seconds (a busy machine)."""

    delay = 0.0

    def predict_arrays(self, batch):
        time.sleep(self.delay)
        return super().predict_arrays(batch)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _closed_by_server(sock: socket.socket) -> bytes | None:
    """What the server sent before closing (b"" for a silent close), None while still open."""
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return None
    except ConnectionResetError:
        return b"<reset>"
    if not data:
        return b""
    rest = b""
    while True:  # a 408 is followed by the close
        try:
            chunk = sock.recv(4096)
        except (BlockingIOError, ConnectionResetError):
            break
        if not chunk:
            break
        rest += chunk
    return data + rest


def test_idle_and_half_sent_sockets_neither_block_nor_linger(model_path):
    """300 silent + 300 half-header sockets: /health answers within 1 s, /predict is served,
    and the server closes every one of them within its header timeout (408 for the half ones)."""
    timeout = 2.0
    settings = ServeSettings(header_timeout_seconds=timeout, keep_alive_seconds=2)
    app = create_app(ModelHolder(str(model_path)), settings)
    with live_server(app) as url:
        port = _port(url)
        opened = time.monotonic()
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        half = []
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multip")
            half.append(s)
        for s in idle + half:
            s.setblocking(False)
        try:
            t0 = time.monotonic()
            health = httpx.get(f"{url}/health", timeout=5)
            assert health.status_code == 200 and time.monotonic() - t0 < 1.0
            assert httpx.head(f"{url}/health", timeout=5).status_code == 200
            files = [("files", ("a.jpg", JPEG, "image/jpeg"))]
            assert httpx.post(f"{url}/predict", files=files, timeout=5).status_code == 200

            closed: dict[int, tuple[float, bytes]] = {}
            while len(closed) < 600 and time.monotonic() - opened < timeout + 3:
                for i, s in enumerate(idle + half):
                    if i not in closed and (got := _closed_by_server(s)) is not None:
                        closed[i] = (time.monotonic() - opened, got)
                time.sleep(0.05)
        finally:
            for s in idle + half:
                s.close()
    assert len(closed) == 600, f"{600 - len(closed)} sockets still open after {timeout + 3} s"
    assert max(t for t, _ in closed.values()) < timeout + 1.5
    assert all(got == b"" for i, (_, got) in closed.items() if i < 300)  # silent: just closed
    assert all(got.startswith(b"HTTP/1.1 408") for i, (_, got) in closed.items() if i >= 300)


def test_kept_alive_connection_closes_after_its_idle_timeout(model_path):
    settings = ServeSettings(header_timeout_seconds=5, keep_alive_seconds=1)
    with live_server(create_app(ModelHolder(str(model_path)), settings)) as url:
        s = socket.create_connection(("127.0.0.1", _port(url)))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(4)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += s.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += s.recv(65536)
        assert head.startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert s.recv(1) == b""  # closed by the server
        assert time.monotonic() - t0 < 2.5
        s.close()


async def _overload(port: int, clients: int, seconds: float) -> tuple[dict, list, list]:
    """``clients`` kept-alive connections POSTing one image each, back to back, while a probe
    asks /health every 50 ms: (status counts, transport errors, /health (status, seconds))."""
    ctype, body = multipart([("a.jpg", JPEG)])
    counts: dict = {}
    errors: list = []
    probes: list = []
    stop = time.monotonic() + seconds

    async def client() -> None:
        conn = RawClient(port)
        try:
            while time.monotonic() < stop:
                try:
                    status, headers, _ = await conn.request("POST", "/predict", body, ctype)
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    errors.append(repr(exc))
                    await conn.close()
                    continue
                counts[status] = counts.get(status, 0) + 1
                if status == 503:
                    assert headers["retry-after"] == "1"
                    await asyncio.sleep(0.2)
        finally:
            await conn.close()

    async def probe() -> None:
        while time.monotonic() < stop:
            conn = RawClient(port)
            t0 = time.monotonic()
            status, _, _ = await conn.request("GET", "/health")
            probes.append((status, time.monotonic() - t0))
            await conn.close()
            await asyncio.sleep(0.05)

    await asyncio.gather(probe(), *(client() for _ in range(clients)))
    return counts, errors, probes


def test_overload_gets_503_fast_and_health_stays_green(model_path):
    """300 concurrent clients on a slow model: /predict answers 200 or 503 (+ Retry-After),
    never a reset; /health is 200 on every probe, each within 1 s."""
    holder = ModelHolder(str(model_path), factory=lambda m, uri: SlowPredictor(m, uri))
    holder.current.delay = 0.02
    settings = ServeSettings(max_queue=16, infer_workers=2)
    with live_server(create_app(holder, settings)) as url:
        counts, errors, probes = asyncio.run(_overload(_port(url), 300, 4.0))
        load = httpx.get(f"{url}/health").json()["load"]
    assert not errors, errors[:3]
    assert set(counts) <= {200, 503} and counts.get(200, 0) > 20 and counts.get(503, 0) > 0
    assert probes and all(status == 200 for status, _ in probes), probes
    assert max(seconds for _, seconds in probes) < 1.0, sorted(s for _, s in probes)[-5:]
    assert load["in_flight"] == 0 and load["refused_busy"] >= counts[503]


def png_header(width: int, height: int) -> bytes:
    """A real PNG header claiming width x height (nothing beyond the header is read)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def big_jpeg(width: int, height: int) -> bytes:
    """A smooth (so small) JPEG of width x height."""
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                    (x + y) / 2], axis=2).astype(np.uint8)  # fmt: skip
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def test_pixel_budget_counts_what_is_decoded(model_path):
    """Two 600x500 PNGs (600,000 px) are over a 500,000-px budget: 413. A 4000x3000 JPEG (12 Mpx
    in the file) decodes at 1/8 scale (187,500 px), so it is within it and classified."""
    settings = ServeSettings(max_request_pixels=500_000)
    with live_server(create_app(ModelHolder(str(model_path)), settings)) as url:
        pngs = [("files", (f"{i}.png", png_header(600, 500), "image/png")) for i in range(2)]
        r = httpx.post(f"{url}/predict", files=pngs)
        assert r.status_code == 413, r.text
        assert "600,000 pixels" in r.json()["detail"] and "max_request_pixels" in r.json()["detail"]
        big = [("files", ("big.jpg", big_jpeg(4000, 3000), "image/jpeg"))]
        r = httpx.post(f"{url}/predict", files=big, timeout=20)
        assert r.status_code == 200, r.text


def _smooth_png(size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def test_deadline_gives_504_and_stops_the_work(model_path):
    """12 large PNGs take ~1 s of CPU to decode; with a 0.25 s deadline the client gets a 504
    and the server stops within about one file: far less CPU is spent than the full request
    (benchmarks/hostile.py, Lite1: 1.18 s of CPU in full, 0.18 s when cut at 0.3 s)."""
    files = [("files", (f"{i}.png", _smooth_png(1800, i), "image/png")) for i in range(12)]
    holder = ModelHolder(str(model_path))

    def cpu_for(settings: ServeSettings) -> tuple[int, float]:
        with live_server(create_app(holder, settings)) as url:
            start = time.process_time()
            r = httpx.post(f"{url}/predict", files=files, timeout=60)
            time.sleep(1.0)  # whatever the server still does for it happens now
            return r.status_code, time.process_time() - start

    big = dict(max_upload_mb=40, max_files=12, max_request_pixels=10**9)
    status, full = cpu_for(ServeSettings(timeout_seconds=60, **big))
    assert status == 200
    status, cut = cpu_for(ServeSettings(timeout_seconds=0.25, **big))
    assert status == 504
    assert cut < 0.5 * full, f"504 request used {cut:.2f} s of CPU, the full one {full:.2f} s"


def test_hardening_headers_paths_and_small_images(model_path):
    settings = ServeSettings(min_side=32)
    with live_server(create_app(ModelHolder(str(model_path)), settings)) as url:
        assert httpx.get(f"{url}/openapi.json").status_code == 404
        page = httpx.get(f"{url}/")
        csp = page.headers["content-security-policy"]
        assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp
        assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
        for r in (page, httpx.get(f"{url}/health"), httpx.get(f"{url}/metadata")):
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["x-frame-options"] == "DENY"
        assert (
            httpx.get(f"{url}/health")
            .headers["content-security-policy"]
            .startswith("default-src 'none'")
        )
        head = httpx.head(f"{url}/health")
        assert head.status_code == 200 and head.content == b""

        ok = httpx.post(f"{url}/predict", files=[("files", ("a.jpg", JPEG, "image/jpeg"))])
        health = httpx.get(f"{url}/health")
        texts = [health.text, httpx.get(f"{url}/metadata").text, ok.text]
        assert all(str(model_path.parent) not in text for text in texts)
        assert (
            health.json()["source"] == "tiny.onnx" and ok.json()["model"]["source"] == "tiny.onnx"
        )

        small = image_bytes("PNG", size=(40, 20), seed=3)  # 20 < min_side 32
        r = httpx.post(f"{url}/predict", files=[("files", ("small.png", small, "image/png"))])
        assert r.status_code == 422
        assert r.json()["detail"] == "small.png: too small: 40x20 < validate.min_side 32"


def test_uvicorn_still_calls_the_hooks_the_deadlines_use():
    """The connection deadlines override uvicorn's httptools callbacks: fail loudly if an
    upgrade renames them (the tests above would then hang or pass by accident)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    for hook in (
        "connection_made",
        "connection_lost",
        "on_message_begin",
        "on_headers_complete",
        "on_message_complete",
        "on_response_complete",
    ):
        assert callable(getattr(HttpToolsProtocol, hook, None)), hook
        assert hook in vars(GuardedHttpToolsProtocol), hook


def test_precision_picks_the_int8_file_and_says_so(model_path, tmp_path):
    """`--precision` reaches the Predictor: int8 serves the model's int8 sibling, fp32 the file
    itself; /health and /predict say which (file name only)."""
    import onnx

    from visionops.export.quantize import quantize_int8

    fp32 = tmp_path / "tiny.onnx"
    fp32.write_bytes(model_path.read_bytes())
    meta = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    calibration = np.random.default_rng(0).normal(0, 1, (16, 3, 32, 32)).astype(np.float32)
    quantize_int8(fp32, tmp_path / "tiny.int8.onnx", calibration, meta)
    for precision, file in (("int8", "tiny.int8.onnx"), ("fp32", "tiny.onnx")):
        holder = ModelHolder(str(fp32), precision=precision)
        with live_server(create_app(holder, ServeSettings())) as url:
            health = httpx.get(f"{url}/health").json()
            files = [("files", ("a.jpg", JPEG, "image/jpeg"))]
            answer = httpx.post(f"{url}/predict", files=files).json()
        assert (health["precision"], health["model_file"]) == (precision, file)
        assert answer["model"]["precision"] == precision
