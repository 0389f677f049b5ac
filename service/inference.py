"""Predictions from the trained models' .tflite files, with LiteRT (no TensorFlow here).

Only the service's own artifacts are loaded: a model is found by its job's integer id under
the models folder, and its real path must stay inside that folder, so no request can name a
file, and a link planted in the data dir cannot lead out of it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from service.schemas import INPUT_SIZE, NUM_CLASSES

MODEL_FILE = "model.tflite"
MAX_INSTANCES = 1_000
_SIDE = 28


class ModelUnavailable(LookupError):
    """The job has no exported model (not trained yet, or its file is gone)."""


class BadInput(ValueError):
    """Tensor data that is not a batch of 28x28 images with pixels in [0, 1]."""


def model_path(models_dir: Path, job_id: int) -> Path:
    """Where the worker exports job `job_id`'s model."""
    return models_dir / str(int(job_id)) / MODEL_FILE


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
    """Nested numbers shaped (N, 784) or (N, 28, 28) as a float32 batch (N, 784), checked."""
    return check_images(as_numbers(values))


def check_images(array: np.ndarray) -> np.ndarray:
    """`array` as (N, 784) when it is N images of 784 (or 28x28) finite pixels in [0, 1]."""
    shape = array.shape
    if not (
        (array.ndim == 2 and shape[1] == INPUT_SIZE)
        or (array.ndim == 3 and shape[1:] == (_SIDE, _SIDE))
    ):
        raise BadInput(f"expected shape [N, {INPUT_SIZE}] or [N, 28, 28], got {list(shape)}")
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
    mtime_ns: int
    input_index: int
    output_index: int
    # A LiteRT interpreter holds its tensors in place: one request at a time per model.
    lock: threading.Lock = field(default_factory=threading.Lock)
    batch: int = 1

    def predict(self, images: np.ndarray) -> np.ndarray:
        with self.lock:
            if images.shape[0] != self.batch:
                self.interpreter.resize_tensor_input(self.input_index, list(images.shape))
                self.interpreter.allocate_tensors()
                self.batch = images.shape[0]
            self.interpreter.set_tensor(self.input_index, images)
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self.output_index)  # a copy, safe after unlock


class ModelStore:
    """A bounded LRU cache of loaded models, safe to share between request threads."""

    def __init__(self, models_dir: Path, capacity: int) -> None:
        self.models_dir = models_dir
        self.capacity = capacity
        self._models: OrderedDict[int, _LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def predict(self, job_id: int, images: np.ndarray) -> np.ndarray:
        """Probabilities, shape (N, 10), for `images` of shape (N, 784) in [0, 1]."""
        images = np.ascontiguousarray(images, dtype=np.float32).reshape(-1, INPUT_SIZE)
        probabilities = self._get(job_id).predict(images)
        if probabilities.shape != (images.shape[0], NUM_CLASSES):
            raise ModelUnavailable(f"job {job_id}'s model gives shape {probabilities.shape}")
        return probabilities

    def artifact(self, job_id: int) -> Path:
        """The job's .tflite file, checked to be the service's own; ModelUnavailable if none."""
        path = model_path(self.models_dir, job_id)
        if not path.is_file():
            raise ModelUnavailable(f"job {job_id} has no trained model")
        if not path.resolve().is_relative_to(self.models_dir.resolve()):
            raise ModelUnavailable(f"job {job_id}'s model is not in the models folder")
        return path

    def _get(self, job_id: int) -> _LoadedModel:
        path = model_path(self.models_dir, job_id)
        try:
            mtime_ns = path.stat().st_mtime_ns
        except FileNotFoundError:
            raise ModelUnavailable(f"job {job_id} has no trained model") from None
        with self._lock:
            loaded = self._models.get(job_id)
            # A re-exported file (a resumed job) replaces the cached one.
            if loaded is not None and loaded.mtime_ns == mtime_ns:
                self._models.move_to_end(job_id)
                return loaded
        loaded = self._load(job_id, mtime_ns)
        with self._lock:
            self._models[job_id] = loaded
            self._models.move_to_end(job_id)
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
        return loaded

    def _load(self, job_id: int, mtime_ns: int) -> _LoadedModel:
        path = self.artifact(job_id)
        try:
            # One thread per interpreter: the models are small, and requests run in parallel.
            interpreter = Interpreter(model_path=str(path), num_threads=1)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelUnavailable(f"job {job_id}'s model could not be loaded: {exc}") from None
        return _LoadedModel(
            interpreter=interpreter,
            mtime_ns=mtime_ns,
            input_index=interpreter.get_input_details()[0]["index"],
            output_index=interpreter.get_output_details()[0]["index"],
        )

    def __len__(self) -> int:
        return len(self._models)
