"""Run the app of ``visionops serve`` under one ASGI server, for ``load_test.py`` / ``hostile.py``.

    python benchmarks/serve_variants.py MODEL PORT PARAMS '{"server": "visionops", "set": {}}'

``server``:
  visionops          what ``visionops serve`` runs: uvicorn + httptools + the connection
                     deadlines of ``visionops.serve.connections`` (the default)
  uvicorn-h11        plain uvicorn with h11 and ``limit_concurrency=256``: the setup before
                     issue 12 (no header timeout; idle sockets count toward the limit)
  uvicorn-httptools  plain uvicorn with httptools (no deadlines)
  granian            granian 2.x embedded in this process (``pip install granian``), its
                     ``header_read_timeout`` = serve.header_timeout_seconds
  hypercorn          hypercorn (``pip install hypercorn``), read/keep-alive timeouts from serve.*

``set`` holds ``serve.*`` overrides (``{"serve.micro_batch": true}``), ``precision`` the
``--precision`` of ``visionops serve``. Access logs are off everywhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys


def serve(model: str, port: int, params: str, variant: dict) -> None:
    import resource

    from visionops.config import load_config
    from visionops.offline import apply_offline_env
    from visionops.serve.server import build_app

    apply_offline_env()
    logging.basicConfig(level=logging.WARNING)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(4096, hard)), hard))
    config = load_config(params, overrides=variant.get("set") or {})
    precision = variant.get("precision")
    # (without --precision, the code from before issue 12 runs here too: git archive HEAD src)
    app = build_app(config, model, precision=precision) if precision else build_app(config, model)
    s = config.serve
    kind = variant.get("server", "visionops")
    if kind == "visionops":
        from visionops.serve.connections import uvicorn_server

        uvicorn_server(app, "127.0.0.1", port, s.header_timeout_seconds, s.keep_alive_seconds).run()
    elif kind in ("uvicorn-h11", "uvicorn-httptools"):
        import uvicorn

        limit = 256 if kind == "uvicorn-h11" else None
        uvicorn.run(
            app,
            host="127.0.0.1",
            port=port,
            http=kind.split("-")[1],
            log_level="warning",
            access_log=False,
            limit_concurrency=limit,
            timeout_keep_alive=5,
        )
    elif kind == "granian":
        from granian.constants import Interfaces
        from granian.http import HTTP1Settings
        from granian.server.embed import Server

        server = Server(
            app,
            address="127.0.0.1",
            port=port,
            interface=Interfaces.ASGI,
            http="1",
            websockets=False,
            log_level="warning",
            backlog=2048,
            backpressure=4096,  # its default (backlog / workers) counts connections
            http1_settings=HTTP1Settings(
                header_read_timeout=int(getattr(s, "header_timeout_seconds", 5) * 1000)
            ),
        )
        asyncio.run(server.serve())
    elif kind == "hypercorn":
        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        hc = Config()
        hc.bind = [f"127.0.0.1:{port}"]
        hc.loglevel = "WARNING"
        hc.keep_alive_timeout = getattr(s, "keep_alive_seconds", 5)
        hc.read_timeout = getattr(s, "header_timeout_seconds", 5)
        hc.backlog = 2048
        asyncio.run(hypercorn_serve(app, hc))
    else:
        sys.exit(f"unknown server {kind!r}")


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]))
