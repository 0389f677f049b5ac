"""Token auth for every route but the health probes, as ASGI middleware: a route added
later is protected without anyone remembering to.

Clients send `Authorization: Bearer <token>`. Browsers cannot add that header to a page
load, so `Basic` with the token as the password is accepted too, and a browser asking for a
page is offered it: the browser prompts once, then sends it with every request to the
origin, the dashboard's fetches and event streams included.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response

# Probes that orchestrators call without credentials.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})


class TokenAuth:
    """Refuses requests without the token with 401 and a WWW-Authenticate challenge."""

    def __init__(
        self, app: ASGIApp, token: str, public_paths: frozenset[str] = PUBLIC_PATHS
    ) -> None:
        self.app = app
        self._token = token.encode()
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self._valid(headers.get(b"authorization", b"")):
            await self.app(scope, receive, send)
            return
        wants_page = b"text/html" in headers.get(b"accept", b"")
        challenge = 'Basic realm="tapefit"' if wants_page else 'Bearer realm="tapefit"'
        response = error_response(
            scope["path"], 401, "missing or wrong token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": challenge},
        )
        await response(scope, receive, send)

    def _valid(self, authorization: bytes) -> bool:
        scheme, _, credentials = authorization.partition(b" ")
        scheme = scheme.lower()
        if scheme == b"bearer":
            offered = credentials.strip()
        elif scheme == b"basic":
            try:
                offered = base64.b64decode(credentials.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return False
        else:
            return False
        # Constant time, so the response time tells nothing about how much of a guess matched.
        return hmac.compare_digest(offered, self._token)
