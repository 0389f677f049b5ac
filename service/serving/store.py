"""Predictions from the trained models' .tflite files, with LiteRT (no TensorFlow here).

The database row of a job's model (its bytes and their sha256) is the one truth; this store is
a cache of it on the API's disk and in memory. Files are named by their sha256 and checked
against it whenever they are read, so a file changed on disk (or half written) is never
served, and no request can name a path: a name is only ever a hash the database gave.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from service.files import write_atomically
from service.schemas import INPUT_SIZE

MAX_INSTANCES = 1_000
_SIDE = 28
# MNIST's images as a request may send them: flat, 28 rows, or 28 rows of one channel (the
# input of a convnet). Every model takes all three; each reads them in its own input shape.
_IMAGE_SHAPES = ((INPUT_SIZE,), (_SIDE, _SIDE), (_SIDE, _SIDE, 1))
_EXPECTED = f"[N, {INPUT_SIZE}], [N, 28, 28] or [N, 28, 28, 1]"


class ModelUnavailable(LookupError):
    """The job has no exported model (not trained yet, or its file is gone)."""


class ModelBusy(RuntimeError):
    """Asked not to wait: the model is not loaded, or its interpreter is serving another
    request. Ask again where waiting is fine (a worker thread)."""


class BadInput(ValueError):
    """Tensor data that is not a batch of 28x28 images with pixels in [0, 1]."""


_SHA256 = re.compile(r"[0-9a-f]{64}")


def as_numbers(values: object) -> np.ndarray:
    """Nested lists of numbers as a float32 array; BadInput for ragged lists or non-numbers."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):  # ragged, or deeper than numpy's dimension limit
        raise BadInput("the tensor's rows have different lengths, or it nests too deeply") from None
    if not isinstance(values, list) or array.dtype.kind not in "fiu":
        raise BadInput("the tensor must be a list of numbers, flat or nested")
    return array.astype(np.float32, copy=False)


def as_images(values: object) -> np.ndarray:
    """Nested numbers shaped (N, 784), (N, 28, 28) or (N, 28, 28, 1) as a float32 batch
    (N, 784), checked."""
    return check_images(as_numbers(values))


def check_images(array: np.ndarray) -> np.ndarray:
    """`array` as (N, 784) when it is N images of 784 (or 28x28, or 28x28x1) finite pixels
    in [0, 1]."""
    shape = array.shape
    if array.ndim < 2 or shape[1:] not in _IMAGE_SHAPES:
        raise BadInput(f"expected shape {_EXPECTED}, got {list(shape)}")
    if not 1 <= shape[0] <= MAX_INSTANCES:
        raise BadInput(f"expected 1 to {MAX_INSTANCES} images, got {shape[0]}")
    if not np.isfinite(array).all():
        raise BadInput("pixel values must be finite numbers (no NaN or infinity)")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        hint = " (divide 0-255 pixels by 255)" if high > 1.0 else ""
        raise BadInput(f"pixel values must be in [0, 1], got [{low:g}, {high:g}]{hint}")
    return np.ascontiguousarray(array.reshape(-1, INPUT_SIZE), dtype=np.float32)


@dataclass
class _LoadedModel:
    interpreter: Interpreter
    input_index: int
    output_index: int
    input_shape: tuple[int, ...]  # one sample's, from the .tflite: (784,) or (28, 28, 1)
    # A LiteRT interpreter holds its tensors in place: one request at a time per model.
    lock: threading.Lock = field(default_factory=threading.Lock)
    batch: int = 1

    def predict(self, images: np.ndarray, *, wait: bool = True) -> np.ndarray:
        """Outputs for flat rows of the model's input size, reshaped to its input shape;
        ModelBusy, without waiting, when `wait` is false and another request has it."""
        images = images.reshape(-1, *self.input_shape)
        if not self.lock.acquire(blocking=wait):
            raise ModelBusy("the model is serving another request")
        try:
            if images.shape[0] != self.batch:
                self.interpreter.resize_tensor_input(self.input_index, list(images.shape))
                self.interpreter.allocate_tensors()
                self.batch = images.shape[0]
            self.interpreter.set_tensor(self.input_index, images)
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self.output_index)  # a copy, safe after unlock
        finally:
            self.lock.release()


