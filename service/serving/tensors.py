"""JSON bodies of numbers, parsed fast: an image is 784 of them, and reading them is most of
what a prediction costs besides the HTTP itself.

`loads` is the standard library's `json.loads` made fast: orjson (C) parses the body, and
whatever orjson refuses (NaN, Infinity, a lone surrogate, nesting past 1,024, another
encoding than UTF-8) goes to `json.loads`, so that what is accepted and how a refusal is
worded stay as before. The one difference: an integer past 64 bits comes back a float.

`plain_instances` is the native predict body's fast path: a body that is nothing but
`{"instances": [...]}` of numbers in [0, 1], shaped as images, becomes a float32 batch with
no Python object per number checked one by one. Anything else (a string, a boolean, another
field, a value out of range, a ragged batch) returns None, and the schema's validation
(pydantic) decides and words the 422. The fast path never accepts what the schema refuses:
it checks the same rules, on the bytes and on the array.
"""

from __future__ import annotations

import json
from itertools import chain
from typing import Any

import numpy as np
import orjson

from service.schemas import INPUT_SIZE

MAX_INSTANCES = 1_000  # as PredictRequest.instances
_IMAGE_SHAPES = ((INPUT_SIZE,), (28, 28), (28, 28, 1))  # flat, rows, rows of 1 channel

# What a body of plain numbers is made of. Deleting these bytes from a body leaves its
# structure; a string, true, false, null or another field leaves more than the skeleton.
_NUMERIC = b"0123456789.eE+-,[] \t\r\n"
_SKELETON = b'{"instances":}'.translate(None, _NUMERIC)


def loads(body: bytes) -> Any:
    """`json.loads(body)`, by orjson when it can; ValueError (or RecursionError) as json's."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)  # raises as before, or accepts what orjson would not


def plain_instances(body: bytes) -> np.ndarray | None:
    """The images of a native predict body, as (N, 784) float32, when the body is plainly
    valid; None when it is not, or not plainly (the schema's validation then decides)."""
    if body.translate(None, _NUMERIC) != _SKELETON:
        return None
    try:
        instances = orjson.loads(body)["instances"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(instances, list) or not 1 <= len(instances) <= MAX_INSTANCES:
        return None
    try:
        if all(type(image) is list and len(image) == INPUT_SIZE for image in instances):
            # Flat images, the usual case: one pass over the numbers, no shape to discover
            # (a list where a number belongs is a TypeError).
            array = np.fromiter(chain.from_iterable(instances), dtype=np.float64,
                                count=len(instances) * INPUT_SIZE)
        else:  # rows of pixels: numpy finds the shape (a ragged batch is a ValueError)
            array = np.asarray(instances, dtype=np.float64)
    except (TypeError, ValueError):  # only numbers are left: the bytes said so
        return None
    if array.ndim == 1:
        array = array.reshape(len(instances), INPUT_SIZE)
    if array.shape[1:] not in _IMAGE_SHAPES:
        return None
    # NaN compares false both ways, so it fails here too (orjson parses 1e999 as infinity).
    if not (array.min() >= 0.0 and array.max() <= 1.0):
        return None
    return array.reshape(-1, INPUT_SIZE).astype(np.float32)
