"""Request limits for the whole API, as ASGI middleware in front of every route:

- a body larger than `max_bytes` is refused with 413, whether it declares its length or comes
  chunked (counted as the app reads it, so it is never held in memory whole);
- a body of a media type no route reads is refused with 415 naming the ones that work.
  The TF Serving and KServe protocol paths are exempt: their clients (tritonclient, `curl -d`
  in TF Serving's own examples) often send JSON with no or another Content-Type.

Routes may enforce tighter limits of their own (an image upload's 5 MB, say).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.api.responses import is_protocol_path

# What the routes read: JSON, image uploads, and the KServe binary tensor extension.
ACCEPTED_TYPES = ("application/json", "multipart/form-data", "application/octet-stream")


class _TooLarge(Exception):
    pass


class RequestLimits:
    """413 for bodies over `max_bytes`, 415 for media types no route reads."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, *, uploads: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Paths that take larger bodies (dataset uploads, streamed to disk): their own limit.
        self.uploads = uploads or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        has_body = chunked or (length is not None and length.strip() not in (b"", b"0"))
        protocol = is_protocol_path(scope["path"])
        if has_body and not protocol and not _accepted(headers.get(b"content-type", b"")):
            await _refuse(scope, receive, send, 415,
                          "send the body as application/json (or multipart/form-data for "
                          "an image, application/octet-stream for binary tensors)")
            return
        max_bytes = self.uploads.get(scope["path"], self.max_bytes)
        if length is not None and length.strip().isdigit() and int(length) > max_bytes:
            await _refuse(scope, receive, send, 413, self._message(max_bytes))
            return

        received = 0
        too_large = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Once the limit tripped, whatever the app answers (FastAPI turns a failed body
            # read into a 400) gives way to the 413 below.
            if not too_large:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            pass
        if too_large:
            await _refuse(scope, receive, send, 413, self._message(max_bytes))

    def _message(self, max_bytes: int) -> str:
        return f"the request body is over the limit of {max_bytes:,} bytes"


def _accepted(content_type: bytes) -> bool:
    media_type = content_type.split(b";")[0].strip().lower().decode("latin-1")
    return media_type in ACCEPTED_TYPES or media_type.endswith("+json")


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    await error_response(scope["path"], status, message)(scope, receive, send)
