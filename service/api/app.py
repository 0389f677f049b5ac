"""The FastAPI application: routers, shared state, middleware and the error table (errors.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response

from service.api import errors
from service.api.middleware.auth import PUBLIC_PATHS, TokenAuth
from service.api.middleware.limits import RequestLimits
from service.api.middleware.security import BrowserSafety
from service.api.routes import (
    datasets,
    events,
    jobs,
    kserve_v2,
    metrics,
    predict,
    prometheus,
    studies,
    tfserving,
    ui,
)
from service.api.routes import keys as key_routes
from service.config import Settings, get_settings
from service.datasets.upload import FORM_OVERHEAD as DATASET_FORM_OVERHEAD
from service.db import Database
from service.observability.http import HttpMetrics
from service.observability.metrics import ObservedCatalog, ServiceMetrics
from service.queue import workers
from service.queue.event_hub import EventHubs
from service.queue.sweeper import sweep_forever
from service.schemas import Readiness
from service.serving.store import ModelStore
from service.studies.driver import drive_forever

ROUTERS = (
    jobs.router,
    key_routes.router,
    studies.router,
    metrics.router,
    events.router,
    predict.router,
    tfserving.router,
    kserve_v2.router,
    ui.router,
    datasets.router,
    prometheus.router,
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for `settings` (the environment's by default). The schema must be migrated."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(
            sweep_forever(app.state.database, settings, after=app.state.catalog.after_sweep)
        )
        # Its own engine: a pass never waits for a request's connection, nor they for it.
        driver_database = Database(settings.sqlalchemy_url,
                                   busy_timeout=settings.sqlite_busy_timeout)
        study_driver = asyncio.create_task(
            drive_forever(driver_database, settings.study_interval)
        )
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        study_driver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await study_driver
        driver_database.dispose()
        await app.state.event_hubs.close()
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
    app.state.metrics = ServiceMetrics(app.state.database)
    app.state.catalog = ObservedCatalog(
        metrics=app.state.metrics,
        database=app.state.database,
        store=ModelStore(settings.models_dir, settings.model_cache_size),
    )
    app.state.event_hubs = EventHubs(app.state.database, max_streams=settings.max_streams)

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

    errors.install(app, ROUTERS)
    # The last added runs first: auth refuses a stranger before the limits read anything.
    app.add_middleware(RequestLimits, max_bytes=settings.max_request_bytes, uploads={
        "/datasets": settings.max_dataset_bytes + DATASET_FORM_OVERHEAD})
    if settings.api_token is not None:
        public = PUBLIC_PATHS | ({"/metrics"} if settings.metrics_public else set())
        app.add_middleware(TokenAuth, token=settings.api_token.get_secret_value(),
                           public_paths=public)
    app.add_middleware(BrowserSafety)  # its headers go on every answer, 401s too
    app.add_middleware(HttpMetrics, metrics=app.state.metrics)  # outermost: counts them all
    return app
