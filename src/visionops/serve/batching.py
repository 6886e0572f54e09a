"""How ``/predict`` reaches the model: straight to a worker thread, or micro-batched.

Both keep inference off the event loop on a dedicated pool of ``workers`` threads sharing the one
ONNX Runtime session. :class:`DirectRunner` runs each request as its own job. :class:`BatchRunner`
merges the requests that queued up while every worker was busy into one ``Predictor.predict`` call
(no waiting window: an idle server answers at once, a busy one batches). Which one pays was
measured, see docs/BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from visionops.inference import Predictor
from visionops.serve.uploads import Upload, sniff

Rows = list[dict]


def infer(predictor: Predictor, uploads: list[Upload], top_k: int, max_pixels: int) -> Rows:
    """Worker-thread job: sniff every upload, predict the usable ones in one batch.

    One dict per upload with ``status`` 200 (label, probability, top_k), 415 or 422 (error).
    """
    rows: Rows = []
    usable: list[int] = []
    for i, upload in enumerate(uploads):
        refusal = sniff(upload.data, max_pixels)
        if refusal:
            rows.append({"filename": upload.filename, "status": refusal[0], "error": refusal[1]})
        else:
            rows.append({"filename": upload.filename})
            usable.append(i)
    predictions = (
        predictor.predict([uploads[i].data for i in usable], top_k=top_k) if usable else []
    )
    for i, pred in zip(usable, predictions, strict=True):
        if pred.error:
            rows[i].update(status=422, error=f"unusable image: {pred.error}")
        else:
            rows[i].update(status=200, **{k: v for k, v in pred.to_dict().items() if k != "source"})
    return rows


class Expired(Exception):
    """The request's deadline passed while it waited for a worker (its client gets a 504)."""


class DirectRunner:
    """One job per request on the worker pool."""

    def __init__(self, current: Callable[[], Predictor], workers: int, max_pixels: int) -> None:
        self.current = current
        self.max_pixels = max_pixels
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="visionops-infer")

    async def run(self, uploads: list[Upload], top_k: int, deadline: float):
        """(the Predictor used, rows); raises :class:`Expired` if it waited past ``deadline``."""
        predictor = self.current()  # this request's model, whatever swaps meanwhile

        def job() -> Rows:
            if time.monotonic() > deadline:  # its client already got a 504: skip the work
                raise Expired
            return infer(predictor, uploads, min(top_k, len(predictor.labels)), self.max_pixels)

        return predictor, await asyncio.get_running_loop().run_in_executor(self.executor, job)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Pending:
    uploads: list[Upload]
    top_k: int
    deadline: float
    future: asyncio.Future = field(repr=False)


class BatchRunner(DirectRunner):
    """Requests waiting for a worker are merged (up to ``max_batch`` images) into one job."""

    def __init__(
        self, current: Callable[[], Predictor], workers: int, max_pixels: int, max_batch: int = 32
    ) -> None:
        super().__init__(current, workers, max_pixels)
        self.free = workers
        self.max_batch = max_batch
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
            k = min(max(item.top_k for item in batch), len(predictor.labels))
            merged = [u for item in batch for u in item.uploads]
            job = loop.run_in_executor(self.executor, infer, predictor, merged, k, self.max_pixels)
            job.add_done_callback(lambda f, b=batch, p=predictor: self._finish(f, b, p))

    def _finish(self, job: asyncio.Future, batch: list[_Pending], predictor: Predictor) -> None:
        self.free += 1
        error = job.exception() if not job.cancelled() else asyncio.CancelledError()
        rows = None if error else job.result()
        start = 0
        for item in batch:
            n = len(item.uploads)
            if item.future.done():
                pass
            elif error:
                item.future.set_exception(error)
            else:
                mine = [
                    dict(r, top_k=r["top_k"][: item.top_k]) if "top_k" in r else r
                    for r in rows[start : start + n]
                ]
                item.future.set_result((predictor, mine))
            start += n
        self._dispatch()
