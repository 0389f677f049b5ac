"""Browser safety: cross-site state changes refused, form bodies refused where JSON is read,
the security headers on every answer; and the one id rule on every route that takes an id."""

from __future__ import annotations

import base64
import hashlib
import io
import re

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from service.api.app import create_app
from service.config import Settings
from service.db import Database
from service.ids import MAX_ID
from service.schemas import JobState
from tests.helpers.serving import Trained, add_job

EVIL = "http://evil.example"
FORM_TYPES = ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
              "text/plain"]


def state(client: TestClient, job_id: int) -> str:
    return client.get(f"/jobs/{job_id}").json()["state"]


@pytest.mark.parametrize(
    "headers",
    [
        # The attack as a page sends it: a form with no fields, posted from another site.
        {"Origin": EVIL, "Content-Type": "application/x-www-form-urlencoded",
         "Content-Length": "0", "Sec-Fetch-Site": "cross-site"},
        {"Origin": EVIL},  # fetch(..., {method: "POST", mode: "no-cors"}): no body, no type
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain is another origin too
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Origin": "http://testserver:8000"},  # the same host on another port
        {"Origin": "https://testserver.evil.example"},
    ],
    ids=["form", "no-cors", "fetch-site", "same-site", "null", "other-port", "suffix"],
)
def test_a_cross_site_cancel_is_refused_and_the_job_stays_queued(
    client: TestClient, headers: dict[str, str]
) -> None:
    job_id = client.post("/jobs").json()["id"]
    response = client.post(f"/jobs/{job_id}/cancel", headers=headers)
    assert response.status_code == 403, response.text
    assert response.json()["detail"].startswith("cross-site request refused")
    assert state(client, job_id) == "queued"
    assert client.post("/jobs", headers=headers).status_code == 403
    assert client.get("/jobs").json()["total"] == 1


def test_a_browser_holding_the_token_is_refused_across_sites(
    settings: Settings, database: Database
) -> None:
    # The attack itself: the browser adds the Basic credentials it was given to the forged
    # request; the token is right, the origin is not.
    token = "s3cret-token-for-tests"
    basic = "Basic " + base64.b64encode(f"anyone:{token}".encode()).decode()
    secured = settings.model_copy(update={"api_token": SecretStr(token)})
    with TestClient(create_app(secured), headers={"Authorization": basic}) as client:
        job_id = client.post("/jobs").json()["id"]
        forged = client.post(f"/jobs/{job_id}/cancel", headers={
            "Origin": EVIL, "Content-Type": "application/x-www-form-urlencoded"})
        assert forged.status_code == 403
        assert state(client, job_id) == "queued"
        stranger = client.get("/jobs", headers={"Authorization": "Bearer wrong"})
        assert stranger.status_code == 401  # and its answer carries the headers too
        assert stranger.headers["X-Frame-Options"] == "DENY"
        own = client.post(f"/jobs/{job_id}/cancel", headers={"Origin": "http://testserver"})
        assert own.status_code == 200 and state(client, job_id) == "cancelled"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},  # the dashboard
        {"Origin": "http://TestServer"},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
        {"Origin": "https://api.example", "Host": "api.example:443"},  # a proxy kept the port
        {"Origin": "https://api.example", "X-Forwarded-Host": "api.example"},  # Host rewritten
        {},  # curl, httpx, the CLI, tritonclient: neither header
    ],
    ids=["dashboard", "case", "typed", "default-port", "forwarded-host", "curl"],
)
def test_a_same_origin_or_non_browser_cancel_works(
    client: TestClient, headers: dict[str, str]
) -> None:
    job_id = client.post("/jobs", headers=headers, json={}).json()["id"]
    response = client.post(f"/jobs/{job_id}/cancel", headers=headers)
    assert response.status_code == 200, response.text
    assert state(client, job_id) == "cancelled"


def test_a_cross_site_request_to_a_protocol_path_is_refused_in_its_shape(
    client: TestClient,
) -> None:
    response = client.post("/v1/models/1:predict", headers={"Origin": EVIL},
                           content=b'{"instances": [[0.0]]}')
    assert response.status_code == 403
    assert response.json()["error"].startswith("cross-site request refused")


@pytest.mark.parametrize("content_type", FORM_TYPES)
def test_a_form_type_where_json_is_read_is_415_even_without_a_body(
    client: TestClient, content_type: str
) -> None:
    job_id = client.post("/jobs").json()["id"]
    headers = {"Content-Type": content_type, "Content-Length": "0"}
    cancel = client.post(f"/jobs/{job_id}/cancel", headers=headers)
    assert cancel.status_code == 415, cancel.text
    assert "send application/json" in cancel.json()["detail"]
    assert state(client, job_id) == "queued"
    assert client.post("/jobs", headers=headers).status_code == 415
    assert client.get("/jobs").json()["total"] == 1


