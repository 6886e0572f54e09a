"""Connection hygiene for ``visionops serve``: uvicorn (httptools) with deadlines on idle sockets.

uvicorn alone never times out a connection that sends nothing or half a header (its keep-alive
timer only starts after a first response), and its ``limit_concurrency`` counts open sockets, so
260 silent sockets made every route answer 503 (issue 12). :class:`GuardedHttpToolsProtocol`
adds one timer per connection:

- a new connection must deliver a complete request head (request line + headers) within
  ``header_timeout`` seconds of connecting; a kept-alive one within ``header_timeout`` of the
  first byte of its next request (uvicorn's own ``timeout_keep_alive`` covers the idle gap
  before that byte);
- when the app answered before the body was read (503 busy, 413, 504), the rest of the body
  must arrive within ``header_timeout`` (uvicorn discards it); after that the connection is
  idle again and closes after ``keep_alive`` seconds.

A head that started but never finished gets ``408``; a socket that never sent a byte is just
closed. Capacity is limited per request in flight by the app (:mod:`visionops.serve.guards`),
never per socket: ``limit_concurrency`` stays off. Why uvicorn rather than granian or hypercorn
(which have such timeouts built in) is measured in docs/BENCHMARKS.md ("Serving under hostile
traffic"). The hooks used here (``connection_made``, ``on_message_begin``,
``on_headers_complete``, ``on_message_complete``, ``on_response_complete``,
``connection_lost``) are uvicorn's parser callbacks; ``tests/e2e/test_serve_hostile.py`` fails
if an upgrade changes them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_408_BODY = b"request head not received in time\n"
REQUEST_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_408_BODY), _408_BODY)
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the deadlines described in the module docstring."""

    header_timeout: float = 5.0  # set by :func:`protocol_class`
    keep_alive: float = 5.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._head_started = False
        super().connection_made(transport)
        self._arm(self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        if self._deadline is None:  # a kept-alive connection: its next request has begun
            self._arm(self.header_timeout)

    def on_headers_complete(self) -> None:
        self._disarm()  # from here the app's own deadline (serve.timeout_seconds) applies
        self._head_started = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        answered_early = self.cycle is not None and self.cycle.response_complete
        super().on_message_complete()
        if answered_early and not self.transport.is_closing():
            self._arm(self.keep_alive)  # the unread body is drained: idle again

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self._arm(self.header_timeout)  # answered before the body ended: drain, briefly

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._head_started:
            self.transport.write(REQUEST_TIMEOUT_408)
        self.transport.close()


def protocol_class(header_timeout: float, keep_alive: float) -> type[GuardedHttpToolsProtocol]:
    """:class:`GuardedHttpToolsProtocol` with these deadlines (uvicorn takes a class)."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout": float(header_timeout), "keep_alive": float(keep_alive)},
    )


def uvicorn_server(app: Any, host: str, port: int, header_timeout: float, keep_alive: float):
    """The ``uvicorn.Server`` that ``visionops serve`` (and its tests) run ``app`` with.

    No ``limit_concurrency`` (it counts sockets; the app limits requests in flight), no access
    log (a line per request costs ~0.3 ms of CPU at 150 req/s), graceful shutdown within 10 s.
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(header_timeout, keep_alive),
        loop="asyncio",
        log_config=None,
        access_log=False,
        timeout_keep_alive=max(1, round(keep_alive)),
        timeout_graceful_shutdown=10,
        backlog=2048,
        server_header=False,
    )
    return uvicorn.Server(config)


def raise_fd_limit(wanted: int = 4096) -> int:
    """Lift the soft open-files limit towards ``wanted`` (never above the hard limit): each
    socket is a file descriptor, and 1024 (a common default) is few for a public service."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
