"""Who is asking, for every route but the health probes, as ASGI middleware: a route added
later is protected without anyone remembering to.

Clients send `Authorization: Bearer <token>`: the admin token (TAPEFIT_API_TOKEN) or an API
key's (service/tenancy/keys.py). Browsers cannot add that header to a page load, so `Basic`
with the token as the password is accepted too, and a browser asking for a page is offered
it: the browser prompts once, then sends it with every request to the origin, the
dashboard's fetches and event streams included.

The identity found (service/tenancy/identity.py) goes in the ASGI scope under `IDENTITY`;
routes read it through service/api/deps.py. A server without an admin token has no such
middleware: it is open, and every request is the admin's (deps.get_identity).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from functools import partial

import anyio.to_thread
from sqlalchemy.exc import OperationalError
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import DATABASE_BUSY, error_response
from service.db import Database
from service.tenancy import keys
from service.tenancy.identity import Identity

# Probes that orchestrators call without credentials.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
# Where the request's Identity is kept in the ASGI scope.
IDENTITY = "tapefit.identity"


class TokenAuth:
    """Resolves the request's token to an Identity; refuses requests without a valid one
    with 401 and a WWW-Authenticate challenge."""

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
        try:
            # The app's database (Starlette puts the app in the scope before any middleware).
            database: Database = scope["app"].state.database
            identity = await self._identify(headers.get(b"authorization", b""), database)
        except OperationalError:  # the key could not be looked up: the client may retry
            response = error_response(scope["path"], 503, DATABASE_BUSY,
                                      headers={"Retry-After": "1"})
            await response(scope, receive, send)
            return
        if identity is not None:
            scope[IDENTITY] = identity
            await self.app(scope, receive, send)
            return
        wants_page = b"text/html" in headers.get(b"accept", b"")
        challenge = 'Basic realm="tapefit"' if wants_page else 'Bearer realm="tapefit"'
        response = error_response(
            scope["path"], 401,
            "missing, wrong or revoked token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": challenge},
        )
        await response(scope, receive, send)

    async def _identify(self, authorization: bytes, database: Database) -> Identity | None:
        offered = _offered(authorization)
        if offered is None:
            return None
        # Constant time, so the response time tells nothing about how much of a guess matched.
        if hmac.compare_digest(offered, self._token):
            return Identity.ADMIN
        if not offered.startswith(keys.TOKEN_PREFIX.encode() + b"_"):
            return None
        try:
            token = offered.decode("ascii")
        except UnicodeDecodeError:
            return None
        # A database read: in a worker thread, never on the event loop.
        return await anyio.to_thread.run_sync(
            partial(keys.authenticate, database=database, token=token)
        )


def _offered(authorization: bytes) -> bytes | None:
    """The token an Authorization header offers: Bearer, or Basic's password."""
    scheme, _, credentials = authorization.partition(b" ")
    scheme = scheme.lower()
    if scheme == b"bearer":
        return credentials.strip()
    if scheme == b"basic":
        try:
            return base64.b64decode(credentials.strip(), validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            return None
    return None
