"""What the review and label pages share: hardening, static files, thumbnails, serving.

Both pages change files in the project (``curation.csv``, ``data/``), so they are stricter than
the read-only upload page of ``visionops serve``:

* **loopback by default** (127.0.0.1); another ``--host`` is logged as a warning.
* **Host header checked** against the loopback names when bound to loopback, so a web page the
  user visits cannot reach the server through DNS rebinding.
* **writes are JSON only**: a ``POST`` must be ``Content-Type: application/json`` (which a
  cross-site form or a no-CORS fetch cannot send without a preflight, and there is no CORS) and
  its ``Origin``, when sent, must be this server.
* **offline, no CDN**: HTML, CSS and JS ship in the package (``curate/static``); the
  Content-Security-Policy allows nothing but this origin, no inline script, no framing
  (``frame-ancestors 'none'`` + ``X-Frame-Options: DENY``), ``nosniff``, no referrer.
* images are served only by content hash, only for images the session knows, re-encoded as
  JPEG thumbnails through :func:`visionops.images.open_image` (decompression-bomb guard).
"""

from __future__ import annotations

import io
import logging
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from visionops.images import open_image

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
THUMB_SIDE = 720  # px, longest side of an image sent to the page


def static_text(name: str) -> str:
    return resources.files("visionops.curate").joinpath(f"static/{name}").read_text("utf-8")


def error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _host_name(header: str) -> str:
    if header.startswith("["):  # [::1]:8011
        return header[1 : header.find("]")]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def create_page_app(title: str, page: str, scripts: tuple[str, ...], host: str) -> FastAPI:
    """A FastAPI app serving ``static/<page>`` at ``/`` and ``scripts`` (+ curate.css) under
    ``/static/``, with the guards of the module docstring."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    loopback_only = host in LOOPBACK
    html = static_text(page)
    files = {name: static_text(name) for name in (*scripts, "curate.css")}

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host_header = request.headers.get("host", "")
        if loopback_only and _host_name(host_header) not in LOOPBACK:
            response: Response = error(403, f"host {host_header!r} not allowed")
        elif request.method not in ("GET", "HEAD") and not _json_same_origin(request):
            response = error(
                403, "writes need Content-Type: application/json from this page's origin"
            )
        else:
            response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(html)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:  # no icon, and no 404 in the browser's console
        return Response(status_code=204)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in files:
            return error(404, f"no static file {name!r}")
        return Response(files[name], media_type=_STATIC_TYPES[Path(name).suffix])

    return app


def _json_same_origin(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    return kind == "application/json" and (origin is None or origin == f"http://{host}")


def thumbnail(path: Path) -> Response:
    """The image at ``path`` as a JPEG of at most :data:`THUMB_SIDE` px (404/422 on failure)."""
    try:
        img = open_image(path)
    except FileNotFoundError:
        return error(404, f"{path.name}: file no longer exists")
    except Exception as exc:  # noqa: BLE001 - unreadable image: the page shows the message
        return error(422, f"{path.name}: cannot be decoded ({exc})")
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88)
    return Response(
        buf.getvalue(),
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=600"},
    )


def serve_app(app: FastAPI, host: str, port: int, what: str) -> None:
    """Run ``app`` until Ctrl-C, on sockets bound first (a taken port is a one-line error)."""
    import uvicorn

    from visionops.serve.server import bind_sockets, check_port

    check_port(port)
    sockets = bind_sockets(host, port)
    if host not in LOOPBACK:
        log.warning(
            "%s listens on %s: anyone who can reach it can change this project's files", what, host
        )
    shown = f"[{host}]" if ":" in host else host
    log.info("%s: open http://%s:%d/ (Ctrl-C to stop)", what, shown, port)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_config=None, timeout_keep_alive=5)
    )
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        for sock in sockets:
            sock.close()
