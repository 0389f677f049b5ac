"""Convnets and regularisation in the worker: the book's chapter-8 convnet learns on the
committed sample through the same loop, dropout and batch norm behave differently in training
and inference, a resumed convnet draws the uninterrupted curve, the export serves the real
input shape, and the default dense job is exactly what it was."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from service.schemas import JobSpec, ModelSpec
from worker.checkpoint import Checkpointer
from worker.data import Mnist, limited
from worker.export import export_model
from worker.models import build_model, predict_probabilities
from worker.training import (
    CALL_SAMPLES,
    STEPS_PER_CALL,
    FitPosition,
    Stopped,
    fit,
    make_train_step,
    steps_per_call,
)
from worker.updaters import build_updater

CONVNET = [  # Deep Learning with Python, chapter 8
    {"type": "conv2d", "filters": 32, "kernel_size": 3},
    {"type": "max_pool2d", "pool_size": 2},
    {"type": "conv2d", "filters": 64, "kernel_size": 3},
    {"type": "max_pool2d", "pool_size": 2},
    {"type": "conv2d", "filters": 128, "kernel_size": 3},
    {"type": "flatten"},
    {"units": 10, "activation": "softmax"},
]
# A small net with every kind of layer that keeps state or behaves differently in training.
REGULARISED = [
    {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same"},
    {"type": "batch_norm"},
    {"type": "max_pool2d", "pool_size": 2},
    {"type": "conv2d", "filters": 16, "kernel_size": 3, "strides": 2},
    {"type": "avg_pool2d", "pool_size": 2},
    {"type": "dropout", "rate": 0.3},
    {"type": "flatten"},
    {"units": 32, "activation": "relu"},
    {"type": "batch_norm", "momentum": 0.9},
    {"type": "dropout", "rate": 0.5},
    {"units": 10, "activation": "softmax"},
]


class Losses:
    """A FitCallback keeping every batch's (step, loss); stops after `stop_after` batches."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.rows: list[tuple[int, float]] = []
        self.epochs: list[dict] = []
        self.stop_after = stop_after

    def on_batch(self, *, step: int, loss: float, **_: float) -> None:
        self.rows.append((step, loss))

    def on_epoch_end(self, **row: float) -> None:
        self.epochs.append(row)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.rows) >= self.stop_after

    @property
    def losses(self) -> list[float]:
        return [loss for _, loss in self.rows]


def spec_of(layers: list[dict], **fields: object) -> JobSpec:
    return JobSpec.model_validate({"model": {"layers": layers}, **fields})


def test_the_books_convnet_learns_on_the_sample(mnist: Mnist) -> None:
    spec = spec_of(CONVNET, batch_size=64, epochs=3)
    model = build_model(spec.model, seed=spec.seed)
    assert model.input_shape == (28, 28, 1) and model.input_size == 784
    assert sum(int(np.prod(w.shape)) for w in model.weights) == 104_202
    losses = Losses()
    test_loss, test_accuracy = fit(model, build_updater(spec.optimizer), mnist, epochs=3,
                                   batch_size=64, seed=0, callback=losses)
    assert len(losses.rows) == 3 * 32  # 2,000 images in batches of 64: every batch's loss
    assert np.mean(losses.losses[-10:]) < 0.3 * np.mean(losses.losses[:10])
    assert test_accuracy > 0.85, test_accuracy  # chance is 0.1


def test_a_convnet_call_holds_a_bounded_amount_of_work() -> None:
    convnet = build_model(spec_of(CONVNET).model, seed=0)
    dense = build_model(ModelSpec(), seed=0)
    assert steps_per_call(128, dense.multiply_adds) == STEPS_PER_CALL  # as before
    assert steps_per_call(64, convnet.multiply_adds) == 5  # 320 images of 3.1M each
    assert steps_per_call(CALL_SAMPLES, convnet.multiply_adds) == 1


def test_dropout_drops_in_training_only(small: Mnist) -> None:
    spec = ModelSpec.model_validate(
        {"layers": [{"type": "dropout", "rate": 0.5}, {"units": 10, "activation": "softmax"}]}
    )
    model = build_model(spec, seed=0)
    assert model.input_shape == (784,)  # dropout then dense: the flat pixels, as before
    dropout = model.network.layers[0]
    ones = tf.ones((64, 784))
    dropped = dropout(ones, training=True).numpy()
    assert 0.4 < (dropped == 0).mean() < 0.6
    np.testing.assert_allclose(np.unique(dropped), [0.0, 2.0])  # the kept ones scaled up
    np.testing.assert_array_equal(dropout(ones, training=False).numpy(), ones.numpy())
    x = small.x_test[:16]
    inference = model(x).numpy()
    np.testing.assert_array_equal(model(x, training=False).numpy(), inference)
    np.testing.assert_array_equal(predict_probabilities(model, x).numpy(), inference)
    assert not np.allclose(model(x, training=True).numpy(), inference)


