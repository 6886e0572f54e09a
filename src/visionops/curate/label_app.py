"""``visionops label``: the Photo-Rater. One image at a time; ← / → for two classes, 1-9 for more.

    visionops label ~/inbox --classes like dislike     # http://127.0.0.1:8012/
    visionops label ~/inbox --classes cat dog fox --model none

Decisions are saved as they are made (:mod:`visionops.curate.labeling`); "finish" copies the
labeled images into ``data/<class>/`` (new files only) and runs ``dvc add data``.

API (JSON): ``GET /api/state``; ``POST /api/label`` ``{"sha256", "label"}`` (a class or
``skip``); ``POST /api/undo``; ``POST /api/finish``; ``GET /api/image/<sha256>``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from visionops.config import Config
from visionops.curate.labeling import LabelSession, default_state_path
from visionops.curate.web import create_page_app, error, serve_app, thumbnail
from visionops.errors import VisionOpsError

log = logging.getLogger(__name__)

DEFAULT_PORT = 8012


def create_label_app(session: LabelSession, host: str = "127.0.0.1") -> FastAPI:
    app = create_page_app("VisionOps label", "label.html", ("common.js", "label.js"), host=host)
    app.state.session = session

    @app.get("/api/state")
    async def state() -> dict:
        return session.state()

    @app.post("/api/label")
    async def label(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return error(400, "send a JSON object {sha256, label}")
        try:
            return JSONResponse(session.label(str(body.get("sha256")), str(body.get("label"))))
        except KeyError:
            return error(404, "unknown image")
        except ValueError as exc:
            return error(422, str(exc))

    @app.post("/api/undo")
    async def undo() -> JSONResponse:
        try:
            return JSONResponse(session.undo())
        except LookupError as exc:
            return error(409, str(exc))

    @app.post("/api/finish")
    async def finish() -> JSONResponse:
        try:
            result = session.finish()
        except VisionOpsError as exc:
            return error(500, str(exc))
        return JSONResponse({**result.to_dict(), "state": session.state()})

    @app.get("/api/image/{sha256}")
    async def image(sha256: str) -> Response:
        path = session.file_of(sha256)
        return error(404, "unknown image") if path is None else thumbnail(path)

    return app


def load_predictor(config: Config, model: str | None):
    """The model that orders the queue: ``model``, else ``serve.model`` (the champion); None
    when it is ``none`` or cannot be loaded (then images come in file order)."""
    if model and model.lower() == "none":
        return None
    from visionops.inference import Predictor
    from visionops.serve.server import resolve_model
    from visionops.tracking import tracking_uri

    chosen = resolve_model(config, model)
    try:
        return Predictor(chosen, tracking_uri=tracking_uri(config))
    except Exception as exc:  # noqa: BLE001 - no champion yet is normal: label in file order
        if model:  # asked for explicitly: say so loudly
            raise VisionOpsError(f"--model {model}: cannot load it ({exc})") from None
        log.info("label: no model to rank by uncertainty (%s); images in file order", exc)
        return None


def run(
    config: Config,
    folder: Path,
    classes: list[str],
    model: str | None = None,
    state: Path | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
) -> None:
    folder = Path(folder)
    session = LabelSession(
        folder,
        classes,
        Path(state) if state else default_state_path(config.root, folder),
        config.data_dir,
        config.root,
        load_predictor(config, model),
        tuple(config.validate_.extensions),
    )
    info = session.state()
    log.info(
        "label: %d images in %s, %d already labeled (state: %s)%s",
        info["total"],
        folder,
        info["done"],
        session.state_path,
        f"; most uncertain first ({info['model']['source']})" if info["model"] else "",
    )
    serve_app(create_label_app(session, host), host, port, "visionops label")
