"""API keys: made by an admin and shown once, stored as a hash, scoped, revoked for good;
each key sees only its own jobs (another's are 404), an admin sees all with their owner."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import event, select

from service.api.app import ROUTERS
from service.config import Settings
from service.db import Database
from service.models import ApiKey
from service.queue import jobs
from service.schemas import JobSpec
from service.tenancy import keys
from tests.helpers.tenancy import ADMIN, make_key, run_to_success, secured_client


@pytest.fixture
def secured(settings: Settings, database: Database) -> Iterator[TestClient]:
    with secured_client(settings) as client:
        yield client


def test_a_key_is_shown_once_and_stored_as_a_hash(secured: TestClient,
                                                 database: Database) -> None:
    response = secured.post("/keys", headers=ADMIN, json={
        "name": "alice", "scopes": ["read", "train"], "max_queued": 5, "max_running": 1})
    assert response.status_code == 201
    created = response.json()
    assert response.headers["Location"] == f"/keys/{created['id']}"
    token = created["token"]
    assert re.fullmatch(r"tfk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", token)
    assert created["prefix"] == token.split("_")[1]
    # Never again: not in the list, not in the database.
    listed = secured.get("/keys", headers=ADMIN).json()
    assert [key["name"] for key in listed] == ["alice"]
    assert "token" not in listed[0] and token not in secured.get("/keys", headers=ADMIN).text
    assert listed[0] | {"last_used_at": None} == {
        "id": created["id"], "name": "alice", "prefix": created["prefix"],
        "scopes": ["read", "train"], "max_queued": 5, "max_running": 1,
        "created_at": created["created_at"], "last_used_at": None, "revoked_at": None}
    with database.session() as session:
        row = session.scalar(select(ApiKey))
    assert token not in repr(vars(row)) and token.split("_", 2)[2] not in repr(vars(row))
    assert row.secret_sha256 == keys._digest(token.split("_", 2)[2])
    # The token works, as Bearer and as Basic's password (the dashboard's way).
    assert secured.get("/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert secured.get("/jobs", auth=("anyone", token)).status_code == 200


def test_wrong_tokens_are_401(secured: TestClient) -> None:
    key = make_key(secured, "alice")
    prefix, secret = keys.parse_token(key.token)
    for wrong in (f"tfk_{prefix}_{secret[:-1]}x" if not secret.endswith("x")
                  else f"tfk_{prefix}_{secret[:-1]}y",
                  f"tfk_{'0' * 12}_{secret}", "tfk_", "tfk_abc_def", f"tfk_{prefix}_",
                  "tfk_\u00e9\u00e9".encode("latin-1")):
        if isinstance(wrong, str):
            wrong = wrong.encode()
        response = secured.get("/jobs", headers={"Authorization": b"Bearer " + wrong})
        assert response.status_code == 401, wrong
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_keys_are_for_admins_only(secured: TestClient) -> None:
    trainer = make_key(secured, "trainer", scopes=["train"])
    admin_key = make_key(secured, "ops", scopes=["admin"])
    for method, path in (("GET", "/keys"), ("POST", "/keys"), ("DELETE", f"/keys/{trainer.id}")):
        response = secured.request(method, path, headers=trainer.headers,
                                   json={"name": "x"} if method == "POST" else None)
        assert response.status_code == 403, (method, path)
        assert "'admin' scope" in response.json()["message"]
    # A key with the admin scope manages keys as the admin token does.
    assert secured.get("/keys", headers=admin_key.headers).status_code == 200
    assert secured.post("/keys", headers=admin_key.headers, json={"name": "y"}).status_code == 201


def test_revoked_is_401_from_the_next_request_on(secured: TestClient) -> None:
    key = make_key(secured, "alice")
    job_id = secured.post("/jobs", headers=key.headers).json()["id"]
    assert secured.get(f"/jobs/{job_id}", headers=key.headers).status_code == 200
    assert secured.delete(f"/keys/{key.id}", headers=ADMIN).status_code == 204
    response = secured.get(f"/jobs/{job_id}", headers=key.headers)
    assert response.status_code == 401
    assert "revoked" in response.json()["message"]
    # Its job stays, the admin's to see; revoking again changes nothing.
    assert secured.get(f"/jobs/{job_id}", headers=ADMIN).json()["owner"] == key.id
    listed = secured.get("/keys", headers=ADMIN).json()
    assert listed[0]["revoked_at"] is not None
    assert secured.delete(f"/keys/{key.id}", headers=ADMIN).status_code == 204
    assert secured.delete("/keys/999", headers=ADMIN).status_code == 404
    assert secured.delete("/keys/01", headers=ADMIN).status_code == 404


def test_a_read_key_cannot_write_403_naming_the_scope(secured: TestClient,
                                                      database: Database) -> None:
    reader = make_key(secured, "dashboards", scopes=["read"])
    trainer = make_key(secured, "trainer", scopes=["train"])
    # A reader may not even submit; what it may do is read its own (none here).
    response = secured.post("/jobs", headers=reader.headers, json={})
    assert response.status_code == 403
    assert response.json()["message"] == (
        "POST /jobs needs the 'train' scope; key 'dashboards' has: read")
    assert secured.get("/jobs", headers=reader.headers).json()["total"] == 0
    # `train` implies `read`: the trainer reads and writes its own.
    job_id = secured.post("/jobs", headers=trainer.headers, json={}).json()["id"]
    assert secured.get(f"/jobs/{job_id}", headers=trainer.headers).status_code == 200
    assert secured.post(f"/jobs/{job_id}/cancel", headers=trainer.headers).status_code == 200
    assert secured.get("/keys", headers=reader.headers).status_code == 403


def test_another_keys_job_is_404_on_every_route_and_lists_show_only_ones_own(
    secured: TestClient, database: Database
) -> None:
    alice, bob = make_key(secured, "alice"), make_key(secured, "bob")
    admins = secured.post("/jobs", headers=ADMIN, json={}).json()["id"]
    alices = secured.post("/jobs", headers=alice.headers, json={}).json()["id"]
    run_to_success(database, admins)
    run_to_success(database, alices, model=b"alice's model", accuracy=0.5)
    bobs = secured.post("/jobs", headers=bob.headers, json={}).json()["id"]
    routes = [
        ("GET", "/jobs/{}"), ("GET", "/jobs/{}/metrics"), ("GET", "/jobs/{}/metrics?max_points=5"),
        ("GET", "/jobs/{}/epochs"), ("GET", "/jobs/{}/events"), ("POST", "/jobs/{}/cancel"),
        ("DELETE", "/jobs/{}"), ("GET", "/jobs/{}/model"), ("POST", "/jobs/{}/predict"),
        ("GET", "/v1/models/{}"), ("GET", "/v1/models/{}/metadata"),
        ("GET", "/v1/models/{0}/versions/{0}"), ("POST", "/v1/models/{}:predict"),
        ("GET", "/v2/models/{}"), ("GET", "/v2/models/{}/ready"),
        ("GET", "/v2/models/{0}/versions/{0}/ready"), ("POST", "/v2/models/{}/infer"),
    ]
    pixels = {"instances": [[0.0] * 784]}
    for method, path in routes:
        for job_id in (admins, alices):
            body = pixels if method == "POST" and "cancel" not in path else None
            response = secured.request(method, path.format(job_id), headers=bob.headers,
                                       json=body)
            assert response.status_code == 404, (method, path, job_id, response.text)
            assert str(job_id) in response.text  # the same answer as for an unknown id
    # Lists: each key its own; the admin all, each with its owner.
    assert [j["id"] for j in secured.get("/jobs", headers=alice.headers).json()["items"]] \
        == [alices]
    assert secured.get("/jobs", headers=bob.headers).json()["total"] == 1
    everything = secured.get("/jobs", headers=ADMIN).json()["items"]
    assert [(j["id"], j["owner"], j["owner_name"]) for j in everything] == [
        (bobs, bob.id, "bob"), (alices, alice.id, "alice"), (admins, None, None)]
    assert secured.get("/v2/models", headers=bob.headers).json() == {"models": []}
    assert secured.get("/v2/models", headers=alice.headers).json() == {
        "models": [str(alices), "latest", "best"]}
    assert secured.get("/v2/models", headers=ADMIN).json()["models"][:2] == [
        str(alices), str(admins)]
    # A key's latest and best are among its own jobs: the admin's better model is not alice's
    # best, and bob has none.
    for alias in ("latest", "best"):
        assert secured.get(f"/jobs/{alias}/model", headers=alice.headers).content \
            == b"alice's model"
        assert secured.get(f"/v1/models/{alias}", headers=bob.headers).status_code == 404
    best = secured.get("/v1/models/best", headers=ADMIN).json()
    assert best["model_version_status"][0]["version"] == str(admins)
    # The owner reads its own: 200s, its finished job's event stream too.
    assert secured.get(f"/jobs/{alices}/epochs", headers=alice.headers).status_code == 200
    with secured.stream("GET", f"/jobs/{alices}/events", headers=alice.headers) as stream:
        assert stream.status_code == 200
        assert '"state": "succeeded"' in "".join(stream.iter_text()).replace('":"', '": "')
    assert secured.get(f"/jobs/{alices}/model", headers=alice.headers).content \
        == b"alice's model"


def test_an_admin_key_sees_every_job_and_its_own_jobs_carry_its_id(secured: TestClient) -> None:
    ops = make_key(secured, "ops", scopes=["admin"])
    alice = make_key(secured, "alice")
    alices = secured.post("/jobs", headers=alice.headers, json={}).json()["id"]
    ops_job = secured.post("/jobs", headers=ops.headers, json={}).json()
    assert (ops_job["owner"], ops_job["owner_name"]) == (ops.id, "ops")
    assert secured.get(f"/jobs/{alices}", headers=ops.headers).status_code == 200
    assert secured.get("/jobs", headers=ops.headers).json()["total"] == 2
    assert secured.post(f"/jobs/{alices}/cancel", headers=ops.headers).status_code == 200


def test_idempotency_keys_are_each_keys_own(secured: TestClient) -> None:
    alice, bob = make_key(secured, "alice"), make_key(secured, "bob")
    same = {"Idempotency-Key": "1"}
    first = secured.post("/jobs", headers=alice.headers | same, json={})
    again = secured.post("/jobs", headers=alice.headers | same, json={})
    bobs = secured.post("/jobs", headers=bob.headers | same, json={"epochs": 2})
    assert (first.status_code, again.status_code, bobs.status_code) == (201, 200, 201)
    assert again.json()["id"] == first.json()["id"] != bobs.json()["id"]
    admins = secured.post("/jobs", headers=ADMIN | same, json={})
    assert admins.status_code == 201 and admins.json()["owner"] is None


def test_last_use_is_written_at_most_once_a_minute(secured: TestClient,
                                                   database: Database) -> None:
    key = make_key(secured, "alice")
    assert secured.get("/keys", headers=ADMIN).json()[0]["last_used_at"] is None
    statements: list[str] = []
    def spy(_conn, _cursor, statement, *_):  # noqa: ANN001, ANN202
        statements.append(statement)

    engine = secured.app.state.database.engine
    event.listen(engine, "before_cursor_execute", spy)
    try:
        for _ in range(5):
            assert secured.get("/jobs", headers=key.headers).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    writes = [s for s in statements if s.lstrip().upper().startswith("UPDATE API_KEYS")]
    assert len(writes) == 1, writes
    used = secured.get("/keys", headers=ADMIN).json()[0]["last_used_at"]
    assert used is not None
    # Older than a minute: the next request writes it again.
    with database.session(write=True) as session:
        row = session.get(ApiKey, key.id)
        row.last_used_at = row.last_used_at.replace(year=2020)
    keys._touched.clear()
    secured.get("/jobs", headers=key.headers)
    assert secured.get("/keys", headers=ADMIN).json()[0]["last_used_at"] > "2021"


def test_keys_need_an_admin_token(client: TestClient) -> None:
    """Without TAPEFIT_API_TOKEN the API is open to all: a key would protect nothing."""
    response = client.post("/keys", json={"name": "alice"})
    assert response.status_code == 409
    assert "TAPEFIT_API_TOKEN" in response.json()["message"]
    assert client.get("/keys").json() == []


@pytest.mark.parametrize("body, field", [
    ({"name": ""}, "name"),
    ({"name": "a\nb"}, "name"),
    ({"name": "x", "scopes": []}, "scopes"),
    ({"name": "x", "scopes": ["root"]}, "scopes.0"),
    ({"name": "x", "max_queued": 0}, "max_queued"),
    ({"name": "x", "max_running": True}, "max_running"),
    ({"name": "x", "token": "mine"}, "token"),
])
def test_a_bad_key_request_is_422_naming_the_field(secured: TestClient, body: dict,
                                                   field: str) -> None:
    response = secured.post("/keys", headers=ADMIN, json=body)
    assert response.status_code == 422
    assert response.json()["message"].startswith(f"{field}:")


def test_every_write_route_refuses_a_read_key(secured: TestClient,
                                              database: Database) -> None:
    """Walks every route: a method other than GET is refused to a read-only key with 403 on
    its own job (404 where it names nothing it can see), except predictions, which read a
    model. A write route added later without the scope check fails here."""
    reader = make_key(secured, "reader", scopes=["read"])
    own = make_key(secured, "owner-of-nothing")
    with database.session(write=True) as session:
        job_id = jobs.submit_job(session=session, spec=JobSpec(), owner=reader.id).id
    # Predictions (and TF Serving's other verbs, which answer that there are none).
    reads = re.compile(r".*(/predict|:predict|/infer|:\{verb\})$")
    checked = 0
    for route in (route for router in ROUTERS for route in router.routes):
        if not isinstance(route, APIRoute) or reads.match(route.path):
            continue
        for method in route.methods - {"GET", "HEAD"}:
            path = route.path.replace("{job_id}", str(job_id)).replace("{key_id}", str(own.id))
            path = re.sub(r"\{[^}]+\}", "1", path)
            response = secured.request(method, path, headers=reader.headers, json={})
            expected = (403,) if "{job_id}" in route.path or "{" not in route.path \
                else (403, 404)
            assert response.status_code in expected, (method, path, response.status_code)
            checked += 1
    assert checked >= 6
    assert secured.get(f"/jobs/{job_id}", headers=reader.headers).json()["state"] == "queued"


def test_a_token_tells_who_it_is(secured: TestClient, client: TestClient) -> None:
    alice = make_key(secured, "alice", scopes=["read"], max_queued=3)
    assert secured.get("/keys/me", headers=alice.headers).json() == {
        "key_id": alice.id, "name": "alice", "scopes": ["read"], "admin": False,
        "max_queued": 3, "max_running": None}
    me = secured.get("/keys/me", headers=ADMIN).json()
    assert (me["key_id"], me["admin"], me["scopes"]) == (None, True, ["admin", "read", "train"])
    assert client.get("/keys/me").json()["admin"] is True  # an open server: the admin's
    assert secured.get("/keys/me").status_code == 401
