"""The networks a job spec describes, built from its typed layer specs.

`Model` is what the fit loop, the updaters, checkpoints and export see, whichever the
implementation: a callable network and its trainable `tf.Variable`s.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import keras
import numpy as np
import tensorflow as tf

from service.schemas import INPUT_SIZE, Activation, Implementation, ModelSpec
from worker.naive import NaiveDense, NaiveSequential

# The signatures of a batch: flat images and integer labels, the batch size left open.
IMAGES = tf.TensorSpec([None, INPUT_SIZE], tf.float32)
LABELS = tf.TensorSpec([None], tf.int32)

_NAIVE_ACTIVATIONS = {
    Activation.relu: tf.nn.relu,
    Activation.sigmoid: tf.nn.sigmoid,
    Activation.tanh: tf.nn.tanh,
    Activation.softmax: tf.nn.softmax,
    Activation.linear: tf.identity,
}


class Model:
    """What `build_model` returns, whichever the implementation.

    `weights` are trainable tf.Variables; for keras, the ones behind its layers' variables, so
    tapes, updaters, checkpoints and the TFLite converter all see one kind of variable.
    """

    def __init__(
        self,
        network: Callable[[tf.Tensor], tf.Tensor],
        weights: list[tf.Variable],
        *,
        outputs_probabilities: bool,
    ) -> None:
        self.network = network
        self.weights = weights
        # False when the last activation is not softmax: the outputs are then logits.
        self.outputs_probabilities = outputs_probabilities

    def __call__(self, inputs: tf.Tensor) -> tf.Tensor:
        return self.network(inputs)

    @cached_property
    def evaluate_step(self) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
        """(summed loss, number correct) of a batch, compiled once per model (not per
        evaluation: a trace costs more than an epoch's evaluation on a small test set)."""

        @tf.function(input_signature=[IMAGES, LABELS])
        def step(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            outputs = self(images)
            loss = tf.reduce_sum(per_sample_loss(self, outputs, labels))
            correct = tf.reduce_sum(tf.cast(is_correct(outputs, labels), tf.float32))
            return loss, correct

        return step


def build_model(spec: ModelSpec, *, seed: int) -> Model:
    """The network `spec` describes, its initial weights fixed by `seed`."""
    outputs_probabilities = spec.layers[-1].activation is Activation.softmax
    if spec.implementation is Implementation.naive:
        rng = tf.random.Generator.from_seed(seed)
        layers, fan_in = [], INPUT_SIZE
        for layer in spec.layers:
            activation = _NAIVE_ACTIVATIONS[layer.activation]
            layers.append(NaiveDense(fan_in, layer.units, activation, rng=rng))
            fan_in = layer.units
        network = NaiveSequential(layers)
        return Model(network, network.weights, outputs_probabilities=outputs_probabilities)
    seeds = np.random.SeedSequence(seed).generate_state(len(spec.layers))
    network = keras.Sequential(
        [keras.Input((INPUT_SIZE,))]
        + [
            keras.layers.Dense(
                layer.units,
                activation=layer.activation.value,
                kernel_initializer=keras.initializers.GlorotUniform(seed=int(layer_seed >> 1)),
            )
            for layer, layer_seed in zip(spec.layers, seeds, strict=True)
        ]
    )
    # A keras 3 Variable wraps a tf.Variable (its `.value` under the TensorFlow backend); tf.Module
    # tracking and the TFLite converter see only the wrapped one.
    weights = [variable.value for variable in network.trainable_weights]
    return Model(network, weights, outputs_probabilities=outputs_probabilities)


def predict_probabilities(model: Model, images: tf.Tensor) -> tf.Tensor:
    """The model's class probabilities, shape (N, 10), whatever its last activation."""
    outputs = model(images)
    return outputs if model.outputs_probabilities else tf.nn.softmax(outputs)


def per_sample_loss(model: Model, outputs: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of each sample against its integer label."""
    # Outputs of a last layer other than softmax are taken as logits. Softmax outputs: in a
    # compiled graph keras finds the Softmax op and works from its input, so the loss is not
    # clipped at -log(1e-7) there and a diverging model shows as a non-finite loss.
    return keras.losses.sparse_categorical_crossentropy(
        labels, outputs, from_logits=not model.outputs_probabilities
    )


def is_correct(outputs: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Whether each sample's most likely class is its label."""
    return tf.equal(tf.argmax(outputs, axis=1, output_type=tf.int32), tf.cast(labels, tf.int32))
