"""The ASGI app of ``visionops serve``: ``POST /predict``, ``GET /health``, ``/metadata`` and ``/``.

Inference runs on a small dedicated thread pool (never on the event loop) against the one shared
ONNX Runtime session of :class:`~visionops.serve.holder.ModelHolder`. Every failure a client can
cause is an HTTP status with a one-line ``detail``; nothing a request sends can stop the process.
``/predict`` is admitted through :class:`~visionops.serve.guards.Guard` (503 + ``Retry-After``
when ``serve.max_queue`` requests are in flight or uploads fill ``serve.max_buffered_mb``);
``/health`` (GET and HEAD) and ``/metadata`` never wait for it. Responses name the model file,
never where it lives. Interactive API docs and ``/openapi.json`` are off: Swagger UI would load
its JavaScript from a CDN (offline here), and the schema is for nobody but an attacker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.requests import ClientDisconnect

from visionops.images import DEFAULT_MAX_PIXELS
from visionops.inference import Predictor
from visionops.serve.batching import Expired, InferenceQueue, Limits
from visionops.serve.guards import Guard, Load, page_csp
from visionops.serve.holder import ModelHolder, precision_of
from visionops.serve.uploads import Reservation, UploadRejected, read_uploads

log = logging.getLogger(__name__)

TOKEN_ENV = "VISIONOPS_TOKEN"


@dataclass(frozen=True)
class ServeSettings:
    """Limits and knobs of one running service (built from ``config.serve`` by ``server.py``)."""

    max_upload_mb: float = 10
    max_files: int = 16
    timeout_seconds: float = 30
    poll_seconds: float = 30
    max_pixels: int = DEFAULT_MAX_PIXELS  # one file's header: 422 above (validate.max_pixels)
    min_side: int = 1  # a shorter side: 422 (validate.min_side)
    max_request_pixels: int = 50_000_000  # decoded pixels per request: 413 above
    max_queue: int = 128  # /predict requests in flight; 503 + Retry-After beyond
    max_buffered_mb: float = 160  # upload bytes held by requests in flight; 503 beyond
    header_timeout_seconds: float = 5  # request head must arrive within this (serve/connections)
    keep_alive_seconds: float = 5  # idle kept-alive connections close after this
    token: str | None = None  # bearer token required on /predict when set
    infer_workers: int = 2  # threads calling the shared session; see docs/BENCHMARKS.md
    micro_batch: bool | str = "auto"  # merge queued requests (auto: int8 only); InferenceQueue
    max_batch: int = 4  # images per session run (and per merged run); serve/batching.run_model

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


# An absolute path inside a message (``/home/x/mlruns/.../model.onnx``): only its last part is
# shown to clients. ``models:/name`` and URLs are left alone.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s'\"/]+/)+")


def public_text(text: str | None) -> str | None:
    """``text`` with every absolute path cut to its file name (what a client may see)."""
    return _ABSOLUTE_PATH.sub("", text) if text else text


def public_source(source: str) -> str:
    """A ``models:/`` URI as is; a file path as its file name."""
    return source if source.startswith("models:/") else Path(source).name


def _error(status: int, detail: str, retry_after: int | None = None, **extra) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers or None)


def _model_name(predictor: Predictor) -> str:
    """The registered name, or the file's stem for a plain ``.onnx``."""
    return predictor.model_name or Path(predictor.model_path).stem


def _model_info(predictor: Predictor) -> dict:
    return {
        "name": _model_name(predictor),
        "version": predictor.model_version,
        "source": public_source(predictor.source),
        "precision": precision_of(predictor),
    }