class ModelStore:
    """Models by the sha256 of their bytes: verified files in `models_dir`, and a bounded LRU
    of loaded interpreters, safe to share between request threads."""

    def __init__(self, models_dir: Path, capacity: int) -> None:
        self.models_dir = models_dir
        self.capacity = capacity
        self._models: OrderedDict[str, _LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def has(self, sha256: str) -> bool:
        """True when the model's file is here (its bytes are checked when they are read)."""
        return self._path(sha256).is_file()

    def put(self, sha256: str, content: bytes) -> None:
        """Keep `content` under its hash; ModelUnavailable when it does not match it."""
        _verify(sha256, content)
        write_atomically(self._path(sha256), content)

    def discard(self, sha256: str) -> None:
        """Forget a model: its loaded interpreter and its file (its job was deleted)."""
        with self._lock:
            self._models.pop(sha256, None)
        self._path(sha256).unlink(missing_ok=True)

    def cached(self) -> list[str]:
        """The hashes of the model files here."""
        if not self.models_dir.is_dir():
            return []
        return [path.stem for path in self.models_dir.glob("*.tflite")
                if _SHA256.fullmatch(path.stem)]

    def content(self, sha256: str) -> bytes:
        """The model's bytes, checked against their hash."""
        try:
            content = self._path(sha256).read_bytes()
        except FileNotFoundError:
            raise ModelUnavailable("the model's file is gone from this server's cache") from None
        _verify(sha256, content)
        return content

    def predict(self, sha256: str, images: np.ndarray, *, wait: bool = True) -> np.ndarray:
        """Probabilities, shape (N, 10), for `images` of shape (N, 784) in [0, 1] (or any
        shape holding N images of the model's input size). With `wait` false it neither
        loads the model nor waits for it: ModelBusy instead (see `loaded`)."""
        loaded = self._get(sha256) if wait else self._loaded(sha256)
        if loaded is None:
            raise ModelBusy("the model is not loaded")
        size = math.prod(loaded.input_shape)
        if np.size(images) % size:
            raise BadInput(f"the model takes images of shape {list(loaded.input_shape)}")
        images = np.ascontiguousarray(images, dtype=np.float32).reshape(-1, size)
        probabilities = loaded.predict(images, wait=wait)
        if probabilities.ndim != 2 or probabilities.shape[0] != images.shape[0]:
            raise ModelUnavailable(f"the model gives shape {probabilities.shape}")
        return probabilities

    def input_shape(self, sha256: str) -> tuple[int, ...]:
        """One sample's shape as the model reads it: (784,) for a dense MNIST model,
        (28, 28, 1) for a convnet (read from the .tflite when it is loaded)."""
        return self._get(sha256).input_shape

    def _path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a sha256: {sha256[:80]!r}")
        return self.models_dir / f"{sha256}.tflite"

    def loaded(self, sha256: str) -> bool:
        """True when the model is loaded: a prediction with it reads no file."""
        return sha256 in self._models

    def _loaded(self, sha256: str) -> _LoadedModel | None:
        with self._lock:
            loaded = self._models.get(sha256)
            if loaded is not None:
                self._models.move_to_end(sha256)
            return loaded

    def _get(self, sha256: str) -> _LoadedModel:
        with self._lock:
            loaded = self._models.get(sha256)
            if loaded is not None:
                self._models.move_to_end(sha256)
                return loaded
        loaded = self._load(sha256)
        with self._lock:
            self._models[sha256] = loaded
            self._models.move_to_end(sha256)
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
        return loaded

    def _load(self, sha256: str) -> _LoadedModel:
        content = self.content(sha256)
        try:
            # One thread per interpreter: the models are small, and requests run in parallel.
            interpreter = Interpreter(model_content=content, num_threads=1)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelUnavailable(f"the model could not be loaded: {exc}") from None
        inputs = interpreter.get_input_details()[0]
        return _LoadedModel(
            interpreter=interpreter,
            input_index=inputs["index"],
            output_index=interpreter.get_output_details()[0]["index"],
            input_shape=tuple(int(size) for size in inputs["shape_signature"][1:]),
        )

    def __len__(self) -> int:
        return len(self._models)


def _verify(sha256: str, content: bytes) -> None:
    if hashlib.sha256(content).hexdigest() != sha256:
        raise ModelUnavailable(
            "the model's bytes do not match their recorded sha256: refusing to serve them"
        )
