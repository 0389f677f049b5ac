"""A trained model's servable artifact: the bytes of a .tflite model for the API's LiteRT runtime.

The worker writes no model file: the bytes go into the database with the job's success
(service.queue.leases.finish_job), the one copy every API fills its cache from.
(The weights' TensorFlow checkpoint is worker/checkpoint.py's, written every epoch.)

A conversion takes 0.2–0.4 s whatever the model's size, more than a small job's training.
Models of one architecture convert to the same flatbuffer but for their weights' bytes, so
an `ExportTemplate` keeps one conversion and writes the next models' weights into a copy
(a few ms), once a second model's conversion has confirmed that it computes the same.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from service.files import owned_folder
from worker.models import Model, predict_probabilities

log = logging.getLogger("tapefit.worker")

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


# How the converter lays out a variable's values in the flatbuffer: as they are, or with the
# output dimension first (a dense kernel (in, out) becomes FULLY_CONNECTED's (out, in); a conv
# kernel (h, w, in, out) becomes CONV_2D's (out, h, w, in)).
_LAYOUTS = {
    1: ((0,),),
    2: ((0, 1), (1, 0)),
    4: ((0, 1, 2, 3), (3, 0, 1, 2)),
}
# Random inputs a template is checked on.
_CHECK_SAMPLES = 16


class ExportTemplate:
    """One conversion of an architecture, and where each of its weights lies in the bytes.

    `from_conversion` learns the places from a model whose weights are in the bytes: each
    weight's values, in one of the converter's layouts, must occur exactly once, and no two
    weights may overlap; else the architecture is not fillable (batch norm, say, whose
    statistics the converter folds into the next layer's weights) and every model of it is
    converted. A template is `confirmed` against a second model's own conversion: the copy
    filled with that model's weights must give exactly the same outputs, bit for bit, on
    random inputs (a weight the converter had also folded into another constant would not).
    Only then does it `fill` in place of the converter.
    """

    def __init__(self, content: bytes, places: list[tuple[int, tuple[int, ...]]],
                 input_shape: tuple[int, ...]) -> None:
        self._content, self._places, self._input_shape = content, places, input_shape
        self.confirmed = False

    @classmethod
    def from_conversion(cls, model: Model, content: bytes) -> ExportTemplate | None:
        """The template of `model`'s architecture, from `content` (its conversion); None when
        its weights cannot all be found in it, once each."""
        places: list[tuple[int, tuple[int, ...]]] = []
        spans: list[tuple[int, int]] = []
        for weight in model.weights:
            values = weight.numpy()
            found = None
            for layout in _LAYOUTS.get(values.ndim, ()):
                needle = np.ascontiguousarray(values.transpose(layout)).tobytes()
                offset = content.find(needle)
                if offset >= 0:
                    if content.find(needle, offset + 1) >= 0:
                        return None  # found twice: which one is this weight is unknown
                    found = (offset, layout)
                    spans.append((offset, offset + len(needle)))
                    break
            if found is None:
                return None
            places.append(found)
        spans.sort()
        if any(end > start for (_, end), (start, _) in zip(spans, spans[1:], strict=False)):
            return None
        return cls(content, places, model.input_shape)

    @property
    def nbytes(self) -> int:
        return len(self._content)

    def fill(self, model: Model) -> bytes:
        """The servable bytes of `model`, of this template's architecture (and
        standardisation), its weights written into a copy of the template."""
        content = bytearray(self._content)
        for weight, (offset, layout) in zip(model.weights, self._places, strict=True):
            values = np.ascontiguousarray(weight.numpy().transpose(layout)).tobytes()
            content[offset : offset + len(values)] = values
        return bytes(content)

    def confirm(self, model: Model, content: bytes) -> bool:
        """Whether the copy filled with `model`'s weights computes exactly what `content`,
        the converter's own bytes for `model`, computes; `confirmed` from then on if so."""
        inputs = np.random.default_rng(0).random((_CHECK_SAMPLES, *self._input_shape),
                                                 dtype=np.float32)
        try:
            filled, converted = _outputs(self.fill(model), inputs), _outputs(content, inputs)
        except (ValueError, RuntimeError):  # not a model LiteRT can load or run
            return False
        self.confirmed = np.array_equal(filled, converted, equal_nan=True)
        return self.confirmed


def _outputs(content: bytes, inputs: np.ndarray) -> np.ndarray:
    """What the .tflite `content` computes for `inputs`, under LiteRT (as the API runs it)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=1)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, inputs.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, inputs)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
