"""The fast JSON path of predictions (service/serving/tensors.py) takes exactly what the
schema takes, with the same numbers, and leaves everything else to the schema's 422."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.api.routes.predict import read_instances
from service.schemas import PredictRequest
from service.serving import tensors

SHAPES = [(784,), (28, 28), (28, 28, 1)]


def body(instances: object, **extra: object) -> bytes:
    return json.dumps({"instances": instances, **extra}).encode()


def schema(raw: bytes) -> np.ndarray | None:
    """What the schema makes of a body: the images, or None when it refuses it."""
    try:
        request = PredictRequest.model_validate_json(raw)
    except ValidationError:
        return None
    return np.array([np.ravel(instance) for instance in request.instances], np.float32)


@pytest.mark.parametrize("shape", SHAPES)
def test_plain_images_in_every_shape_take_the_fast_path(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    images = rng.random((3, *shape))
    images.flat[:3] = [0, 1, 0.5]  # whole numbers are fine pixels too
    raw = body(images.tolist()).replace(b"0.0,", b"0,")
    fast = tensors.plain_instances(raw)
    assert fast is not None and fast.dtype == np.float32 and fast.shape == (3, 784)
    np.testing.assert_array_equal(fast, schema(raw))
    # Spaces and newlines anywhere are still plain.
    spaced = raw.replace(b",", b" ,\n ").replace(b":", b" : ")
    np.testing.assert_array_equal(tensors.plain_instances(spaced), fast)


@pytest.mark.parametrize("raw", [
    body([[0.5] * 783 + [True]]),  # a boolean is no number
    body([[0.5] * 783 + ["0.5"]]),  # nor is a string
    body([[0.5] * 783 + [None]]),
    body([[0.5] * 783 + [1.5]]),  # out of [0, 1]
    body([[0.5] * 783 + [-0.0001]]),
    b'{"instances": [[1e999' + b", 0" * 783 + b"]]}",  # infinity
    b'{"instances": [[NaN' + b", 0" * 783 + b"]]}",  # not JSON, but Python's json takes it
    body([[0.5] * 783]),  # a pixel short
    body([[0.5] * 784, [[0.5] * 28] * 28]),  # a flat image and a grid: ragged
    body([[0.5] * 783 + [[0.5]]]),  # a list where a number belongs
    body([[[0.5] * 28] * 27 + [[0.5] * 27]]),  # a short row
    body([]),  # no image
    body([[0.5] * 784] * 1001),  # too many
    body([[0.5] * 784], signature_name="x"),  # another field
    b'{"instances": [[' + b"0.5, " * 783 + b"0.5]], \"instances\": [[0.5]]}",  # twice
    b'{"\\u0069nstances": [[' + b"0.5, " * 783 + b"0.5]]}",  # the key spelled with an escape
    body([[[0.5] * 784]]),  # nested once too deep
    b'[[' + b"0.5, " * 783 + b"0.5]]",  # no object
    b"",
])
def test_anything_else_is_left_to_the_schema(raw: bytes) -> None:
    assert tensors.plain_instances(raw) is None


pixel = st.one_of(
    st.floats(min_value=-0.5, max_value=1.5, allow_nan=False),
    st.integers(min_value=-1, max_value=2),
    st.sampled_from([True, False, None, "0.5", float("inf")]),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Mostly valid bodies, with now and then one thing wrong, anywhere."""
    shape = draw(st.sampled_from([*SHAPES, (783,), (28, 27)]))
    count = draw(st.integers(min_value=0, max_value=3))
    images = np.full((count, *shape), 0.25).tolist()
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        if not count:
            break
        spot: list = images[draw(st.integers(0, count - 1))]
        while isinstance(spot[0], list):
            spot = spot[draw(st.integers(0, len(spot) - 1))]
        spot[draw(st.integers(0, len(spot) - 1))] = draw(pixel)
    extra = draw(st.sampled_from([{}, {}, {"x": 1}]))
    try:
        return body(images, **extra)
    except ValueError:  # infinity: written as Python's json does
        return json.dumps({"instances": images, **extra}, allow_nan=True).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_the_fast_path_never_takes_what_the_schema_refuses(raw: bytes) -> None:
    fast, slow = tensors.plain_instances(raw), schema(raw)
    if fast is not None:
        assert slow is not None
        np.testing.assert_array_equal(fast, slow)
    elif slow is not None:  # the schema takes it: the route still answers it
        np.testing.assert_array_equal(read_instances(raw), slow)


def test_loads_accepts_and_refuses_as_the_standard_library_does() -> None:
    for raw in [b'{"a": [1, 2.5e-3, "x", null, true]}', b"[Infinity, -1e999]", b'"\\ud800"',
                b"\xef\xbb\xbf[1]", "[0.5]".encode("utf-16")]:
        assert tensors.loads(raw) == json.loads(raw)
    assert np.isnan(tensors.loads(b"NaN"))
    # The one difference: an integer past 64 bits is a float (to a tensor, the same number).
    assert tensors.loads(b"123456789012345678901234567890") == 1.2345678901234568e29
    for raw in [b"{", b"[1,]", b"\xff", b"[" * 2000 + b"]" * 2000]:
        with pytest.raises((ValueError, RecursionError)) as fast:
            tensors.loads(raw)
        with pytest.raises(type(fast.value)):
            json.loads(raw)
