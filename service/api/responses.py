"""The error responses routes declare, so the OpenAPI schema names every status they send."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing, wrong or revoked token (when the server has one)",
    403: "The API key lacks the scope this needs (the message names it)",
    404: "No such job or model",
    405: "A method this path does not take (see Allow)",
    409: "The job's state does not allow it",
    413: "The body is over the limit",
    415: "A body of a media type the route does not read",
    422: "Invalid input; `message` names the field",
    429: "Over one of the API key's quotas; retry after Retry-After seconds",
    503: "The database is busy or unreachable; retry after Retry-After seconds",
}


class ErrorRead(BaseModel):
    detail: Any
    message: str | None = None


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that may answer with these error codes."""
    return {code: {"model": ErrorRead, "description": DESCRIPTIONS[code]} for code in codes}


def is_protocol_path(path: str) -> bool:
    """Under TF Serving's (/v1) or KServe V2's (/v2) prefix, where errors are {"error": ...}."""
    return path in ("/v1", "/v2") or path.startswith(("/v1/", "/v2/"))


class ProtocolErrorRead(BaseModel):
    """TF Serving's and KServe's error body."""

    error: str


def protocol_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for the TF Serving and KServe routes, whose errors are {"error": ...}."""
    return {code: {"model": ProtocolErrorRead, "description": DESCRIPTIONS[code]} for code in codes}



def allowed_methods(path: str, routes: Iterable[object]) -> str:
    """The `Allow` of a 405: every method some route takes at `path`. Starlette names only
    the first route it matched, and `GET /jobs` and `POST /jobs` are two routes."""
    methods: set[str] = set()
    for route in routes:
        regex = getattr(route, "path_regex", None)  # a Route; routers and mounts have none
        if regex is not None and regex.match(path):
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))
