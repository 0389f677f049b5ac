"""A trained model's servable artifact: the bytes of a .tflite model for the API's LiteRT runtime.

The worker writes no model file: the bytes go into the database with the job's success
(service.queue.leases.finish_job), the one copy every API fills its cache from.
(The weights' TensorFlow checkpoint is worker/checkpoint.py's, written every epoch.)
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from service.files import owned_folder
from worker.models import Model, predict_probabilities

# The name of a conversion's scratch folder; the worker sweeps abandoned ones at start.
SCRATCH_PREFIX = "tflite-"


class _Servable(tf.Module):
    """The model as one function, inputs → probabilities (N, classes), N left open. The
    inputs come in the model's own input shape: (N, 784) for a dense model, (N, 28, 28, 1)
    for one that reads images whole, such as a convnet, (N, features) for tabular data, whose
    standardisation comes first, inside the model: a client sends raw rows."""

    def __init__(
        self, model: Model, standardize: tuple[np.ndarray, np.ndarray] | None = None
    ) -> None:
        super().__init__()
        # Tracked here so the converter finds the variables and freezes them into constants.
        self.frozen = list(model.weights) + list(model.state)
        self._model = model
        self._standardize = None if standardize is None else tuple(
            tf.constant(np.asarray(values, np.float32)) for values in standardize
        )
        self.predict = tf.function(
            self._predict,
            input_signature=[tf.TensorSpec([None, *model.input_shape], tf.float32)],
        )

    def _predict(self, images: tf.Tensor) -> tf.Tensor:
        if self._standardize is not None:
            mean, std = self._standardize
            images = (images - mean) / std
        return predict_probabilities(self._model, images)


def export_model(
    model: Model, *, scratch: Path | None = None,
    standardize: tuple[np.ndarray, np.ndarray] | None = None,
) -> bytes:
    """The model as a .tflite flatbuffer (inputs → probabilities), with `standardize` (the
    training split's mean and std, per feature) applied to its inputs first.

    The converter first saves the model as a SavedModel (its weights and more: 1.7 MB for
    the book's model, up to 80 MB at the parameter limit).
    With `scratch`, that goes in a folder of this process's own under it (see
    service.files.owned_folder), removed when the conversion ends however it ends, and
    left to the next worker's sweep if this process is killed; else in the system's temp."""
    servable = _Servable(model, standardize)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [servable.predict.get_concrete_function()], servable
    )
    with contextlib.ExitStack() as stack:
        if scratch is not None:
            stack.enter_context(_temporary_files_in(
                stack.enter_context(owned_folder(scratch, prefix=SCRATCH_PREFIX))
            ))
        return converter.convert()


@contextlib.contextmanager
def _temporary_files_in(folder: Path) -> Iterator[None]:
    # The converter calls tempfile.mkdtemp() with no folder, which takes tempfile.tempdir
    # (else $TMPDIR, read once per process). Only this thread makes temporary files meanwhile.
    previous, tempfile.tempdir = tempfile.tempdir, str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = previous
