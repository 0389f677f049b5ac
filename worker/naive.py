"""The book's from-scratch layers (Deep Learning with Python, chapter 2), on plain tf.Variables.

The only change from the book: the initial weights come from a seeded `tf.random.Generator`,
so a job's seed fixes its model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

Activation = Callable[[tf.Tensor], tf.Tensor]


class NaiveDense:
    """A dense layer: `activation(inputs @ W + b)`, W uniform in [0, 0.1), b zeros."""

    def __init__(
        self, input_size: int, output_size: int, activation: Activation, *, rng: tf.random.Generator
    ) -> None:
        self.activation = activation
        w_shape = (input_size, output_size)
        w_initial_value = rng.uniform(w_shape, minval=0, maxval=1e-1)
        self.W = tf.Variable(w_initial_value)
        b_shape = (output_size,)
        b_initial_value = tf.zeros(b_shape)
        self.b = tf.Variable(b_initial_value)

    def __call__(self, inputs: tf.Tensor) -> tf.Tensor:
        return self.activation(tf.matmul(inputs, self.W) + self.b)

    @property
    def weights(self) -> list[tf.Variable]:
        return [self.W, self.b]


class NaiveSequential:
    """Layers applied in order."""

    def __init__(self, layers: Sequence[NaiveDense]) -> None:
        self.layers = list(layers)

    def __call__(self, inputs: tf.Tensor) -> tf.Tensor:
        x = inputs
        for layer in self.layers:
            x = layer(x)
        return x

    @property
    def weights(self) -> list[tf.Variable]:
        weights = []
        for layer in self.layers:
            weights += layer.weights
        return weights
