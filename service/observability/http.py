"""Counts and times every HTTP request by its route's template, as ASGI middleware.

The label is the path as the route declares it (`/jobs/{job_id}`), never the path asked for:
a label per job id would grow without bound. The router records the route it matched in the
request's scope; a request answered before routing (a 401 from the auth, a 413 from the
limits) is matched here against the same routes; a path no route takes is `unmatched`. A
method outside HTTP's usual ones is `other`, for the same reason.

Latency runs from the request's arrival to its response's headers: for the JSON routes
that is the whole work (the body is ready before the headers go); an event stream's
headers go at once, and its open life is in `tapefit_http_requests_in_progress`.
"""

from __future__ import annotations

import time

from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.observability.metrics import ServiceMetrics

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# nginx's word for a client that went away before it was answered.
CLIENT_CLOSED = "499"


class HttpMetrics:
    """Records each HTTP request in `metrics` once its response starts (or fails)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self._record(scope, str(status), time.perf_counter() - started)
            await send(message)

        self.metrics.http_in_progress.inc()
        try:
            await self.app(scope, receive, send_and_record)
        except Exception:
            if status is None:  # Starlette's outermost layer answers it with a 500
                self._record(scope, "500", time.perf_counter() - started)
            raise
        except BaseException:  # cancelled: the client went, or the server is stopping
            if status is None:
                self._record(scope, CLIENT_CLOSED, time.perf_counter() - started)
            raise
        else:
            if status is None:
                self._record(scope, CLIENT_CLOSED, time.perf_counter() - started)
        finally:
            self.metrics.http_in_progress.dec()

    def _record(self, scope: Scope, status: str, seconds: float) -> None:
        method = scope["method"] if scope["method"] in METHODS else "other"
        route = route_template(scope)
        self.metrics.http_requests.labels(method, route, status).inc()
        self.metrics.http_duration.labels(method, route).observe(seconds)


def route_template(scope: Scope) -> str:
    """The template of the route that takes this request, or `unmatched`."""
    route = scope.get("route")  # set by FastAPI's router once it matched
    if route is not None:
        return route.path
    partial = None
    for candidate in _routes(scope.get("app")):
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return _template(candidate)
        if match is Match.PARTIAL and partial is None:
            partial = candidate  # the path matched, the method did not: a 405
    return _template(partial) if partial is not None else UNMATCHED


def _routes(app: object) -> list[BaseRoute]:
    """The app's routes, those of included routers among them (FastAPI keeps an included
    router as one entry that matches anything under it until it is called)."""
    cached = getattr(getattr(app, "state", None), "flat_routes", None)
    if cached is not None:
        return cached
    flat: list[BaseRoute] = []
    pending = list(getattr(getattr(app, "router", None), "routes", ()))
    while pending:
        route = pending.pop(0)
        included = getattr(route, "original_router", None)
        if included is not None:
            pending[:0] = included.routes
        else:
            flat.append(route)
    if app is not None:
        app.state.flat_routes = flat  # type: ignore[attr-defined]  # routes are fixed by now
    return flat


def _template(route: BaseRoute) -> str:
    path: str = getattr(route, "path", UNMATCHED)
    if isinstance(route, Mount):
        return f"{path}/{{path}}"  # the static files: one label for all of them
    return path
