"""``visionops serve``: the registered champion over HTTP, with an upload page at ``/``.

    visionops serve                           # serve.model from params (the champion)
    visionops serve --model artifacts/export/model.onnx --port 8080
    VISIONOPS_TOKEN=secret visionops serve    # /predict then needs "Authorization: Bearer secret"

Binds 127.0.0.1 unless told otherwise. When the model is ``models:/<name>@<alias>`` the registry
is polled every ``serve.poll_seconds`` and a moved alias is picked up without dropping requests.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from visionops.config import Config
from visionops.errors import VisionOpsError
from visionops.serve.app import TOKEN_ENV, ServeSettings, create_app
from visionops.serve.holder import ModelHolder
from visionops.tracking import tracking_uri

log = logging.getLogger(__name__)

# Connections beyond this get 503 from uvicorn instead of queueing without bound (memory: each
# request may hold up to serve.max_upload_mb).
LIMIT_CONCURRENCY = 256


def settings_from_config(config: Config, token: str | None = None) -> ServeSettings:
    s = config.serve
    return ServeSettings(
        max_upload_mb=s.max_upload_mb,
        max_files=s.max_files,
        timeout_seconds=s.timeout_seconds,
        poll_seconds=s.poll_seconds,
        max_pixels=config.validate_.max_pixels,
        token=token if token is not None else (os.environ.get(TOKEN_ENV) or None),
    )


def resolve_model(config: Config, model: str | None) -> str:
    """The model argument, else ``serve.model``; a relative file path resolves like params do."""
    chosen = model or config.serve.model
    if chosen.startswith("models:/"):
        return chosen
    path = Path(chosen)
    if not path.exists() and not path.is_absolute() and config.path(path).exists():
        path = config.path(path)
    return str(path)


def build_app(config: Config, model: str | None = None, token: str | None = None):
    """Load the model (fails fast with a clear error) and return the ASGI app."""
    holder = ModelHolder(resolve_model(config, model), tracking_uri=tracking_uri(config))
    return create_app(holder, settings_from_config(config, token))


def run(
    config: Config, model: str | None = None, host: str | None = None, port: int | None = None
) -> None:
    """Serve until interrupted (Ctrl-C stops gracefully, letting requests in flight finish)."""
    import uvicorn

    host = host or config.serve.host
    port = port or config.serve.port
    app = build_app(config, model)
    settings: ServeSettings = app.state.settings
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.token:
        log.warning(
            "listening on %s without a token: anyone who can reach it may use /predict "
            "(set %s to require one)",
            host,
            TOKEN_ENV,
        )
    p = app.state.holder.current
    log.info(
        "serving %s (version %s, %s) on http://%s:%d/",
        app.state.holder.model,
        p.model_version or "-",
        p.provider,
        host,
        port,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            limit_concurrency=LIMIT_CONCURRENCY,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=10,
        )
    )
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        log.info("stopped")
    except SystemExit as exc:  # uvicorn exits when it cannot bind or start up
        if exc.code not in (0, None):
            raise VisionOpsError(
                f"the server could not start on {host}:{port} (reason logged above, e.g. the "
                "port is in use); pass another --port or --host"
            ) from None


def main(args: Any, config: Config) -> None:
    """Entry point of ``cli.py``; ``args.model``/``host``/``port`` None mean ``config.serve``'s."""
    run(config, model=args.model, host=args.host, port=args.port)
