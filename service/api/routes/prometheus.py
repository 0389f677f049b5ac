"""GET /metrics: the service's metrics for Prometheus (service/observability/metrics.py).
Not to be confused with a job's loss rows, GET /jobs/{id}/metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

router = APIRouter(tags=["observability"])

_TEXT = {"text/plain": {"schema": {"type": "string"}}}


@router.get("/metrics", response_class=Response, responses={200: {"content": _TEXT}})
def prometheus_metrics(request: Request) -> Response:
    """Jobs by state, queue depth and age, live workers, requeues and loss rows (read from
    the database), HTTP requests and predictions (this process), in Prometheus' format."""
    content, media_type = request.app.state.metrics.render(request.headers.get("accept", ""))
    return Response(content, media_type=media_type)
