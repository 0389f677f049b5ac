"""Property-based: schemathesis generates requests from the OpenAPI schema, valid and not, and
runs all its checks in-process through ASGI: no server error, no invalid input accepted, no
response that breaks the schema. No worker runs here, so no submitted job ever trains."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.api.app import create_app
from service.migrate import upgrade
from tests.helpers.fuzz import EXCLUDED_CHECKS
from tests.helpers.settings import make_settings

pytestmark = pytest.mark.slow  # real processes or a long generated run

EXAMPLES_PER_OPERATION = 25
# The same examples every run, so the suite fails only on a real regression. To explore with
# fresh ones: TAPEFIT_FUZZ_EXPLORE=1 make test (each such finding so far was a real bug).
DERANDOMIZE = os.environ.get("TAPEFIT_FUZZ_EXPLORE") != "1"

_CHECKS = {"positive_data_acceptance": positive_data_acceptance,
           "not_a_server_error": not_a_server_error}


def test_every_operation_keeps_its_contract(tmp_path: Path) -> None:
    app_settings = make_settings(tmp_path / "data")
    upgrade(app_settings.sqlalchemy_url)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(app_settings))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    for operation in operations:
        try:
            check_operation(operation)
        except Exception as exc:
            exc.add_note(f"operation: {operation.label}")
            raise


def check_operation(operation: schemathesis.APIOperation) -> None:
    """Every check of schemathesis on generated requests to one operation."""
    excluded = [_CHECKS[name] for name in EXCLUDED_CHECKS.get(operation.label, [])]

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(excluded_checks=excluded)

    check()


# What the live run (tests/e2e/test_fuzz_live.py) found, kept as fixed examples.


def test_a_body_that_is_not_utf8_is_a_422(client: TestClient) -> None:
    response = client.post("/jobs", content=b",\xff",
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert response.json()["message"].startswith("body: the body is not JSON text")
    assert client.get("/jobs").json()["total"] == 0


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/jobs", "GET, POST"),  # two routes, one path
        ("DELETE", "/jobs/1/cancel", "POST"),
        ("OPTIONS", "/v1/models/3:predict", "POST"),  # not the status of a model "3:predict"
        ("GET", "/v1/models/3/versions/3:predict", "POST"),
        ("PUT", "/v1/models/3", "GET"),
        ("OPTIONS", "/keys/me", "GET"),  # found by the live fuzz: "me" is no key's id
        ("OPTIONS", "/keys/4", "DELETE"),
    ],
)
def test_a_405_allows_every_method_of_the_path(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405, response.text
    assert response.headers["Allow"] == allow
