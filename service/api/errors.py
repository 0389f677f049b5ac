"""One table for every error the API answers, and one formatter.

Each domain exception has a native status and a status under the model-serving protocols
(TF Serving REST under /v1, KServe V2 under /v2): a model not trained yet is a 409 to the
native API and TF Serving's "servable not found" 404 to the protocols. Bodies:

- native: `{"detail": ..., "message": "..."}`; `message` is one sentence naming the
  problem, and for a 422 `detail` is the list of field errors;
- protocol paths: `{"error": "..."}`, which their clients parse.

Middleware refusals (auth, limits, cross-site) use `error_response` too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.responses import allowed_methods, is_protocol_path
from service.api.serving_deps import BodyTooLarge
from service.datasets.errors import (
    DatasetConflict,
    DatasetError,
    DatasetNotFound,
    DatasetTooLarge,
    NotMultipart,
)
from service.datasets.jobs import JobDatasetError
from service.db import is_disk_full, is_transient
from service.files import DiskFull
from service.queue.event_hub import RETRY_AFTER_S, StreamsFull
from service.queue.jobs import JobConflict, JobNotFound, JobTooLarge
from service.serving.catalog import ModelNotFound
from service.serving.imaging import ImageError, ImageTooLarge
from service.serving.store import BadInput, ModelUnavailable
from service.studies.trials import StudyConflict, StudyNotFound
from service.tenancy.identity import ScopeMissing
from service.tenancy.keys import KeyNotFound, KeysNeedAdminToken
from service.tenancy.quotas import RETRY_AFTER_S as QUOTA_RETRY_AFTER_S
from service.tenancy.quotas import QuotaExceeded

log = logging.getLogger("tapefit.api")

DISK_FULL = "the server's disk is full: nothing was changed; retry once space has been freed"


@dataclass(frozen=True)
class Answer:
    """How an exception is answered: its status natively and under the protocols; for input
    errors, the field a native 422 names; for a busy server, when to retry."""

    native: int
    protocol: int
    field: str | None = None
    retry_after: int | None = None
    message: str | None = None  # what the client reads, when the exception's text is for logs


TABLE: dict[type[Exception], Answer] = {
    JobNotFound: Answer(404, 404),
    ModelNotFound: Answer(404, 404),
    ModelUnavailable: Answer(409, 404),  # not trained yet (ModelNotReady), or unusable
    JobConflict: Answer(409, 409),
    StudyNotFound: Answer(404, 404),
    StudyConflict: Answer(409, 409),
    BadInput: Answer(422, 400, field="body"),
    ImageError: Answer(422, 400, field="file"),
    ImageTooLarge: Answer(413, 413),
    BodyTooLarge: Answer(413, 413),
    StreamsFull: Answer(503, 503, retry_after=RETRY_AFTER_S),
    JobTooLarge: Answer(422, 422, field="body"),
    ScopeMissing: Answer(403, 403),  # a key's own job or model, but a scope it lacks
    QuotaExceeded: Answer(429, 429, retry_after=QUOTA_RETRY_AFTER_S),
    KeyNotFound: Answer(404, 404),
    KeysNeedAdminToken: Answer(409, 409),
    DatasetError: Answer(422, 422, field="file"),
    DatasetTooLarge: Answer(413, 413),
    NotMultipart: Answer(415, 415),
    DatasetNotFound: Answer(404, 404),
    DatasetConflict: Answer(409, 409),
    JobDatasetError: Answer(422, 422),  # its message starts with the spec's field at fault
    # Waiting frees no space: no Retry-After, so clients are told what is wrong instead.
    DiskFull: Answer(507, 507, message=DISK_FULL),
}
DATABASE_BUSY = "the database is busy or unreachable; retry shortly"


def error_response(
    path: str,
    status: int,
    message: str,
    *,
    detail: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The error body for a request to `path`: the protocols' shape under /v1 and /v2."""
    if is_protocol_path(path):
        body: dict[str, Any] = {"error": message}
    else:
        body = {"detail": message if detail is None else detail, "message": message}
    return JSONResponse(body, status_code=status, headers=headers)


def answer_for(exc: Exception) -> Answer | None:
    """The table's row for `exc`, or for the nearest class it derives from."""
    for cls in type(exc).__mro__:
        if cls in TABLE:
            return TABLE[cls]
    return None


def install(app: FastAPI, routers: Iterable[APIRouter]) -> None:
    """Register the handlers of every error the API answers. `routers` are the app's: an
    included router's routes are not in `app.routes`, and a 405 names their methods too."""

    async def domain_error(request: Request, exc: Exception) -> Response:
        answer = answer_for(exc)
        path, message = request.url.path, answer.message or str(exc)
        if answer.native >= 500:
            log.error("%s: %s", type(exc).__name__, exc)
        headers = {"Retry-After": str(answer.retry_after)} if answer.retry_after else None
        if is_protocol_path(path):
            return error_response(path, answer.protocol, message, headers=headers)
        detail = None
        if answer.field is not None:
            detail = [{"loc": ["body", answer.field] if answer.field != "body" else ["body"],
                       "msg": message, "type": "value_error"}]
            message = f"{answer.field}: {message}"
        elif answer.native == 422:  # every 422's detail is the declared list of field errors
            detail = [{"loc": ["body"], "msg": message, "type": "value_error"}]
        return error_response(path, answer.native, message, detail=detail, headers=headers)

    for cls in TABLE:
        app.add_exception_handler(cls, domain_error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # The list of errors, and one sentence naming the first bad field; the offending
        # input is left out (it can be a whole request body).
        errors = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
        status = 400 if is_protocol_path(request.url.path) else 422
        return error_response(request.url.path, status, f"{where}: {first['msg']}",
                              detail=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        path, headers = request.url.path, exc.headers
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # FastAPI's answer to a body it could not decode (bytes that are not UTF-8): that
            # is invalid JSON to the client, a 422 shaped like every other.
            error = {"loc": ["body"], "msg": f"the body is not JSON text: {exc.__cause__}",
                     "type": "json_invalid"}
            return error_response(path, 422, f"body: {error['msg']}", detail=[error])
        if exc.status_code == 405:
            routes = [*app.routes, *(route for router in routers for route in router.routes)]
            headers = {**(headers or {}), "Allow": allowed_methods(path, routes)}
        message = str(exc.detail)
        if is_protocol_path(path) and exc.status_code in (404, 405):
            message = f"{message}: {request.method} {path}"  # name what was not found
        return error_response(path, exc.status_code, message, headers=headers)

    @app.exception_handler(OperationalError)
    async def database_error(request: Request, exc: OperationalError) -> Response:
        if is_disk_full(exc):
            log.error("the disk is full: %s", exc.orig)
            return error_response(request.url.path, 507, DISK_FULL)
        # SQLite gave up waiting for the write lock, or PostgreSQL is out of reach for a
        # moment: the client may retry shortly. Anything else is a real fault.
        if is_transient(exc):
            return error_response(request.url.path, 503, DATABASE_BUSY,
                                  headers={"Retry-After": "1"})
        raise exc