def png_of_a_one() -> bytes:
    image = np.full((28, 28), 255, np.uint8)
    image[4:24, 13:15] = 0  # a dark vertical stroke on white
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def test_a_same_origin_image_upload_is_still_a_form(served: TestClient, trained: Trained) -> None:
    blank = png_of_a_one()
    same = served.post("/jobs/best/predict", files={"file": ("d.png", blank, "image/png")},
                       headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200, same.text
    cross = served.post("/jobs/best/predict", files={"file": ("d.png", blank, "image/png")},
                        headers={"Origin": EVIL})
    assert cross.status_code == 403


def test_curl_d_still_reaches_tf_serving(served: TestClient, trained: Trained) -> None:
    # `curl -d '{...}'`, as TF Serving's own examples do, labels the JSON as a form.
    body = '{"instances": [[' + ",".join(["0.0"] * 784) + "]]}"
    response = served.post(f"/v1/models/{trained.good}:predict", content=body,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"][0]) == 10


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/favicon.svg", "/jobs",
                                  "/jobs/99", "/openapi.json"])
def test_every_answer_carries_the_security_headers(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (200, 404)
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_the_dashboard_runs_no_inline_script(client: TestClient) -> None:
    page = client.get("/").text
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.DOTALL)
    assert scripts and all('src="/static/' in attrs and not body.strip()
                           for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+=|javascript:|\sstyle=|data:", page)


def test_the_docs_page_allows_its_own_inline_script_by_hash_only(client: TestClient) -> None:
    response = client.get("/docs")
    (script,) = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = response.headers["Content-Security-Policy"]
    script_src = next(d for d in policy.split(";") if d.strip().startswith("script-src"))
    assert f"'sha256-{digest}'" in script_src and "unsafe-inline" not in script_src
    assert "frame-ancestors 'none'" in policy


# The Arabic-Indic, fullwidth and Devanagari ones, which int() and str.isdecimal() take for
# 1; a leading zero; a sign; a space.
NOT_ONE = ["\u0661", "\uff11", "\u0967", "01", "+1", " 1", "1 "]


def routes_taking(job_id: str, *, version: str = "1") -> list[tuple[str, str]]:
    """(method, path) for every route whose path names a job, as a job id or a version."""
    return [
        ("GET", f"/jobs/{job_id}"), ("GET", f"/jobs/{job_id}/metrics"),
        ("GET", f"/jobs/{job_id}/epochs"), ("GET", f"/jobs/{job_id}/events"),
        ("POST", f"/jobs/{job_id}/cancel"), ("POST", f"/jobs/{job_id}/predict"),
        ("GET", f"/jobs/{job_id}/model"),
        ("GET", f"/v1/models/{job_id}"), ("GET", f"/v1/models/{job_id}/metadata"),
        ("POST", f"/v1/models/{job_id}:predict"),
        ("GET", f"/v1/models/{job_id}/versions/{version}"),
        ("GET", f"/v1/models/{job_id}/versions/{version}/metadata"),
        ("POST", f"/v1/models/{job_id}/versions/{version}:predict"),
        ("GET", f"/v2/models/{job_id}"), ("GET", f"/v2/models/{job_id}/ready"),
        ("GET", f"/v2/models/{job_id}/versions/{version}"),
        ("GET", f"/v2/models/{job_id}/versions/{version}/ready"),
        ("POST", f"/v2/models/{job_id}/infer"),
        ("POST", f"/v2/models/{job_id}/versions/{version}/infer"),
    ]


def call(client: TestClient, method: str, path: str) -> int:
    pixels = [[0.0] * 784]
    body = ({"inputs": [{"name": "images", "shape": [1, 784], "datatype": "FP32",
                         "data": pixels[0]}]}
            if path.endswith("infer") else {"instances": pixels})
    return client.request(method, path, json=body if method == "POST" else None).status_code


def test_an_id_is_ascii_digits_without_a_leading_zero_on_every_route(
    served: TestClient, trained: Trained
) -> None:
    good = str(trained.good)
    assert good == "1"  # the first job of its database, so the look-alikes below mean it
    for method, path in routes_taking(good, version=good):
        assert call(served, method, path) in (200, 409), (method, path)  # 409: cancel, done
    for text in NOT_ONE:
        for method, path in spelled(text, good):
            assert call(served, method, path) == 404, (method, path)


def spelled(text: str, good: str) -> list[tuple[str, str]]:
    """Every route with `text` as its job id, and every one with `text` as the version of
    the job `good`."""
    versions = [r for r in routes_taking(good, version=text) if "/versions/" in r[1]]
    return routes_taking(text) + versions


def test_ids_past_what_the_database_holds_are_404_not_500(
    client: TestClient, database: Database
) -> None:
    good = str(add_job(database, JobState.succeeded))
    for text in (str(MAX_ID), str(MAX_ID + 1), str(2**63 - 1), str(2**63), "9" * 40,
                 "1" + "0" * 5000):
        for method, path in spelled(text, good):
            assert call(client, method, path) == 404, (method, path[:60])


def test_an_empty_upload_form_is_a_422_the_schema_declares(client: TestClient) -> None:
    response = client.post("/jobs/1/predict", content=b"--b--\r\n",
                           headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 422
    body = response.json()
    assert body["message"] == "file: send the image as a multipart file field named 'file'"
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    # Raises, naming the mismatch, when the body is not what the operation declares.
    schema["/jobs/{job_id}/predict"]["POST"].validate_response(response)

