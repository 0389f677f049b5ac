"""The HTTP server: uvicorn on uvloop and httptools (its C event loop and HTTP parser), with
every connection limit set explicitly, and deadlines for a request's head and for a stalled
body, and a bound on the head's size, which uvicorn's httptools protocol lacks.

Without them, a client that sends half a request line or its headers a byte at a time (a
"slowloris"), or a body that stops half-way, holds its connection open for as long as it
likes: uvicorn's keep-alive timeout only runs between requests and stops at the first byte of
the next. A few thousand such connections use up the process's file descriptors and nobody
else can connect. And httptools hands uvicorn every header it parses, however many: a head
that never ends would grow in memory until the deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.config import Settings

log = logging.getLogger("tapefit.server")

# An idle keep-alive connection is closed this many seconds after its last response.
KEEP_ALIVE_TIMEOUT_S = 5
# The largest request head (request line and headers); past it, a 400.
MAX_HEAD_BYTES = 16 * 1024
# Connections the kernel queues while the server is busy accepting (capped by somaxconn).
BACKLOG = 2048
# Ctrl-C waits this long for open requests, then cuts them: an event stream (a dashboard left
# open on a running job) would otherwise hold the server up until its job ends. Its clients
# reconnect with Last-Event-ID and lose nothing.
SHUTDOWN_GRACE_S = 5

_TIMEOUT_BODY = b"the request line and headers did not arrive in time\n"
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class HeadDeadlineHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus two deadlines of `head_timeout` seconds and a bound:

    - a request's line and headers must arrive within it, from the connection opening (on a
      kept-alive connection, from the next request's first byte), or the connection gets a
      408 and is closed;
    - a request's body may not stall for longer than it (no byte while the server waits for
      one), or the connection is closed. Time the server spends not reading, because the app
      has not taken what came, does not count;
    - a head still unfinished after MAX_HEAD_BYTES is answered 400 and the connection closed.

    The response is not bounded by them: an event stream may last as long as its job.
    httptools calls the on_* methods from within `data_received`, as it parses.
    """

    head_timeout: float = 10.0
    _deadline: asyncio.TimerHandle | None = None
    _in_head = True  # waiting for a request's line and headers, or reading them
    _head_bytes = 0  # bytes received since the last request was complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            # The first bytes of a kept-alive connection's next request start its deadline
            # (the keep-alive timeout, which closes an idle connection, stops at them).
            if self._deadline is None:
                self._arm(self._head_timed_out)
            self._head_bytes += len(data)
        super().data_received(data)
        if (self._in_head and self._head_bytes > MAX_HEAD_BYTES
                and not self.transport.is_closing()):
            log.debug("closing a connection from %s: a request head over %d bytes",
                      self.client, MAX_HEAD_BYTES)
            self._disarm()
            self.send_400_response("Request head too large.")  # and closes

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self._body_stalled)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm(self._body_stalled)  # each piece of the body restarts it

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()  # the whole request is in: the next one's head has its own deadline
        self._in_head, self._head_bytes = True, 0

    def _arm(self, callback: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.head_timeout, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or not self._in_head:
            return
        log.debug("closing a connection from %s: no complete request head in %g s",
                  self.client, self.head_timeout)
        # No request was parsed to answer, so the response is written as is.
        self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()

    def _body_stalled(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self._in_head:
            return
        if self.flow.read_paused:  # the app has not read what came: not the client's fault
            self._arm(self._body_stalled)
            return
        log.debug("closing a connection from %s: its request body stalled for %g s",
                  self.client, self.head_timeout)
        # The app sees the client go (http.disconnect), as when a client hangs up.
        self.transport.close()


def protocol_with_head_timeout(head_timeout: float) -> type[HeadDeadlineHttpTools]:
    """HeadDeadlineHttpTools with its deadlines set (uvicorn makes one per connection)."""
    return type("HeadDeadlineHttpTools", (HeadDeadlineHttpTools,),
                {"head_timeout": head_timeout})


def run_api(app: FastAPI, *, host: str, port: int, settings: Settings) -> None:
    """Serve `app` until SIGINT or SIGTERM, with the limits above and the settings'."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        # JSON logs: uvicorn's loggers go to the root handler (service/observability/logs.py)
        # instead of its own text handlers.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        http=protocol_with_head_timeout(settings.header_timeout),
        loop="uvloop",
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT_S,
        # Past this many open connections (or requests in flight), uvicorn answers new
        # requests with 503 instead of taking on more.
        limit_concurrency=settings.max_connections,
        backlog=BACKLOG,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
