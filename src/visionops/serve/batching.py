"""How ``/predict`` reaches the model: straight to a worker thread, or micro-batched.

Both keep inference off the event loop on a dedicated pool of ``workers`` threads sharing the one
ONNX Runtime session. A job first sniffs every file's header (no pixels: 415/422 per file, and
the request's pixel budget: 413), then decodes and preprocesses the files one at a time with
:func:`visionops.images.load_one` (the preprocessing evaluation and export's parity gate use),
checking the request's deadline before each file and before the model runs: a request whose
client already got its 504 stops within one file's work instead of running to the end.

:class:`DirectRunner` runs each request as its own job. :class:`BatchRunner` merges the requests
that queued up while every worker was busy into one model run (no waiting window: an idle server
answers at once, a busy one batches). Which one pays was measured, see docs/BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from visionops.images import load_one
from visionops.inference import Predictor
from visionops.serve.uploads import Upload, UploadRejected, sniff

Rows = list[dict]


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


def infer(
    predictor: Predictor, uploads: list[Upload], top_k: int, limits: Limits, deadline: float
) -> Rows:
    """One request, start to end, on a worker thread: a row per upload (200, 415 or 422)."""
    prepared = prepare(predictor, uploads, top_k, limits, deadline)
    probs = run_model(predictor, prepared.arrays, deadline, limits.max_batch)
    return finish(predictor, prepared, probs)


class DirectRunner:
    """One job per request on the worker pool."""

    def __init__(self, current: Callable[[], Predictor], workers: int, limits: Limits) -> None:
        self.current = current
        self.limits = limits
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="visionops-infer")

    async def run(self, uploads: list[Upload], top_k: int, deadline: float):
        """(the Predictor used, rows); raises :class:`Expired` past ``deadline``,
        :class:`UploadRejected` (413) over the pixel budget."""
        predictor = self.current()  # this request's model, whatever swaps meanwhile
        rows = await asyncio.get_running_loop().run_in_executor(
            self.executor, infer, predictor, uploads, top_k, self.limits, deadline
        )
        return predictor, rows

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Pending:
    uploads: list[Upload]
    top_k: int
    deadline: float
    future: asyncio.Future = field(repr=False)


class BatchRunner(DirectRunner):
    """Requests waiting for a worker are merged (up to ``limits.max_batch`` images) into one job:
    each is prepared on its own (its own deadline and budget), then one model run serves them
    all."""

    def __init__(self, current: Callable[[], Predictor], workers: int, limits: Limits) -> None:
        super().__init__(current, workers, limits)
        self.free = workers
        self.max_batch = limits.max_batch
        self.pending: deque[_Pending] = deque()

    async def run(self, uploads: list[Upload], top_k: int, deadline: float):
        future = asyncio.get_running_loop().create_future()
        self.pending.append(_Pending(uploads, top_k, deadline, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self.free and self.pending:
            batch: list[_Pending] = []
            images = 0
            now = time.monotonic()
            while self.pending and (
                not batch or images + len(self.pending[0].uploads) <= self.max_batch
            ):
                item = self.pending.popleft()
                if item.future.done():  # cancelled: its request timed out
                    continue
                if now > item.deadline:
                    item.future.set_exception(Expired())
                    continue
                batch.append(item)
                images += len(item.uploads)
            if not batch:
                return
            self.free -= 1
            predictor = self.current()
            job = loop.run_in_executor(self.executor, self._job, predictor, batch)
            job.add_done_callback(lambda f, b=batch, p=predictor: self._finish(f, b, p))

    def _job(self, predictor: Predictor, batch: list[_Pending]) -> list:
        """Worker thread: each request's rows, or the exception that request ends with."""
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
        deadline = max(item.deadline for item in batch)
        probs = run_model(predictor, arrays, deadline, self.limits.max_batch)
        out, start = [], 0
        for p in prepared:
            if isinstance(p, Prepared):
                out.append(finish(predictor, p, probs[start : start + len(p.arrays)]))
                start += len(p.arrays)
            else:
                out.append(p)
        return out

    def _finish(self, job: asyncio.Future, batch: list[_Pending], predictor: Predictor) -> None:
        self.free += 1
        error = job.exception() if not job.cancelled() else asyncio.CancelledError()
        results = None if error else job.result()
        for k, item in enumerate(batch):
            if item.future.done():
                continue
            if error:
                item.future.set_exception(error)
            elif isinstance(results[k], BaseException):
                item.future.set_exception(results[k])
            else:
                item.future.set_result((predictor, results[k]))
        self._dispatch()
