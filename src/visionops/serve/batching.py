"""How ``/predict`` reaches the model: a queue drained by worker threads, optionally merging.

Inference stays off the event loop: :class:`InferenceQueue` keeps ``workers`` threads that share
the one ONNX Runtime session and pull requests from one FIFO queue themselves, so a worker that
finishes starts on the next request at once, without a round trip through the (possibly busy)
event loop. A job first sniffs every file's header (no pixels: 415/422 per file, and the
request's pixel budget: 413), then decodes and preprocesses the files one at a time with
:func:`visionops.images.load_one` (the preprocessing evaluation and export's parity gate use),
checking the request's deadline before each file and before each model run: a request whose
client already got its 504 stops within one file's work instead of running to the end.

With merging (``serve.micro_batch``) a worker also takes the requests queued behind the first
one, up to ``max_batch`` images, and runs their images together (no waiting window: an idle
server answers at once, a busy one batches). ``"auto"`` merges for int8 models only: there it
cut server CPU per request by ~15 % and raised throughput; on fp32 it saved no CPU and served
10-30 % fewer requests per second (docs/BENCHMARKS.md, issue 12).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from visionops.images import load_one
from visionops.inference import Predictor
from visionops.serve.holder import precision_of
from visionops.serve.uploads import Upload, UploadRejected, sniff

Rows = list[dict]
log = logging.getLogger(__name__)


class Expired(Exception):
    """The request's deadline passed before its work was done (its client gets a 504)."""


@dataclass(frozen=True)
class Limits:
    """Per-file and per-request limits a job enforces (from ``ServeSettings``)."""

    max_pixels: int  # one file's header (decompression-bomb guard): 422
    min_side: int  # a shorter side: 422, like `visionops validate`
    max_request_pixels: int  # pixels decoded for the whole request: 413
    max_batch: int = 4  # images per session run (see run_model)


@dataclass
class Prepared:
    """One request's files after decoding: a row per file, the model inputs of the usable ones."""

    rows: Rows
    usable: list[int]
    arrays: list[np.ndarray]
    top_k: int


def prepare(
    predictor: Predictor, uploads: list[Upload], top_k: int, limits: Limits, deadline: float
) -> Prepared:
    """Worker-thread job, first half: vet, budget and decode one request's files.

    Raises :class:`UploadRejected` (413) when the files would decode to more than
    ``limits.max_request_pixels`` pixels, :class:`Expired` once ``deadline`` has passed.
    """
    if time.monotonic() > deadline:  # its client already got a 504: skip the work
        raise Expired
    spec = predictor.spec
    checks = [sniff(u.data, limits.max_pixels, limits.min_side, spec.resize) for u in uploads]
    pixels = sum(c.pixels for c in checks)
    if pixels > limits.max_request_pixels:
        raise UploadRejected(
            413,
            f"images too large: {pixels:,} pixels to decode in this request, the limit is "
            f"{limits.max_request_pixels:,} (serve.max_request_pixels; a large JPEG counts at "
            "the reduced size it decodes at); send fewer or smaller images",
        )
    rows: Rows = []
    usable: list[int] = []
    arrays: list[np.ndarray] = []
    for i, (upload, check) in enumerate(zip(uploads, checks, strict=True)):
        row = {"filename": upload.filename}
        rows.append(row)
        if check.refusal:
            row.update(status=check.refusal[0], error=check.refusal[1])
            continue
        if time.monotonic() > deadline:
            raise Expired
        array = load_one(upload.data, spec, limits.max_pixels)
        if isinstance(array, str):
            row.update(status=422, error=f"unusable image: {array}")
        else:
            usable.append(i)
            arrays.append(array)
    return Prepared(rows, usable, arrays, min(top_k, len(predictor.labels)))


def finish(predictor: Predictor, prepared: Prepared, probs: np.ndarray) -> Rows:
    """Fill the usable rows with label, probability and the top ``k`` (status 200)."""
    labels = predictor.labels
    for i, p in zip(prepared.usable, probs, strict=True):
        order = np.argsort(-p)[: prepared.top_k]
        prepared.rows[i].update(
            status=200,
            label=labels[order[0]],
            probability=float(p[order[0]]),
            top_k=[{"label": labels[j], "probability": float(p[j])} for j in order],
            error=None,
        )
    return prepared.rows