def _page() -> str:
    return (
        resources.files("visionops.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    )


def create_app(holder: ModelHolder, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``holder``'s model; polls the registry while it runs (lifespan)."""
    settings = settings or ServeSettings()
    limits = Limits(
        settings.max_pixels, settings.min_side, settings.max_request_pixels, settings.max_batch
    )
    runner = InferenceQueue(
        lambda: holder.current, settings.infer_workers, limits, merge=settings.micro_batch
    )
    load = Load(settings.max_queue, int(settings.max_buffered_mb * 2**20))
    page = _page()
    started = time.time()

    async def poll_registry() -> None:
        while True:
            await asyncio.sleep(settings.poll_seconds)
            await asyncio.get_running_loop().run_in_executor(None, holder.refresh)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        poller = asyncio.create_task(poll_registry()) if holder.follows_alias else None
        try:
            yield
        finally:
            if poller:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            runner.close()

    app = FastAPI(
        title="VisionOps classifier",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        description="POST images to /predict; /health and /metadata describe the model.",
    )
    app.add_middleware(Guard, load=load, page_path="/", page_policy=page_csp(page))
    app.state.holder = holder
    app.state.settings = settings
    app.state.load = load

    def authorized(request: Request) -> bool:
        if not settings.token:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), settings.token.encode()
        )

    @app.post("/predict")
    async def predict(
        request: Request,
        top_k: int = Query(3, ge=1, le=1000, description="labels returned per image"),
    ) -> JSONResponse:
        """Classify the uploaded images (multipart field ``files``; several allowed).

        200 when at least one image was classified (bad files carry their own ``error``/``status``);
        when every file is refused, the first file's status (415 not an image, 422 unusable).
        413 over the request's byte, file or pixel limits; 503 + Retry-After when busy; 504 past
        ``serve.timeout_seconds`` (the work stops too).
        """
        t0 = time.perf_counter()
        if not authorized(request):
            return _error(401, f"missing or wrong bearer token (set by {TOKEN_ENV} on the server)")
        deadline = time.monotonic() + settings.timeout_seconds
        reservation = Reservation(load)
        try:
            async with asyncio.timeout(settings.timeout_seconds):
                uploads = await read_uploads(
                    request,
                    settings.max_bytes,
                    settings.max_files,
                    settings.max_upload_mb,
                    reservation,
                )
                predictor, rows = await runner.run(uploads, top_k, deadline)
        except UploadRejected as exc:
            return _error(exc.status, exc.detail, exc.retry_after)
        except (TimeoutError, Expired):
            return _error(
                504,
                f"request took longer than {settings.timeout_seconds:g} s "
                "(serve.timeout_seconds); retry, or send fewer images",
            )
        except ClientDisconnect:
            return _error(400, "client disconnected before the upload finished")
        except Exception as exc:  # noqa: BLE001 - never let one request take the service down
            log.exception("predict failed")
            return _error(500, f"internal error ({type(exc).__name__}); see the server log")
        finally:
            reservation.close()
        body = {
            "model": _model_info(predictor),
            "latency_ms": round((time.perf_counter() - t0) * 1000, 2),
            "predictions": rows,
        }
        if all(r["status"] != 200 for r in rows):
            first = rows[0]
            return _error(first["status"], f"{first['filename']}: {first['error']}", **body)
        return JSONResponse(body)

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> dict:
        """Liveness plus what is served: model, version, precision, execution provider, and
        how busy ``/predict`` is. Never waits for inference."""
        p = holder.current
        return {
            "status": "ok",
            "model": _model_name(p),
            "version": p.model_version,
            "source": public_source(holder.model),
            "loaded": public_source(p.source),
            "model_file": Path(p.model_path).name,
            "precision": precision_of(p),
            "provider": p.provider,
            "loaded_at": holder.loaded_at,
            "follows_alias": holder.follows_alias,
            "last_registry_check": holder.last_check,
            "reload_error": public_text(holder.last_error),
            "uptime_s": round(time.time() - started, 1),
            "load": load.to_dict(),
        }

    @app.get("/metadata")
    async def metadata() -> dict:
        """Labels, input size and the limits a client must respect."""
        p = holder.current
        return {
            **_model_info(p),
            "labels": list(p.labels),
            "num_classes": len(p.labels),
            "input": {"name": p.input_name, **p.spec.to_dict()},
            "backbone": p.metadata.get("visionops.backbone"),
            "limits": {
                "max_upload_mb": settings.max_upload_mb,
                "max_files": settings.max_files,
                "max_pixels": settings.max_pixels,
                "min_side": settings.min_side,
                "max_request_pixels": settings.max_request_pixels,
                "timeout_seconds": settings.timeout_seconds,
            },
            "auth_required": bool(settings.token),
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app
