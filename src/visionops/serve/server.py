"""``visionops serve``: the registered champion over HTTP, with an upload page at ``/``.

    visionops serve                           # serve.model from params (the champion)
    visionops serve --model artifacts/export/model.onnx --port 8080
    visionops serve --precision fp32          # the fp32 file even when an int8 one passed
    VISIONOPS_TOKEN=secret visionops serve    # /predict then needs "Authorization: Bearer secret"

Binds 127.0.0.1 unless told otherwise. When the model is ``models:/<name>@<alias>`` the registry
is polled every ``serve.poll_seconds`` and a moved alias is picked up without dropping requests.
Runs on uvicorn (httptools) with the connection deadlines of :mod:`visionops.serve.connections`.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from visionops.config import Config
from visionops.errors import ConfigError, VisionOpsError
from visionops.serve.app import TOKEN_ENV, ServeSettings, create_app
from visionops.serve.connections import raise_fd_limit, uvicorn_server
from visionops.serve.holder import ModelHolder, precision_of
from visionops.tracking import tracking_uri

log = logging.getLogger(__name__)


def settings_from_config(config: Config, token: str | None = None) -> ServeSettings:
    s = config.serve
    return ServeSettings(
        max_upload_mb=s.max_upload_mb,
        max_files=s.max_files,
        timeout_seconds=s.timeout_seconds,
        poll_seconds=s.poll_seconds,
        max_pixels=config.validate_.max_pixels,
        min_side=config.validate_.min_side,
        max_request_pixels=s.max_request_pixels,
        max_queue=s.max_queue,
        max_buffered_mb=s.max_buffered_mb,
        header_timeout_seconds=s.header_timeout_seconds,
        keep_alive_seconds=s.keep_alive_seconds,
        infer_workers=s.infer_workers,
        micro_batch=s.micro_batch,
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


def build_app(
    config: Config,
    model: str | None = None,
    token: str | None = None,
    precision: str | None = None,
):
    """Load the model (fails fast with a clear error) and return the ASGI app."""
    holder = ModelHolder(
        resolve_model(config, model),
        tracking_uri=tracking_uri(config),
        precision=precision or config.serve.precision,
        threads=config.serve.ort_threads or None,
    )
    return create_app(holder, settings_from_config(config, token))


def check_port(port: int) -> None:
    """ConfigError unless ``port`` is a TCP port a server can ask for (1-65535)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"port {port!r}: not a TCP port; pass --port (or serve.port) in 1-65535")


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening-ready sockets on every address ``host`` resolves to (as asyncio would bind them),
    or a one-line VisionOpsError (port in use, no such host, not allowed) before anything claims
    to serve. uvicorn is handed these sockets, so nothing can take the port in between."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise VisionOpsError(
            f"host {host!r}: cannot resolve it ({exc.strerror}); pass another --host"
        ) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        reason = exc.strerror or str(exc)
        raise VisionOpsError(
            f"cannot listen on {host}:{port}: {reason}; pass another --port (or --host)"
        ) from None
    return sockets


def run(
    config: Config,
    model: str | None = None,
    host: str | None = None,
    port: int | None = None,
    precision: str | None = None,
) -> None:
    """Serve until interrupted (Ctrl-C stops gracefully, letting requests in flight finish).

    A bad port, or one already in use, is a one-line error before the model is announced."""
    host = host or config.serve.host
    port = config.serve.port if port is None else port
    check_port(port)
    app = build_app(config, model, precision=precision)
    sockets = bind_sockets(host, port)
    settings: ServeSettings = app.state.settings
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.token:
        log.warning(
            "listening on %s without a token: anyone who can reach it may use /predict "
            "(set %s to require one)",
            host,
            TOKEN_ENV,
        )
    p = app.state.holder.current
    files = raise_fd_limit()
    log.info(
        "serving %s (version %s, %s, %s) on http://%s:%d/",
        app.state.holder.model,
        p.model_version or "-",
        precision_of(p),
        p.provider,
        host,
        port,
    )
    log.debug("open-files limit %d", files)
    server = uvicorn_server(
        app, host, port, settings.header_timeout_seconds, settings.keep_alive_seconds
    )
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        log.info("stopped")
    except SystemExit as exc:  # uvicorn exits when the app cannot start up
        if exc.code not in (0, None):
            raise VisionOpsError(
                f"the server could not start on {host}:{port} (reason logged above); "
                "pass another --port or --host"
            ) from None
    finally:
        for sock in sockets:
            sock.close()


def main(args: Any, config: Config) -> None:
    """Entry point of ``cli.py``; ``args.model``/``host``/``port``/``precision`` None (or
    absent) mean ``config.serve``'s."""
    run(
        config,
        model=args.model,
        host=args.host,
        port=args.port,
        precision=getattr(args, "precision", None),
    )
