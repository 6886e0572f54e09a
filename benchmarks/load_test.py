"""Load test of ``visionops serve``: N concurrent clients POSTing real photos for S seconds.

    # start a server on a free loopback port for this model, then load it (the usual way):
    python benchmarks/load_test.py --model artifacts/export/model.onnx
    python benchmarks/load_test.py --model artifacts/export/model.onnx --precision int8
    python benchmarks/load_test.py --model M --clients 1 --seconds 20     # single-image latency
    python benchmarks/load_test.py --model M --set serve.micro_batch=true  # any serve.* knob
    python benchmarks/load_test.py --model M --server uvicorn-h11         # the pre-issue-12 server
    # against a server you started yourself (--pid: its CPU and memory are measured too):
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --pid 1234
    # no trained model yet? export an ImageNet EfficientNet-Lite0 (224 px, 10-class head) first:
    python benchmarks/load_test.py --make-lite0 benchmarks/results/lite0.onnx
    # the photos as committed (the figures in docs/BENCHMARKS.md were taken with these):
    git archive 8575af7 sample | tar -x -C /tmp/s && python benchmarks/load_test.py --model M \\
        --images /tmp/s/sample/clothing-mini
    # an int8 file beside an fp32 one (calibrated on sample/clothing-mini, the default recipe):
    python benchmarks/load_test.py --make-int8 M.onnx M.int8.onnx

Each client (an aiohttp coroutine, all in this process) sends one image per request (photos from
sample/clothing-mini, round robin) and the next as soon as the answer arrives. Requests/s,
p50/p95/p99 latency (client side), the server's own handler time, errors (any non-200 or
transport failure), the CPU both processes burnt per request and the server's resident memory
(idle, and the peak sampled every 0.2 s) are printed and written as JSON to
benchmarks/results/, with the machine's load average before and after. The first ``--warmup``
seconds are not counted. Client and server share the machine's cores, so numbers are a floor
for the server alone. Servers: ``benchmarks/serve_variants.py``. Results: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE = ROOT / "sample" / "clothing-mini"

VARIANTS = Path(__file__).resolve().parent / "serve_variants.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_images(limit: int = 64, folder: Path = SAMPLE) -> list[tuple[str, bytes]]:
    photos = sorted(folder.glob("*/*.jpg"))[::5][:limit]
    if not photos:
        sys.exit(f"no photos under {folder}; run from the repository (or pass --images)")
    return [(p.name, p.read_bytes()) for p in photos]


async def client_loop(session, images, stop_at: float, count_from: float, out: dict, offset: int):
    import aiohttp

    i = offset
    while (now := time.perf_counter()) < stop_at:
        name, data = images[i % len(images)]
        i += 1
        form = aiohttp.FormData()
        form.add_field("files", data, filename=name, content_type="image/jpeg")
        t0 = time.perf_counter()
        try:
            async with session.post("/predict", data=form) as r:
                body = await r.json()
                ok, code = r.status == 200, str(r.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok, code = False, type(exc).__name__
            if len(out["samples"]) < 5:
                out["samples"].append(f"{code} after {time.perf_counter() - t0:.2f} s: {exc!r}")
        t1 = time.perf_counter()
        if now < count_from or t1 > stop_at:
            continue  # warm-up, or finished after the window closed
        out["done"] += 1
        if ok:
            out["latencies"].append(t1 - t0)
            out["server_ms"].append(body["latency_ms"])
        else:
            out["errors"][code] = out["errors"].get(code, 0) + 1


def _tree(pid: int | None) -> list:
    """The process ``pid`` and its descendants (a server may run its workers as children)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except (psutil.Error, TypeError, ValueError):
        return []


def cpu_seconds(pid: int | None, tree: bool = True) -> float | None:
    """User + system CPU time of a process (all threads; with ``tree``, plus its descendants);
    None if unknown."""
    import psutil

    total, seen = 0.0, False
    for proc in _tree(pid)[: None if tree else 1]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
        seen = True
    return total if seen else None


def rss_bytes(pid: int | None) -> int:
    import psutil

    total = 0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


async def sample_cpu(pid: int | None, at: float, into: list, tree: bool = True) -> None:
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    into.append(cpu_seconds(pid, tree))


async def sample_rss(pid: int | None, stop_at: float, into: list) -> None:
    while time.perf_counter() < stop_at:
        into.append(rss_bytes(pid))
        await asyncio.sleep(0.2)


