"""``visionops serve`` under the hostile traffic of issue 12, measured on a real model.

    python benchmarks/hostile.py --model benchmarks/results/lite1-champion.onnx [--precision int8]
    python benchmarks/hostile.py --model M --only sockets,memory     # some of the cases
    python benchmarks/hostile.py --model M --server uvicorn-h11      # the pre-issue-12 server

Cases (each against a fresh server from ``serve_variants.py``, limits from ``--params``):

sockets   300 silent + 300 half-header sockets: /health latency while they are open, one
          /predict, and when the server closed them (seconds after they opened).
memory    10 concurrent requests of nine 8000x8000 JPEGs (~1 MB each, like the issue's 9.4 MB
          request): their latencies and statuses, the server's CPU, peak resident memory
          (sampled every 0.1 s) and memory afterwards; then one photo sent 1 s after two more
          such requests (its latency: head-of-line waiting).
overload  300 closed-loop clients for 15 s (aiohttp): status counts, transport errors (resets),
          and a /health probe every 0.1 s (status, p50 / max latency).
deadline  twelve 1800x1800 PNGs in one request (~1 s of decoding), once with a 60 s deadline
          and once with 0.3 s: status and the server CPU spent on each (measured 3 s after).
draft     (no server) every 15th sample photo blown up 4x, 8x and 40x (at most 80 Mpx): the model's
          probabilities with draft decoding (what serve, evaluate and export use) vs every
          pixel decoded: |delta prob| p50 / p95 / max, top-1 agreement, decode CPU per image.

JSON: benchmarks/results/hostile-*.json. Results: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import RESULTS, SAMPLE, cpu_seconds, parse_set, rss_bytes, start_server  # noqa: E402


def _photo_jpeg(size: int, max_bytes: int = 1_080_000) -> bytes:
    """A sample photo blown up to size x size, at the best JPEG quality that fits ``max_bytes``
    (nine fit the 10 MB upload limit, like the issue's 9.4 MB request)."""
    photo = Image.open(sorted(SAMPLE.glob("*/*.jpg"))[0]).convert("RGB")
    big = photo.resize((size, size), Image.Resampling.BILINEAR)
    for quality in (90, 80, 70, 60, 50, 40, 30):
        buf = io.BytesIO()
        big.save(buf, "JPEG", quality=quality)
        if buf.tell() <= max_bytes:
            break
    return buf.getvalue()


def _smooth_png(size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.resize((size, size), Image.Resampling.BILINEAR).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _form(files: list[tuple[str, bytes]]):
    import aiohttp

    form = aiohttp.FormData()
    for name, data in files:
        form.add_field("files", data, filename=name, content_type="application/octet-stream")
    return form


def case_sockets(url: str, pid: int) -> dict:
    import httpx

    port = int(url.rsplit(":", 1)[1])
    opened = time.monotonic()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    half = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multip")
        half.append(s)
    for s in idle + half:
        s.setblocking(False)
    health = []
    for _ in range(3):
        t0 = time.monotonic()
        try:
            status = httpx.get(f"{url}/health", timeout=10).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        health.append((status, round(time.monotonic() - t0, 3)))
    photo = sorted(SAMPLE.glob("*/*.jpg"))[0].read_bytes()
    try:
        predict = httpx.post(
            f"{url}/predict", files=[("files", ("a.jpg", photo, "image/jpeg"))], timeout=10
        ).status_code
    except httpx.HTTPError as exc:
        predict = type(exc).__name__
    closed: dict[int, float] = {}
    while len(closed) < 600 and time.monotonic() - opened < 70:
        for i, s in enumerate(idle + half):
            if i in closed:
                continue
            try:
                data = s.recv(4096)  # a 408 first for the half-sent ones, then end of stream
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                closed[i] = time.monotonic() - opened
        time.sleep(0.1)
    for s in idle + half:
        s.close()
    idle_t = [t for i, t in closed.items() if i < 300]
    half_t = [t for i, t in closed.items() if i >= 300]
    return {
        "health_status_seconds": health,
        "predict_status": predict,
        "idle_closed": len(idle_t),
        "idle_closed_after_s_max": round(max(idle_t), 1) if idle_t else None,
        "half_closed": len(half_t),
        "half_closed_after_s_max": round(max(half_t), 1) if half_t else None,
        "watched_s": round(time.monotonic() - opened, 1),
    }


async def _memory(url: str, pid: int) -> dict:
    import aiohttp

    big = _photo_jpeg(8000)
    small = sorted(SAMPLE.glob("*/*.jpg"))[0].read_bytes()
    rss: list[int] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            rss.append(rss_bytes(pid))
            await asyncio.sleep(0.1)

    async def post(session, files) -> tuple[int | str, float]:
        t0 = time.monotonic()
        try:
            async with session.post("/predict", data=_form(files)) as r:
                await r.read()
                return r.status, round(time.monotonic() - t0, 2)
        except aiohttp.ClientError as exc:
            return type(exc).__name__, round(time.monotonic() - t0, 2)

    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(url, timeout=timeout) as session:
        idle = rss_bytes(pid)
        cpu0 = cpu_seconds(pid)
        sampler = asyncio.create_task(sample())
        bigs = [
            asyncio.create_task(post(session, [(f"{k}-{i}.jpg", big) for i in range(9)]))
            for k in range(10)
        ]
        big_results = await asyncio.gather(*bigs)
        cpu1 = cpu_seconds(pid)
        await asyncio.sleep(2)
        after = rss_bytes(pid)
        done.set()
        await sampler
        # the head-of-line case: one photo sent 1 s after two such requests
        two = [
            asyncio.create_task(post(session, [(f"{k}-{i}.jpg", big) for i in range(9)]))
            for k in range(2)
        ]
        await asyncio.sleep(1.0)
        small_result = await post(session, [("small.jpg", small)])
        await asyncio.gather(*two)
    return {
        "request_mb": round(9 * len(big) / 2**20, 1),
        "big_status_seconds": big_results,
        "small_after_two_big_status_seconds": small_result,
        "server_cpu_s": round(cpu1 - cpu0, 1),
        "rss_idle_mb": round(idle / 2**20),
        "rss_peak_mb": round(max(rss) / 2**20),
        "rss_after_mb": round(after / 2**20),
    }


async def _overload(url: str, clients: int, seconds: float) -> dict:
    import aiohttp

    photos = [p.read_bytes() for p in sorted(SAMPLE.glob("*/*.jpg"))[:32]]
    counts: dict[str, int] = {}
    probes: list[tuple[int | str, float]] = []
    stop = time.monotonic() + seconds

    async def client(session, k: int) -> None:
        while time.monotonic() < stop:
            try:
                form = _form([("a.jpg", photos[k % len(photos)])])
                async with session.post("/predict", data=form) as r:
                    await r.read()
                    key = str(r.status)
                    if r.status == 503 and "retry-after" not in r.headers:
                        key = "503-without-retry-after"
            except (aiohttp.ClientError, TimeoutError) as exc:
                key = type(exc).__name__
            counts[key] = counts.get(key, 0) + 1
            if key == "503":
                await asyncio.sleep(0.5)

    async def probe(session) -> None:
        while time.monotonic() < stop:
            t0 = time.monotonic()
            try:
                async with session.get("/health") as r:
                    await r.read()
                    probes.append((r.status, time.monotonic() - t0))
            except (aiohttp.ClientError, TimeoutError) as exc:
                probes.append((type(exc).__name__, time.monotonic() - t0))
            await asyncio.sleep(0.1)

    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=clients + 10)
    async with aiohttp.ClientSession(url, timeout=timeout, connector=connector) as session:
        await asyncio.gather(probe(session), *(client(session, k) for k in range(clients)))
    lat = sorted(t for _, t in probes)
    return {
        "clients": clients,
        "seconds": seconds,
        "predict_counts": counts,
        "health_probes": len(probes),
        "health_not_200": sum(1 for s, _ in probes if s != 200),
        "health_p50_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
        "health_max_ms": round(1000 * lat[-1], 1) if lat else None,
    }


def case_deadline(model: str, params: str, variant: dict) -> dict:
    import httpx

    from visionops.config import ServeParams

    files = [("files", (f"{i}.png", _smooth_png(1800, i), "image/png")) for i in range(12)]
    out = {}
    for timeout in (60, 0.3):
        extra = {"serve.timeout_seconds": timeout, "serve.max_upload_mb": 40}
        if "max_request_pixels" in ServeParams.model_fields:  # not in the pre-issue-12 code
            extra["serve.max_request_pixels"] = 10**9
        v = {**variant, "set": {**variant.get("set", {}), **extra}}
        proc, url = start_server(model, params, v)
        try:
            cpu0 = cpu_seconds(proc.pid)
            t0 = time.monotonic()
            status = httpx.post(f"{url}/predict", files=files, timeout=120).status_code
            seconds = time.monotonic() - t0
            time.sleep(3)
            out[f"timeout_{timeout:g}s"] = {
                "status": status,
                "answered_after_s": round(seconds, 2),
                "server_cpu_s": round(cpu_seconds(proc.pid) - cpu0, 2),
            }
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return out


def case_draft(model: str, precision: str | None) -> dict:
    from visionops.images import load_and_preprocess, open_image, preprocess
    from visionops.inference import Predictor

    predictor = Predictor(model, precision=precision or "auto")
    spec = predictor.spec
    datas = []
    for path in sorted(SAMPLE.glob("*/*.jpg"))[::15]:
        photo = Image.open(path).convert("RGB")
        for factor in (4, 8, 40):
            factor = min(factor, int((80e6 / (photo.width * photo.height)) ** 0.5))  # bomb guard
            big = photo.resize((photo.width * factor, photo.height * factor), Image.BICUBIC)
            buf = io.BytesIO()
            big.save(buf, "JPEG", quality=90)
            datas.append(buf.getvalue())
    t0 = time.process_time()
    full = np.stack([preprocess(open_image(d), spec) for d in datas])
    t1 = time.process_time()
    draft = np.stack([load_and_preprocess(d, spec) for d in datas])
    t2 = time.process_time()
    p_full, p_draft = predictor.predict_arrays(full), predictor.predict_arrays(draft)
    delta = np.abs(p_full - p_draft).max(axis=1)
    return {
        "images": len(datas),
        "precision": getattr(predictor, "precision", None),
        "delta_prob_p50": round(float(np.median(delta)), 4),
        "delta_prob_p95": round(float(np.percentile(delta, 95)), 4),
        "delta_prob_max": round(float(delta.max()), 4),
        "top1_agreement": float(np.mean(p_full.argmax(1) == p_draft.argmax(1))),
        "decode_cpu_ms_full": round(1000 * (t1 - t0) / len(datas), 1),
        "decode_cpu_ms_draft": round(1000 * (t2 - t1) / len(datas), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--server", default="visionops", help="see serve_variants.py")
    parser.add_argument("--precision", choices=("auto", "fp32", "int8"), default=None)
    parser.add_argument("--set", action="append", default=[], metavar="serve.KEY=VALUE")
    parser.add_argument("--only", default="sockets,memory,overload,deadline,draft")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    variant = {"server": args.server, "precision": args.precision, "set": parse_set(args.set)}
    report: dict = {"label": args.label, "model": args.model, **variant}
    cases = args.only.split(",")
    for case in ("sockets", "memory", "overload"):
        if case not in cases:
            continue
        load_before = round(os.getloadavg()[0], 2)
        proc, url = start_server(args.model, args.params, variant)
        try:
            if case == "sockets":
                result = case_sockets(url, proc.pid)
            elif case == "memory":
                result = asyncio.run(_memory(url, proc.pid))
            else:
                result = asyncio.run(_overload(url, 300, 15))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        report[case] = {**result, "load_avg_1m": [load_before, round(os.getloadavg()[0], 2)]}
        print(case, json.dumps(report[case]), flush=True)
    if "deadline" in cases:
        load_before = round(os.getloadavg()[0], 2)
        report["deadline"] = case_deadline(args.model, args.params, variant)
        report["deadline"]["load_avg_1m"] = [load_before, round(os.getloadavg()[0], 2)]
        print("deadline", json.dumps(report["deadline"]), flush=True)
    if "draft" in cases:
        report["draft"] = case_draft(args.model, args.precision)
        print("draft", json.dumps(report["draft"]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"hostile-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