def test_batch_norm_learns_its_statistics_in_training_and_uses_them_in_inference(
    small: Mnist,
) -> None:
    spec = spec_of(REGULARISED, optimizer={"name": "adam", "learning_rate": 0.001})
    model = build_model(spec.model, seed=0)
    names = {v.name.split("/")[-1].split(":")[0] for v in model.state}
    assert names == {"moving_mean", "moving_variance", "seed_generator_state"}
    before = [v.numpy().copy() for v in model.state]
    step = make_train_step(model, build_updater(spec.optimizer))
    step(small.x_train[:64], small.y_train[:64])
    assert all(not np.array_equal(b, v.numpy())
               for b, v in zip(before, model.state, strict=True))

    # Without dropout, so only batch norm tells training from inference.
    plain = build_model(ModelSpec.model_validate({"layers": [
        {"type": "conv2d", "filters": 4, "kernel_size": 3}, {"type": "batch_norm"},
        {"type": "flatten"}, {"units": 10, "activation": "softmax"},
    ]}), seed=0)
    x = small.x_test[:8]
    # Inference: each image's probabilities are its own, whatever else is in the batch.
    alone = np.concatenate([plain(x[i : i + 1]).numpy() for i in range(8)])
    np.testing.assert_allclose(plain(x).numpy(), alone, rtol=1e-5, atol=1e-6)
    # Training: normalised by the batch's statistics, an image's outputs depend on the batch.
    assert not np.allclose(plain(x[:2], training=True).numpy()[0],
                           plain(x, training=True).numpy()[0], rtol=1e-3)


def test_same_seed_same_losses_with_dropout_and_batch_norm(small: Mnist) -> None:
    data = limited(small, 512, 50)
    spec = spec_of(REGULARISED, batch_size=64, seed=7)

    def losses(seed: int) -> list[float]:
        recorded = Losses()
        fit(build_model(spec.model, seed=seed), build_updater(spec.optimizer), data, epochs=1,
            batch_size=64, seed=seed, callback=recorded)
        return recorded.losses

    first = losses(7)
    assert first == losses(7)
    assert first != losses(8)


def test_a_resumed_convnet_with_batch_norm_draws_the_uninterrupted_curve(small: Mnist) -> None:
    spec = spec_of(REGULARISED, batch_size=25, seed=3, epochs=2,
                   optimizer={"name": "rmsprop", "learning_rate": 0.001})
    data = limited(small, 1000, 100)  # 40 batches an epoch

    def fresh() -> tuple:
        model = build_model(spec.model, seed=spec.seed)
        updater = build_updater(spec.optimizer)
        return model, updater, Checkpointer(model, updater)

    whole = Losses()
    model, updater, _ = fresh()
    expected = fit(model, updater, data, epochs=2, batch_size=25, seed=3, callback=whole)
    expected_state = [v.numpy() for v in model.state]

    first = Losses(stop_after=50)
    model, updater, checkpointer = fresh()
    position = FitPosition()
    with pytest.raises(Stopped):
        fit(model, updater, data, epochs=2, batch_size=25, seed=3, callback=first,
            position=position)
    assert position.epoch == 1 and 0 < position.batch < 40  # mid-epoch
    packed = checkpointer.pack(position)
    stopped_state = [v.numpy() for v in model.state]

    model, updater, checkpointer = fresh()  # a new worker
    resumed_at = checkpointer.restore(packed, batches_per_epoch=40,
                                      recorded_steps=40 + position.batch)
    assert resumed_at == position
    for restored, saved in zip(model.state, stopped_state, strict=True):
        np.testing.assert_array_equal(restored.numpy(), saved)  # moving stats, seed state
    rest = Losses()
    result = fit(model, updater, data, epochs=2, batch_size=25, seed=3, callback=rest,
                 position=resumed_at)
    assert [s for s, _ in first.rows + rest.rows] == list(range(80))
    np.testing.assert_allclose([loss for _, loss in first.rows + rest.rows], whole.losses,
                               rtol=1e-5)
    np.testing.assert_allclose(result, expected, rtol=1e-5)
    for mine, theirs in zip(model.state, expected_state, strict=True):
        np.testing.assert_allclose(mine.numpy(), theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layers", [CONVNET, REGULARISED], ids=["convnet", "regularised"])
def test_a_convnet_exports_with_its_image_input_and_litert_agrees(
    layers: list[dict], small: Mnist
) -> None:
    spec = spec_of(layers, batch_size=50)
    model = build_model(spec.model, seed=1)
    fit(model, build_updater(spec.optimizer), limited(small, 300, 10), epochs=1, batch_size=50,
        seed=1, callback=Losses())  # moving statistics away from their initial values
    content = export_model(model)
    interpreter = Interpreter(model_content=content)
    inputs = interpreter.get_input_details()[0]
    assert list(inputs["shape_signature"]) == [-1, 28, 28, 1]
    images = small.x_test[:7].reshape(7, 28, 28, 1)
    interpreter.resize_tensor_input(inputs["index"], list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], images)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    expected = predict_probabilities(model, small.x_test[:7]).numpy()  # flat rows, reshaped
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_the_default_job_is_the_model_it_always_was(small: Mnist) -> None:
    """The dense builder before layer types, kept here: the same weights, the same losses."""
    spec = JobSpec(seed=5)
    seeds = np.random.SeedSequence(5).generate_state(2)
    before = keras.Sequential([keras.Input((784,))] + [
        keras.layers.Dense(layer.units, activation=layer.activation.value,
                           kernel_initializer=keras.initializers.GlorotUniform(seed=int(s >> 1)))
        for layer, s in zip(spec.model.layers, seeds, strict=True)
    ])
    model = build_model(spec.model, seed=5)
    assert model.input_shape == (784,) and model.state == []
    for now, then in zip(model.weights, before.trainable_weights, strict=True):
        np.testing.assert_array_equal(now.numpy(), then.numpy())
    x, y = small.x_train[:128], small.y_train[:128]
    loss, _ = make_train_step(model, build_updater(spec.optimizer))(x, y)
    expected = keras.losses.sparse_categorical_crossentropy(y, before(x)).numpy().mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