async def load(
    url: str, clients: int, seconds: float, warmup: float, pid: int | None, folder: Path = SAMPLE
) -> dict:
    # aiohttp (an MLflow dependency) rather than httpx: ~5x less client CPU per request, which
    # matters when client and server share two cores.
    import aiohttp

    images = load_images(folder=folder)
    out: dict = {"latencies": [], "server_ms": [], "errors": {}, "done": 0, "samples": []}
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as client:
        async with client.get("/health") as r:
            health = await r.json()
        rss_idle = rss_bytes(pid)
        start = time.perf_counter()
        count_from, stop_at = start + warmup, start + warmup + seconds
        cpu: list = []
        mine: list = []
        rss: list = []
        await asyncio.gather(
            sample_rss(pid, stop_at, rss),
            sample_cpu(pid, count_from, cpu),
            sample_cpu(pid, stop_at, cpu),
            sample_cpu(os.getpid(), count_from, mine, tree=False),
            sample_cpu(os.getpid(), stop_at, mine, tree=False),
            *(client_loop(client, images, stop_at, count_from, out, k) for k in range(clients)),
        )
    server_cpu = cpu[1] - cpu[0] if None not in cpu and out["done"] else None
    client_cpu = mine[1] - mine[0] if None not in mine and out["done"] else None
    lat = np.array(out["latencies"]) * 1000
    errors = out["errors"]
    return {
        "url": url,
        "model": health.get("model"),
        "version": health.get("version"),
        "precision": health.get("precision"),
        "model_file": health.get("model_file"),
        "provider": health.get("provider"),
        "clients": clients,
        "seconds": seconds,
        "requests": out["done"],
        "requests_per_s": round(out["done"] / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        # time inside the server's handler (upload parse + queue + inference), from the responses
        "server_p50_ms": round(float(np.percentile(out["server_ms"], 50)), 1) if len(lat) else None,
        "server_p95_ms": round(float(np.percentile(out["server_ms"], 95)), 1) if len(lat) else None,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "error_samples": out["samples"],
        # CPU the server burnt per answered request: robust to other jobs on a shared machine
        "server_cpu_ms_per_request": (
            round(server_cpu / out["done"] * 1000, 1) if server_cpu is not None else None
        ),
        "client_cpu_ms_per_request": (
            round(client_cpu / out["done"] * 1000, 1) if client_cpu is not None else None
        ),
        "rss_idle_mb": round(rss_idle / 2**20) if rss_idle else None,
        "rss_peak_mb": round(max(rss) / 2**20) if rss and max(rss) else None,
    }


def start_server(model: str, params: str, variant: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, str(VARIANTS), model, str(port), params, json.dumps(variant)]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}")
        try:
            httpx.get(f"{url}/health", timeout=2)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    sys.exit("the server did not come up in 120 s")


def make_int8(fp32: Path, out: Path, images: int = 128) -> None:
    """Static int8 of ``fp32`` with the project's default recipe, calibrated on ``images``
    photos of sample/clothing-mini preprocessed like inference (speed does not depend on
    which images calibrate it)."""
    from visionops.export.onnx_model import OnnxClassifier
    from visionops.export.quantize import quantize_int8
    from visionops.images import preprocess_batches

    spec = OnnxClassifier(fp32, device="cpu").spec
    photos = sorted(SAMPLE.glob("*/*.jpg"))[1::2][:images]
    calibration = np.concatenate([b for _, b, _ in preprocess_batches(photos, spec, 32, 2)])
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    quantize_int8(fp32, out, calibration, meta)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB)")


def make_lite0(path: Path) -> None:
    """ImageNet EfficientNet-Lite0 backbone + 10-class head, exported like `visionops export`."""
    from visionops.export.onnx_meta import build_metadata, write_metadata
    from visionops.export.stage import export_onnx
    from visionops.train.models import create_model, preprocess_spec

    labels = sorted(p.name for p in SAMPLE.iterdir() if p.is_dir()) or [f"c{i}" for i in range(10)]
    model = create_model("efficientnet_lite0", len(labels), pretrained=True).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, path, image_size=224, opset=17)
    spec = preprocess_spec("efficientnet_lite0", 224, 256)
    write_metadata(path, build_metadata(labels, spec, "efficientnet_lite0", note="load-test"))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")


def parse_set(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("serve."):
            sys.exit(f"--set {item!r}: use serve.KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="start a server for this .onnx / models:/ URI")
    what.add_argument("--url", help="load a server that is already running")
    what.add_argument("--make-lite0", type=Path, metavar="PATH", help="export a Lite0 and exit")
    what.add_argument("--make-int8", type=Path, nargs=2, metavar=("FP32", "OUT"))
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--params", default="params.yaml", help="serve settings come from here")
    parser.add_argument("--server", default="visionops", help="see serve_variants.py")
    parser.add_argument("--precision", choices=("auto", "fp32", "int8"), default=None)
    parser.add_argument("--set", action="append", default=[], metavar="serve.KEY=VALUE")
    parser.add_argument("--label", default="", help="name of this run in the results file")
    parser.add_argument("--pid", type=int, default=None, help="with --url: the server's pid")
    parser.add_argument(
        "--images", type=Path, default=SAMPLE, help="<class>/*.jpg photos to send (every 5th)"
    )
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    if args.make_lite0:
        make_lite0(args.make_lite0)
        return
    if args.make_int8:
        make_int8(*args.make_int8)
        return
    proc = None
    url = args.url
    variant = {"server": args.server, "precision": args.precision, "set": parse_set(args.set)}
    load_before = round(os.getloadavg()[0], 2)
    if args.model:
        proc, url = start_server(args.model, args.params, variant)
    try:
        pid = proc.pid if proc else args.pid
        report = asyncio.run(load(url, args.clients, args.seconds, args.warmup, pid, args.images))
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=30)
    report.update(
        label=args.label,
        **variant,
        cpus=os.cpu_count(),
        load_avg_1m_before=load_before,
        load_avg_1m_after=round(os.getloadavg()[0], 2),
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"load_test-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
