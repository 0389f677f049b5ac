"""The book's NaiveDense and NaiveSequential."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from worker.naive import NaiveDense, NaiveSequential


def test_dense_initial_weights_and_forward_pass() -> None:
    layer = NaiveDense(784, 512, tf.nn.relu, rng=tf.random.Generator.from_seed(0))
    w = layer.W.numpy()
    assert w.shape == (784, 512) and w.min() >= 0 and w.max() < 0.1
    assert layer.b.shape == (512,) and not layer.b.numpy().any()
    x = np.random.default_rng(0).random((3, 784), dtype=np.float32) - 0.5
    np.testing.assert_allclose(layer(x).numpy(), np.maximum(x @ w, 0), rtol=1e-5, atol=1e-6)
    assert layer.weights == [layer.W, layer.b]


def test_same_seed_same_weights() -> None:
    def first_w(seed: int) -> np.ndarray:
        return NaiveDense(4, 3, tf.nn.relu, rng=tf.random.Generator.from_seed(seed)).W.numpy()

    np.testing.assert_array_equal(first_w(7), first_w(7))
    assert not np.array_equal(first_w(7), first_w(8))


def test_sequential_chains_layers_and_lists_their_weights() -> None:
    rng = tf.random.Generator.from_seed(0)
    first = NaiveDense(784, 16, tf.nn.relu, rng=rng)
    last = NaiveDense(16, 10, tf.nn.softmax, rng=rng)
    model = NaiveSequential([first, last])
    x = tf.random.stateless_uniform((5, 784), seed=(1, 2))
    outputs = model(x)
    np.testing.assert_allclose(outputs.numpy(), last(first(x)).numpy())
    np.testing.assert_allclose(outputs.numpy().sum(axis=1), 1, rtol=1e-6)
    assert model.weights == [first.W, first.b, last.W, last.b]
    assert all(isinstance(w, tf.Variable) and w.trainable for w in model.weights)
