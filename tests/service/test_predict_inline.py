"""A small prediction whose model is in memory is answered on the event loop, with no thread
hop; anything that would read the database or a file, or wait for an interpreter another
request holds, goes to a worker thread as before."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette import concurrency

from service.api.routes import predict as predict_route
from service.serving.catalog import Catalog
from service.serving.store import ModelBusy
from tests.helpers.serving import Trained


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The predictions the route handed to a worker thread (by function name)."""
    handed: list[str] = []
    real = concurrency.run_in_threadpool

    async def counting(func, *args, **kwargs):  # noqa: ANN001, ANN202 (as run_in_threadpool)
        handed.append(func.__name__)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(predict_route, "run_in_threadpool", counting)
    return handed


def test_a_model_in_memory_answers_without_a_thread_hop(
    served: TestClient, trained: Trained, hops: list[str]
) -> None:
    image = {"instances": [trained.x_test[0].ravel().tolist()]}
    for name in (str(trained.good), "best"):
        first = served.post(f"/jobs/{name}/predict", json=image)
        assert first.status_code == 200 and hops == ["_predict"]  # resolved, model loaded
        hops.clear()
        again = served.post(f"/jobs/{name}/predict", json=image)
        assert again.json() == first.json() and hops == []  # all in memory: no hop
    # A larger body (or an image upload) is still parsed in a thread.
    many = {"instances": trained.x_test[:20].reshape(20, -1).tolist()}
    assert served.post(f"/jobs/{trained.good}/predict", json=many).status_code == 200
    assert hops == ["_predict"]


def test_a_busy_interpreter_sends_the_request_to_a_thread_that_waits_for_it(
    served: TestClient, trained: Trained, hops: list[str]
) -> None:
    image = {"instances": [trained.x_test[1].ravel().tolist()]}
    expected = served.post(f"/jobs/{trained.good}/predict", json=image).json()
    catalog: Catalog = served.app.state.catalog
    sha256 = catalog.cache(trained.good)
    interpreter = catalog.store._loaded(sha256)
    assert interpreter is not None
    hops.clear()
    interpreter.lock.acquire()  # another request is running the model
    release = threading.Timer(0.2, interpreter.lock.release)
    release.start()
    try:
        answer = served.post(f"/jobs/{trained.good}/predict", json=image)
    finally:
        release.join()
    assert answer.json() == expected and hops == ["_predict"]


def test_without_waiting_the_store_neither_loads_nor_waits(
    trained: Trained, tmp_path: Path
) -> None:
    store, (sha256,) = trained.store(tmp_path, trained.good)
    images = trained.x_test[:1].reshape(1, -1)
    with pytest.raises(ModelBusy, match="not loaded"):
        store.predict(sha256, images, wait=False)
    assert not store.loaded(sha256)
    expected = store.predict(sha256, images)  # waits, and loads it
    assert store.loaded(sha256)
    np.testing.assert_array_equal(store.predict(sha256, images, wait=False), expected)
    interpreter = store._loaded(sha256)
    with interpreter.lock, pytest.raises(ModelBusy, match="another request"):
        store.predict(sha256, images, wait=False)


def test_in_memory_means_no_query_and_no_file(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = Catalog(database=trained.database, store=trained.store(tmp_path)[0])
    name = str(trained.good)
    assert not catalog.in_memory(name) and not catalog.in_memory("best")
    ref = catalog.resolve(name)
    assert not catalog.in_memory(name)  # its signature and model are not loaded yet
    catalog.signature(ref)
    catalog.predict(ref, trained.x_test[:1].reshape(1, -1))
    assert catalog.in_memory(name)
    assert not catalog.in_memory("best")  # an alias not resolved yet
    catalog.resolve("best")
    assert catalog.in_memory("best") == (trained.good == catalog.resolve("best").job_id)
    monkeypatch.setattr(Catalog, "RECHECK_AFTER", 0.0)  # its row is to be looked at again
    assert not catalog.in_memory(name)
