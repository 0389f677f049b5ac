"""Browser safety for the whole API, as ASGI middleware in front of every route.

A browser that holds the token (Basic auth it was offered, see auth.py) sends it with any
request to this origin, including one another site's page makes: a form posted to
`/jobs/1/cancel`, say. So a request that changes state (POST, PUT, PATCH, DELETE) is refused
when it comes from another site:

- 403 when the browser says so: `Sec-Fetch-Site` other than `same-origin` or `none`, or an
  `Origin` whose host and port are not this server's (`Host`, or `X-Forwarded-Host` behind a
  proxy). curl, httpx and tritonclient send neither header and are not affected.
- 415 for the media types a page can send to another site without asking (a form's
  urlencoded, multipart and text/plain) where a route reads JSON, even with no body at all:
  the only multipart a route reads is an image for `/jobs/{id}/predict`, and a dataset for
  `/datasets`. The TF Serving and
  KServe paths are left to the Origin check: their clients post JSON as `curl -d` does, as a
  form.

Every response also carries headers that keep a page from being framed, sniffed or leaking
its address, and a Content-Security-Policy: the dashboard loads only its own files and runs
no inline script. FastAPI's docs pages load Swagger UI and ReDoc from their CDN and start
them with an inline script, so theirs allows those, and that script by its hash alone.
"""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.api.responses import is_protocol_path

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a page may send to another origin without a CORS preflight (which this server never
# grants): fetch's "CORS-safelisted" request content types.
FORM_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)
_UPLOAD_PATH = re.compile(r"/jobs/[^/]+/predict|/datasets")

POLICY = (
    "default-src 'self'; base-uri 'none'; object-src 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
_CDN = "https://cdn.jsdelivr.net"
_DOCS_POLICY = (
    "default-src 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'; "
    f"script-src 'self' {_CDN}{{hashes}}; worker-src 'self' blob:; "
    # ReDoc styles itself inline and asks Google for its fonts.
    f"style-src 'self' {_CDN} https://fonts.googleapis.com 'unsafe-inline'; "
    f"font-src 'self' https://fonts.gstatic.com; img-src 'self' data: {_CDN} "
    "https://fastapi.tiangolo.com"
)
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)

HEADERS = {
    "X-Frame-Options": "DENY",  # frame-ancestors 'none' for browsers without CSP level 2
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class BrowserSafety:
    """403 for cross-site state changes, 415 for form bodies where JSON is read, and the
    security headers on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        docs = path in DOCS_PATHS
        send = _DocsPolicy(send) if docs else _with_headers(send, POLICY)
        if scope["method"] not in SAFE_METHODS:
            headers = Headers(scope=scope)
            refusal = cross_site(headers) or _form_where_json(path, headers)
            if refusal is not None:
                status, message = refusal
                await error_response(path, status, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def cross_site(headers: Headers) -> tuple[int, str] | None:
    """(403, why) when a browser made this request for a page of another site, else None."""
    fetch_site = headers.get("sec-fetch-site", "").strip().lower()
    if fetch_site not in ("", "same-origin", "none"):
        return 403, (f"cross-site request refused: the browser says it comes from a "
                     f"{fetch_site} page (Sec-Fetch-Site), and only this server's own pages "
                     "may change state")
    origin = headers.get("origin")
    if origin is None:
        return None  # not a browser, or a browser's own navigation: nothing to forge
    served = [h for h in (headers.get("host"), _first(headers.get("x-forwarded-host"))) if h]
    if any(_same_origin(origin, host) for host in served):
        return None
    return 403, (f"cross-site request refused: Origin {origin[:100]!r} is not this server "
                 f"({(served or ['no Host'])[0][:100]}); only this server's own pages may "
                 "change state")


def _same_origin(origin: str, host: str) -> bool:
    # The browser omits a scheme's default port from Origin, a proxy may write it in Host.
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (a sandboxed frame, a file), or no origin at all
    default = ":443" if parts.scheme == "https" else ":80"
    return parts.netloc.lower().removesuffix(default) == host.strip().lower().removesuffix(default)


def _first(value: str | None) -> str | None:
    return value.split(",")[0] if value else None


def _form_where_json(path: str, headers: Headers) -> tuple[int, str] | None:
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in FORM_TYPES or is_protocol_path(path):
        return None
    if media_type == "multipart/form-data" and _UPLOAD_PATH.fullmatch(path):
        return None
    return 415, (f"a {media_type} request is refused here: send application/json (a form "
                 "is accepted only for an image to /jobs/{id}/predict and a dataset to "
                 "/datasets)")


def _with_headers(send: Send, policy: str) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            headers.setdefault("Content-Security-Policy", policy)
            for name, value in HEADERS.items():
                headers.setdefault(name, value)
        await send(message)

    return send_with_headers


class _DocsPolicy:
    """Holds a docs page until its body is complete, to allow its inline scripts by hash."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.body: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self.send(message)
            return
        self.body.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        content = b"".join(self.body)
        hashes = "".join(
            " 'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
            for script in _INLINE_SCRIPT.findall(content)
        )
        start, self.start, self.body = self.start, None, []
        await _with_headers(self.send, _DOCS_POLICY.format(hashes=hashes))(start)
        await self.send({"type": "http.response.body", "body": content})
