"""A trained model's servable artifact: a .tflite file for the API's LiteRT runtime.

The API serves `model.tflite` as soon as the file exists, so it is written atomically.
(The weights' TensorFlow checkpoint is worker/checkpoint.py's, written every epoch.)
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from service.files import write_atomically
from service.schemas import INPUT_SIZE
from worker.models import Model, predict_probabilities

MODEL_FILE = "model.tflite"


class _Servable(tf.Module):
    """The model as one function, images (N, 784) → probabilities (N, 10), N left open."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        # Tracked here so the converter finds the variables and freezes them into constants.
        self.frozen = list(model.weights)
        self._model = model

    @tf.function(input_signature=[tf.TensorSpec([None, INPUT_SIZE], tf.float32)])
    def predict(self, images: tf.Tensor) -> tf.Tensor:
        return predict_probabilities(self._model, images)


def export_model(model: Model, directory: Path) -> Path:
    """Write `directory/model.tflite` (images → probabilities); return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    servable = _Servable(model)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [servable.predict.get_concrete_function()], servable
    )
    path = directory / MODEL_FILE
    write_atomically(path, converter.convert())
    return path
