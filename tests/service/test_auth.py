"""Token auth: walks every route the app has, so a route added later without auth fails here."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.routing import Mount, Route

from service.api.app import ROUTERS, create_app
from service.api.middleware.auth import PUBLIC_PATHS
from service.config import Settings
from service.db import Database

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def secured(settings: Settings, database: Database) -> Iterator[TestClient]:
    secured_settings = settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    with TestClient(create_app(secured_settings)) as client:
        yield client


def every_request(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) for every route of every router and of the app itself (docs, static
    files, health), path parameters filled in."""
    routes = [route for router in ROUTERS for route in router.routes] + list(client.app.routes)
    requests = set()
    for route in routes:
        if isinstance(route, Mount):
            requests.add(("GET", route.path + "/"))
        elif isinstance(route, APIRoute | Route):
            path = re.sub(r"\{[^}]+\}", "1", route.path)
            requests.update((method, path) for method in route.methods or {"GET"}
                            if method != "HEAD")
    return sorted(requests)


def test_every_route_but_the_probes_needs_the_token(secured: TestClient) -> None:
    requests = every_request(secured)
    assert len(requests) > 30
    checked = 0
    for method, path in requests:
        if path in PUBLIC_PATHS:
            continue
        response = secured.request(method, path)
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = secured.request(method, path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, (method, path)
        right = secured.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code != 401, (method, path)
        checked += 1
    assert checked >= len(requests) - len(PUBLIC_PATHS)


@pytest.mark.parametrize("path", sorted(PUBLIC_PATHS))
def test_health_probes_need_no_token(secured: TestClient, path: str) -> None:
    # /readyz answers 503 while no worker is alive: either way, it answers without a token.
    assert secured.get(path).status_code in ((200, 503) if path == "/readyz" else (200,))


def test_a_browser_is_offered_basic_auth_with_the_token_as_password(secured: TestClient) -> None:
    page = secured.get("/docs", headers={"Accept": "text/html"})
    assert page.status_code == 401
    assert page.headers["WWW-Authenticate"] == 'Basic realm="tapefit"'
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    assert secured.get("/jobs", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    wrong = base64.b64encode(b"anyone:guess").decode()
    assert secured.get("/jobs", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    assert secured.get("/jobs", headers={"Authorization": "Basic !!!"}).status_code == 401


def test_without_a_token_setting_everything_is_open(client: TestClient) -> None:
    assert client.get("/jobs").status_code == 200


def test_a_short_token_is_refused_at_start(settings: Settings) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        Settings(data_dir=settings.data_dir, api_token="short")
