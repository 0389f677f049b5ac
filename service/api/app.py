"""The FastAPI application: routers, shared state and the mapping of domain errors to HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import workers
from service.api.auth import TokenAuth
from service.api.limits import RequestLimits
from service.api.responses import allowed_methods, is_protocol_path
from service.api.routes import events, jobs, kserve_v2, metrics, predict, tfserving, ui
from service.api.security import BrowserSafety
from service.api.serving_deps import BodyTooLarge
from service.config import Settings, get_settings
from service.db import Database, is_disk_full, is_transient
from service.files import DiskFull
from service.imaging import ImageError, ImageTooLarge
from service.inference import ModelStore, ModelUnavailable
from service.jobs import JobConflict, JobNotFound
from service.schemas import Readiness
from service.serving import Catalog, ModelNotFound
from service.sweeper import sweep_forever

log = logging.getLogger("tapefit.api")

ROUTERS = (
    jobs.router,
    metrics.router,
    events.router,
    predict.router,
    tfserving.router,
    kserve_v2.router,
    ui.router,
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for `settings` (the environment's by default). The schema must be migrated."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(sweep_forever(app.state.database, settings))
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        app.state.database.dispose()

    app = FastAPI(
        title="tapefit",
        summary="Training as a service for TensorFlow: submit, watch, predict.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.database = Database(
        settings.sqlalchemy_url, busy_timeout=settings.sqlite_busy_timeout
    )
    app.state.catalog = Catalog(
        database=app.state.database,
        store=ModelStore(settings.models_dir, settings.model_cache_size),
    )

    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", ui.static_files(), name="static")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": Readiness}})
    def readyz(response: Response) -> Readiness:
        """Readiness: the database answers and a worker heartbeated within its lease timeout
        (503 saying which is missing)."""
        readiness = workers.readiness(database=app.state.database)
        response.status_code = 200 if readiness.status == "ready" else 503
        return readiness

    _add_error_handlers(app)
    # The last added runs first: auth refuses a stranger before the limits read anything.
    app.add_middleware(RequestLimits, max_bytes=settings.max_request_bytes)
    if settings.api_token is not None:
        app.add_middleware(TokenAuth, token=settings.api_token.get_secret_value())
    app.add_middleware(BrowserSafety)  # outermost: its headers go on every answer, 401s too
    return app


def _error(status_code: int, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status_code)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # FastAPI's answer to a body it could not decode (bytes that are not UTF-8): that
            # is invalid JSON to the client, a 422 shaped like every other.
            error = {"loc": ["body"], "msg": f"the body is not JSON text: {exc.__cause__}",
                     "type": "json_invalid"}
            return JSONResponse({"detail": [error], "message": f"body: {error['msg']}"},
                                status_code=422)
        if exc.status_code == 405:
            routes = [*app.routes, *(route for router in ROUTERS for route in router.routes)]
            allow = allowed_methods(request.url.path, routes)
            exc = StarletteHTTPException(405, exc.detail, {**(exc.headers or {}), "Allow": allow})
        # An unknown path or method under a protocol's prefix answers in that protocol's
        # error shape, {"error": ...}, which its clients parse; elsewhere FastAPI's own.
        if is_protocol_path(request.url.path):
            message = f"{exc.detail}: {request.method} {request.url.path}"
            return JSONResponse({"error": message}, status_code=exc.status_code,
                                headers=exc.headers)
        return await http_exception_handler(request, exc)

    @app.exception_handler(JobNotFound)
    @app.exception_handler(ModelNotFound)
    async def _not_found(_: Request, exc: Exception) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(ImageError)
    async def _bad_image(_: Request, exc: ImageError) -> JSONResponse:
        # Shaped like every other 422, as the schema declares it: the list of errors, and a
        # message naming what was wrong.
        error = {"loc": ["body", "file"], "msg": str(exc), "type": "value_error"}
        return JSONResponse({"detail": [error], "message": f"file: {exc}"}, status_code=422)

    @app.exception_handler(ImageTooLarge)
    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: Exception) -> JSONResponse:
        return _error(413, str(exc))

    @app.exception_handler(JobConflict)
    @app.exception_handler(ModelUnavailable)
    async def _conflict(_: Request, exc: Exception) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's list of errors, plus one sentence that names the first bad field.
        # The offending input is left out: it can be a whole request body.
        errors = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
        return JSONResponse(
            {"detail": errors, "message": f"{where}: {first['msg']}"}, status_code=422
        )

    @app.exception_handler(DiskFull)
    @app.exception_handler(OperationalError)
    async def _database_busy(_: Request, exc: Exception) -> JSONResponse:
        # A full disk is 507, not 503 with a Retry-After: waiting does not free space, so
        # clients are told what is wrong instead of being invited to retry in a second.
        if is_disk_full(exc):
            log.error("the disk is full: %s", getattr(exc, "orig", exc))
            return _error(507, "the server's disk is full: nothing was changed; retry once "
                               "space has been freed")
        # SQLite gave up waiting for the write lock, or PostgreSQL is out of reach for a
        # moment: the client may retry shortly. Anything else is a real fault.
        if isinstance(exc, OperationalError) and is_transient(exc):
            return JSONResponse(
                {"detail": "the database is busy or unreachable; retry shortly"},
                status_code=503,
                headers={"Retry-After": "1"},
            )
        raise exc
