"""The networks a job spec describes, built from its typed layer specs (service/layers.py).

`Model` is what the fit loop, the updaters, checkpoints and export see, whichever the
implementation: a callable network, its trainable `tf.Variable`s and its other state.

The data stays flat, (N, 784), all the way to the network: a model whose layers need the
image (a conv, a pool, a batch norm before any flattening) reshapes it to (N, 28, 28, 1) as
its first op, a view that costs nothing; a dense model takes the flat pixels as it always has.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cached_property

import keras
import numpy as np
import tensorflow as tf

from service.layers import MNIST_INPUT_SHAPE, Shape, model_shape
from service.schemas import Activation, Implementation, ModelSpec
from worker.naive import NaiveDense, NaiveSequential

# The signature of a batch's labels: integers, the batch size left open.
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
        network: Callable[..., tf.Tensor],
        weights: list[tf.Variable],
        *,
        outputs_probabilities: bool,
        input_shape: Shape,
        state: list[tf.Variable] | None = None,
        multiply_adds: int = 0,
    ) -> None:
        self.network = network
        self.weights = weights
        # False when the last activation is not softmax: the outputs are then logits.
        self.outputs_probabilities = outputs_probabilities
        # What the network reads per sample: flat (784,), or an image (28, 28, 1).
        self.input_shape = tuple(input_shape)
        # Variables that change in training without gradients: batch norm's moving
        # statistics, dropout's seed state. Checkpoints keep them with the weights.
        self.state = state or []
        self.multiply_adds = multiply_adds  # per sample, forward (service/layers.py)

    @property
    def input_size(self) -> int:
        """Values per sample in the flat rows the fit loop feeds."""
        return math.prod(self.input_shape)

    @property
    def images(self) -> tf.TensorSpec:
        """The signature of a batch of flat rows, the batch size left open."""
        return tf.TensorSpec([None, self.input_size], tf.float32)

    def __call__(self, inputs: tf.Tensor, *, training: bool = False) -> tf.Tensor:
        """The outputs for a batch of flat rows (or of images already in `input_shape`).
        `training`: dropout drops and batch norm uses and updates the batch's statistics."""
        if len(self.input_shape) > 1:
            inputs = tf.reshape(inputs, (-1, *self.input_shape))
        return self.network(inputs, training=training)

    @cached_property
    def evaluate_step(self) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
        """(summed loss, number correct) of a batch, compiled once per model (not per
        evaluation: a trace costs more than an epoch's evaluation on a small test set)."""

        @tf.function(input_signature=[self.images, LABELS])
        def step(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            outputs = self(images, training=False)
            loss = tf.reduce_sum(per_sample_loss(self, outputs, labels))
            correct = tf.reduce_sum(tf.cast(is_correct(outputs, labels), tf.float32))
            return loss, correct

        return step


def build_model(
    spec: ModelSpec, *, seed: int, input_shape: Shape = MNIST_INPUT_SHAPE
) -> Model:
    """The network `spec` describes on inputs of `input_shape`, its initial weights (and
    dropout's masks) fixed by `seed`."""
    outputs_probabilities = spec.layers[-1].activation is Activation.softmax
    shapes = model_shape(spec.layers, input_shape)
    flat = (math.prod(input_shape),)
    if spec.implementation is Implementation.naive:  # dense layers only (the spec's rule)
        rng = tf.random.Generator.from_seed(seed)
        layers, fan_in = [], flat[0]
        for layer in spec.layers:
            activation = _NAIVE_ACTIVATIONS[layer.activation]
            layers.append(NaiveDense(fan_in, layer.units, activation, rng=rng))
            fan_in = layer.units
        sequential = NaiveSequential(layers)

        def network(inputs: tf.Tensor, *, training: bool = False) -> tf.Tensor:
            return sequential(inputs)  # no layer behaves differently in training

        return Model(network, sequential.weights, outputs_probabilities=outputs_probabilities,
                     input_shape=flat, multiply_adds=shapes.multiply_adds)
    network_input = tuple(input_shape) if shapes.takes_images else flat
    seeds = np.random.SeedSequence(seed).generate_state(len(spec.layers))
    layers: list[keras.layers.Layer] = [keras.Input(network_input)]
    for shape, layer_seed in zip(shapes.layers, seeds, strict=True):
        if shape.layer.type == "dense" and shapes.takes_images and len(shape.input) > 1:
            layers.append(keras.layers.Flatten())  # dense on an image flattens it first
        layers.append(_keras_layer(shape.layer, int(layer_seed >> 1)))
    network = keras.Sequential(layers)
    # A keras 3 Variable wraps a tf.Variable (its `.value` under the TensorFlow backend); tf.Module
    # tracking and the TFLite converter see only the wrapped one.
    weights = [variable.value for variable in network.trainable_weights]
    state = [variable.value for variable in network.non_trainable_variables]
    return Model(network, weights, outputs_probabilities=outputs_probabilities,
                 input_shape=network_input, state=state, multiply_adds=shapes.multiply_adds)


def _keras_layer(layer: object, seed: int) -> keras.layers.Layer:
    """The Keras layer for one typed layer spec; `seed` fixes its initial weights or masks."""
    glorot = keras.initializers.GlorotUniform(seed=seed)
    match layer.type:
        case "dense":
            return keras.layers.Dense(layer.units, activation=layer.activation.value,
                                      kernel_initializer=glorot)
        case "conv2d":
            return keras.layers.Conv2D(
                layer.filters, layer.kernel_size, strides=layer.strides, padding=layer.padding,
                activation=layer.activation.value, kernel_initializer=glorot,
            )
        case "max_pool2d":
            return keras.layers.MaxPooling2D(layer.pool_size, strides=layer.strides)
        case "avg_pool2d":
            return keras.layers.AveragePooling2D(layer.pool_size, strides=layer.strides)
        case "global_avg_pool2d":
            return keras.layers.GlobalAveragePooling2D()
        case "flatten":
            return keras.layers.Flatten()
        case "dropout":
            return keras.layers.Dropout(layer.rate, seed=seed)
        case "batch_norm":
            return keras.layers.BatchNormalization(momentum=layer.momentum,
                                                   epsilon=layer.epsilon)
    raise ValueError(f"no Keras layer for {layer.type!r}")


def predict_probabilities(model: Model, images: tf.Tensor) -> tf.Tensor:
    """The model's class probabilities, shape (N, 10), whatever its last activation
    (inference: no dropout, batch norm with its moving statistics)."""
    outputs = model(images, training=False)
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
