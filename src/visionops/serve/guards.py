"""What stands in front of the routes: admission of ``/predict`` and the security headers.

:class:`Guard` is plain ASGI (no per-request task or body copy, unlike ``BaseHTTPMiddleware``):

- ``POST /predict`` is admitted only while fewer than ``max_queue`` of them are in flight
  (uploading, waiting for an inference thread or running); the next one gets ``503`` with
  ``Retry-After`` at once, before its body is read (uvicorn drains it so the client sees the
  answer, not a reset). ``/health``, ``/metadata`` and ``/`` are never counted and never wait
  for inference, so a liveness probe stays green while the service is merely busy.
- Upload bytes held in memory by requests in flight are budgeted too (:class:`Load`), so a
  full queue of maximal uploads cannot exhaust memory.
- Every response carries ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
  ``Referrer-Policy: no-referrer`` and a Content-Security-Policy: the upload page may run only
  its own inline script and style (by hash: it works offline, nothing else runs), talk to this
  origin and show the ``blob:`` previews of the files it was given; every other response gets
  ``default-src 'none'``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass

RETRY_AFTER_S = 1

_BASE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def page_csp(html: str) -> str:
    """The CSP that lets ``html`` run its inline ``<script>`` and ``<style>`` blocks (by their
    SHA-256) and nothing else: no remote code, no injected inline code."""

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
            for b in bodies
        )

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "img-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


@dataclass
class Load:
    """What ``/predict`` holds right now; read by ``/health`` (no lock: one event loop)."""

    max_queue: int
    max_buffered_bytes: int
    in_flight: int = 0
    buffered_bytes: int = 0
    refused_busy: int = 0  # 503s since start (queue full or upload memory full)

    def take_bytes(self, n: int) -> bool:
        """Reserve ``n`` bytes of upload memory; False (nothing reserved) when over budget."""
        if self.buffered_bytes + n > self.max_buffered_bytes:
            return False
        self.buffered_bytes += n
        return True

    def give_bytes(self, n: int) -> None:
        self.buffered_bytes -= n

    def to_dict(self) -> dict:
        return {
            "in_flight": self.in_flight,
            "max_queue": self.max_queue,
            "buffered_mb": round(self.buffered_bytes / 2**20, 1),
            "refused_busy": self.refused_busy,
        }


class Guard:
    """ASGI middleware: admission of ``POST /predict`` and security headers (module docstring)."""

    def __init__(self, app, load: Load, page_path: str = "/", page_policy: str = API_CSP) -> None:
        self.app = app
        self.load = load
        self.page_path = page_path
        self.page_headers = [*_BASE_HEADERS, (b"content-security-policy", page_policy.encode())]
        self.api_headers = [*_BASE_HEADERS, (b"content-security-policy", API_CSP.encode())]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.page_headers if scope["path"] == self.page_path else self.api_headers

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        if scope["path"] != "/predict" or scope["method"] != "POST":
            await self.app(scope, receive, send_with_headers)
            return
        load = self.load
        if load.in_flight >= load.max_queue:
            load.refused_busy += 1
            await busy(
                send_with_headers,
                f"server busy: {load.in_flight} requests in flight (serve.max_queue); "
                f"retry in {RETRY_AFTER_S} s",
            )
            return
        load.in_flight += 1
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            load.in_flight -= 1


async def busy(send, detail: str) -> None:
    """A 503 with ``Retry-After``, sent without touching the request body."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(RETRY_AFTER_S).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