def run_model(
    predictor: Predictor, arrays: list[np.ndarray], deadline: float, batch: int
) -> np.ndarray:
    """(N, C) probabilities, ``batch`` images per session run, the deadline checked before each.

    Small runs cost no speed on this CPU (CPU ms per image at batch 1 vs 8: fp32 15.4 vs 15.6,
    int8 6.9 vs 6.5) and bound memory: ONNX Runtime keeps the arena of its largest run (Lite1
    fp32: 10 MB at 1 image, 45 MB at 4, 146 MB at 9).
    """
    out = [np.zeros((0, len(predictor.labels)), np.float32)]
    for start in range(0, len(arrays), batch):
        if time.monotonic() > deadline:
            raise Expired
        out.append(predictor.predict_arrays(np.stack(arrays[start : start + batch])))
    return np.concatenate(out)


@dataclass
class _Pending:
    """One request waiting in the queue; its future is resolved on the event loop."""

    uploads: list[Upload]
    top_k: int
    deadline: float
    loop: asyncio.AbstractEventLoop = field(repr=False)
    future: asyncio.Future = field(repr=False)

    def resolve(self, result) -> None:
        """From a worker thread: the (predictor, rows) or the exception this request ends with."""

        def settle() -> None:
            if self.future.done():  # its handler gave up (timeout, disconnect)
                return
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)

        self.loop.call_soon_threadsafe(settle)


class InferenceQueue:
    """``workers`` threads running requests from one FIFO queue (see the module docstring)."""

    def __init__(
        self,
        current: Callable[[], Predictor],
        workers: int,
        limits: Limits,
        merge: bool | str = "auto",
    ) -> None:
        self.current = current
        self.limits = limits
        self.merge = merge
        self.pending: deque[_Pending] = deque()
        self.ready = threading.Condition()
        self.closed = False
        self.workers = workers
        self.threads: list[threading.Thread] = []  # started by the first request

    async def run(self, uploads: list[Upload], top_k: int, deadline: float):
        """(the Predictor used, rows); raises :class:`Expired` past ``deadline``,
        :class:`UploadRejected` (413) over the pixel budget."""
        loop = asyncio.get_running_loop()
        item = _Pending(uploads, top_k, deadline, loop, loop.create_future())
        with self.ready:
            if not self.threads:
                self.threads = [
                    threading.Thread(target=self._work, name=f"visionops-infer-{i}", daemon=True)
                    for i in range(self.workers)
                ]
                for thread in self.threads:
                    thread.start()
            self.pending.append(item)
            self.ready.notify()
        return await item.future

    def merges(self, predictor: Predictor) -> bool:
        if self.merge == "auto":
            return precision_of(predictor) == "int8"
        return bool(self.merge)

    def close(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify_all()

    def _next_batch(self) -> tuple[Predictor, list[_Pending]] | None:
        with self.ready:
            while not self.pending and not self.closed:
                self.ready.wait()
            if self.closed:
                return None
            predictor = self.current()  # these requests' model, whatever swaps meanwhile
            merge = self.merges(predictor)
            batch = [self.pending.popleft()]
            images = len(batch[0].uploads)
            while (
                merge
                and self.pending
                and images + len(self.pending[0].uploads) <= self.limits.max_batch
            ):
                batch.append(self.pending.popleft())
                images += len(batch[-1].uploads)
            return predictor, batch

    def _work(self) -> None:
        while (job := self._next_batch()) is not None:
            predictor, batch = job
            try:
                results = self._run(predictor, batch)
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any request
                log.exception("inference failed")
                results = [exc] * len(batch)
            for item, result in zip(batch, results, strict=True):
                item.resolve(result)

    def _run(self, predictor: Predictor, batch: list[_Pending]) -> list:
        """Each request's (predictor, rows), or the exception that request ends with."""
        prepared: list[Prepared | BaseException] = []
        for item in batch:
            try:
                prepared.append(
                    prepare(predictor, item.uploads, item.top_k, self.limits, item.deadline)
                )
            except (Expired, UploadRejected) as exc:
                prepared.append(exc)
        ok = [p for p in prepared if isinstance(p, Prepared)]
        arrays = [a for p in ok for a in p.arrays]
        deadline = max((item.deadline for item in batch), default=0.0)
        try:
            probs = run_model(predictor, arrays, deadline, self.limits.max_batch)
        except Expired as exc:
            return [exc if isinstance(p, Prepared) else p for p in prepared]
        out, start = [], 0
        for p in prepared:
            if isinstance(p, Prepared):
                out.append((predictor, finish(predictor, p, probs[start : start + len(p.arrays)])))
                start += len(p.arrays)
            else:
                out.append(p)
        return out
