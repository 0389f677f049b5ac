"""The fit loop: batches, models, updaters, steps, divergence, stopping, determinism."""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pytest
import tensorflow as tf

from service.schemas import JobSpec, ModelSpec, OptimizerName, OptimizerSpec
from worker.data import Mnist, limited
from worker.models import build_model, predict_probabilities
from worker.training import (
    STEPS_PER_CALL,
    BatchGenerator,
    Diverged,
    FitPosition,
    Stopped,
    evaluate,
    fit,
    make_train_step,
    one_training_step,
)
from worker.updaters import ManualSGD, build_updater

IMPLEMENTATIONS = ["naive", "keras"]
# Settings that learn within a test's few dozen steps. The naive layers' uniform [0, 0.1)
# initialisation starts with huge logits; the book's manual SGD at 1e-3 needs ~10 full epochs
# to recover, adam a few dozen batches.
QUICK = {
    "naive": {"name": "adam", "learning_rate": 1e-3},
    "keras": {"name": "rmsprop", "learning_rate": 1e-3},
}


class Recorder:
    """A FitCallback that keeps everything it is told; stops after `stop_after` batches."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.batches: list[dict] = []
        self.epochs: list[dict] = []
        self.stop_after = stop_after

    def on_batch(self, **row: float) -> None:
        self.batches.append(row)

    def on_epoch_end(self, **row: float) -> None:
        self.epochs.append(row)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.batches) >= self.stop_after

    @property
    def losses(self) -> list[float]:
        return [row["loss"] for row in self.batches]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def job(implementation: str, **spec: object) -> JobSpec:
    spec.setdefault("optimizer", QUICK[implementation])
    model = spec.pop("model", {})
    return JobSpec.model_validate({"model": {"implementation": implementation, **model}, **spec})


def run(spec: JobSpec, data: Mnist, recorder: Recorder, **kwargs: object) -> tuple[float, float]:
    model = build_model(spec.model, seed=spec.seed)
    kwargs = {"epochs": spec.epochs, "batch_size": spec.batch_size, "seed": spec.seed} | kwargs
    return fit(model, build_updater(spec.optimizer), data, callback=recorder, **kwargs)


# --- BatchGenerator ---------------------------------------------------------------


def test_batches_cover_every_sample_once_with_a_smaller_last_batch() -> None:
    images, labels = np.arange(10 * 2).reshape(10, 2), np.arange(10)
    batches = BatchGenerator(images, labels, 4)
    assert batches.num_batches == len(batches) == 3
    got = list(batches)
    assert [len(y) for _, y in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([y for _, y in got]), labels)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in got]), images)
    assert all(np.shares_memory(x, images) for x, _ in got)  # views, not copies


def test_shuffled_batches_are_a_permutation_fixed_by_seed_and_epoch() -> None:
    images, labels = np.arange(100).reshape(100, 1), np.arange(100)

    def order(seed: int, epoch: int) -> np.ndarray:
        batches = BatchGenerator(images, labels, 32, seed=seed, epoch=epoch)
        pairs = list(batches)
        for x, y in pairs:
            np.testing.assert_array_equal(x[:, 0], y)  # images stay with their labels
        return np.concatenate([y for _, y in pairs])

    assert sorted(order(3, 0)) == list(range(100))
    np.testing.assert_array_equal(order(3, 1), order(3, 1))
    np.testing.assert_array_equal(order(3, 1), np.random.default_rng([3, 1]).permutation(100))
    assert not np.array_equal(order(3, 0), order(3, 1))
    assert not np.array_equal(order(3, 0), order(4, 0))


def test_iterating_again_gives_the_next_epochs_order() -> None:
    images, labels = np.arange(50).reshape(50, 1), np.arange(50)
    batches = BatchGenerator(images, labels, 20, seed=9)
    epochs = []
    for epoch in range(3):
        batches.epoch = epoch
        epochs.append(np.concatenate([y.copy() for _, y in batches]))
    for epoch, order in enumerate(epochs):
        np.testing.assert_array_equal(order, np.random.default_rng([9, epoch]).permutation(50))


def test_batch_generator_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        BatchGenerator(np.zeros((3, 1)), np.zeros(2), 2)


# --- models and updaters ------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_models_are_deterministic_in_their_seed(implementation: str) -> None:
    spec = ModelSpec(implementation=implementation)

    def weights(seed: int) -> list[np.ndarray]:
        return [w.numpy() for w in build_model(spec, seed=seed).weights]

    first = weights(1)
    assert [w.shape for w in first] == [(784, 512), (512,), (512, 10), (10,)]
    for a, b in zip(first, weights(1), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], weights(2)[0])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_outputs_are_probabilities_even_from_a_linear_last_layer(implementation: str) -> None:
    layers = [{"units": 32, "activation": "tanh"}, {"units": 10, "activation": "linear"}]
    model = build_model(ModelSpec(implementation=implementation, layers=layers), seed=0)
    assert not model.outputs_probabilities
    x = tf.random.stateless_uniform((4, 784), seed=(0, 0))
    probabilities = predict_probabilities(model, x).numpy()
    assert probabilities.shape == (4, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(probabilities, tf.nn.softmax(model(x)).numpy(), rtol=1e-6)


def test_manual_sgd_is_the_books_update_weights() -> None:
    w = tf.Variable([[1.0, -2.0], [0.5, 4.0]])
    g = tf.constant([[0.5, 1.0], [-2.0, 0.25]])
    ManualSGD(0.1).apply([g], [w])
    np.testing.assert_allclose(w.numpy(), [[0.95, -2.1], [0.7, 3.975]], rtol=1e-6)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("optimizer", list(OptimizerName))
def test_every_optimizer_updates_both_implementations(
    implementation: str, optimizer: OptimizerName, small: Mnist
) -> None:
    layers = [{"units": 16, "activation": "relu"}, {"units": 10, "activation": "softmax"}]
    model = build_model(ModelSpec(implementation=implementation, layers=layers), seed=0)
    before = [w.numpy() for w in model.weights]
    step = make_train_step(model, build_updater(OptimizerSpec(name=optimizer, learning_rate=0.01)))
    loss, accuracy = step(small.x_train[:64], small.y_train[:64])
    step(small.x_train[64:100], small.y_train[64:100])
    assert math.isfinite(float(loss)) and 0 <= float(accuracy) <= 1
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.weights, strict=True))
    assert step.experimental_get_tracing_count() == 1  # the smaller batch did not retrace


def test_eager_and_compiled_steps_agree(small: Mnist) -> None:
    spec = job("keras")
    eager, compiled = (build_model(spec.model, seed=0) for _ in range(2))
    x, y = small.x_train[:32], small.y_train[:32]
    eager_result = one_training_step(eager, build_updater(spec.optimizer), x, y)
    compiled_result = make_train_step(compiled, build_updater(spec.optimizer))(x, y)
    np.testing.assert_allclose(eager_result, compiled_result, rtol=1e-5)
    for a, b in zip(eager.weights, compiled.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


def test_evaluate_matches_the_definition(small: Mnist) -> None:
    model = build_model(ModelSpec(), seed=0)
    loss, accuracy = evaluate(model, small.x_test, small.y_test, batch_size=64)
    outputs = model(small.x_test).numpy()
    expected_loss = -np.log(outputs[np.arange(len(outputs)), small.y_test]).mean()
    assert loss == pytest.approx(expected_loss, rel=1e-4)
    assert accuracy == pytest.approx((outputs.argmax(axis=1) == small.y_test).mean())


# --- fit ------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_both_implementations_learn(implementation: str, small: Mnist, recorder: Recorder) -> None:
    spec = job(implementation, epochs=2, batch_size=32)
    test_loss, test_accuracy = run(spec, small, recorder)
    losses = recorder.losses
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert test_accuracy > 0.6  # chance is 0.1
    assert (test_loss, test_accuracy) == (
        recorder.epochs[-1]["test_loss"],
        recorder.epochs[-1]["test_accuracy"],
    )


def test_fit_reports_contiguous_steps_and_sane_epochs(small: Mnist, recorder: Recorder) -> None:
    data = limited(small, 300, 100)
    run(job("keras", epochs=2, batch_size=128), data, recorder)
    assert [row["step"] for row in recorder.batches] == list(range(6))
    pairs = [(row["epoch"], row["batch"]) for row in recorder.batches]
    assert pairs == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [row["epoch"] for row in recorder.epochs] == [0, 1]
    first = recorder.batches[:3]
    weighted = sum(row["loss"] * n for row, n in zip(first, [128, 128, 44], strict=True)) / 300
    assert recorder.epochs[0]["train_loss"] == pytest.approx(weighted)
    for row in recorder.epochs:
        assert 0 <= row["train_accuracy"] <= 1 and 0 <= row["test_accuracy"] <= 1
        assert row["test_loss"] > 0 and row["seconds"] > 0


def test_a_later_position_resumes_the_step_sequence(small: Mnist, recorder: Recorder) -> None:
    data = limited(small, 300, 100)
    run(job("naive", epochs=3, batch_size=100), data, recorder, position=FitPosition(epoch=2))
    assert [row["step"] for row in recorder.batches] == [6, 7, 8]
    assert [row["epoch"] for row in recorder.epochs] == [2]


def test_nothing_left_to_train_still_reports_the_test_metrics(
    small: Mnist, recorder: Recorder
) -> None:
    loss, accuracy = run(job("keras", epochs=1), small, recorder, position=FitPosition(epoch=1))
    assert recorder.batches == [] and loss > 0 and 0 <= accuracy <= 1


def test_should_stop_raises_stopped_at_the_next_call(small: Mnist, recorder: Recorder) -> None:
    # 1000 images in batches of 20: 50 a epoch, run 16 to a compiled call. Asked to stop after
    # the 3rd batch, the fit stops when that call returns, every batch of it reported.
    recorder.stop_after = 3
    with pytest.raises(Stopped) as stopped:
        run(job("keras", epochs=2, batch_size=20), small, recorder)
    assert (stopped.value.epoch, stopped.value.step) == (0, STEPS_PER_CALL - 1)
    assert [row["step"] for row in recorder.batches] == list(range(STEPS_PER_CALL))
    assert recorder.epochs == []


def test_stacked_calls_give_the_same_losses_as_single_steps(small: Mnist) -> None:
    """The 16-batch compiled call is only a faster way to run the book's step."""
    spec = job("keras", epochs=1, batch_size=20, seed=4)
    stacked = Recorder()
    run(spec, small, stacked)
    model, updater = build_model(spec.model, seed=4), build_updater(spec.optimizer)
    step = make_train_step(model, updater)
    batches = BatchGenerator(small.x_train, small.y_train, 20, seed=4)
    single = [float(step(images, labels)[0]) for images, labels in batches]
    np.testing.assert_allclose(stacked.losses, single, rtol=1e-5)


def test_each_call_trains_on_the_next_batches_from_any_start(mnist: Mnist) -> None:
    """Each call's batches are the next ones in the epoch's order: from a start that is not a
    call's boundary (a resume), through the epoch's smaller last batch, and again from the
    next epoch's first."""
    data = limited(mnist, 1010, 100)  # 50 full batches of 20 and one of 10, 16 to a call
    spec = job("keras", epochs=2, batch_size=20, seed=4)
    stacked = Recorder()
    run(spec, data, stacked, position=FitPosition(batch=5))
    model, updater = build_model(spec.model, seed=4), build_updater(spec.optimizer)
    step = make_train_step(model, updater)
    single = []
    for epoch, start in ((0, 5), (1, 0)):
        batches = BatchGenerator(data.x_train, data.y_train, 20, seed=4, epoch=epoch)
        single += [float(step(images, labels)[0])
                   for images, labels in itertools.islice(batches, start, None)]
    assert [row["step"] for row in stacked.batches] == list(range(5, 102))
    np.testing.assert_allclose(stacked.losses, single, rtol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_unshuffled_epochs_visit_the_batches_in_order(implementation: str, small: Mnist) -> None:
    """shuffle=False is the seeds' BatchGenerator: every epoch, images[0:B], images[B:2B], ..."""
    spec = job(implementation, epochs=2, batch_size=100, seed=4)
    in_order = Recorder()
    run(spec, small, in_order, shuffle=False)
    model, updater = build_model(spec.model, seed=4), build_updater(spec.optimizer)
    step = make_train_step(model, updater)
    single = [
        float(step(small.x_train[start : start + 100], small.y_train[start : start + 100])[0])
        for _ in range(2)
        for start in range(0, len(small.x_train), 100)
    ]
    np.testing.assert_allclose(in_order.losses, single, rtol=1e-5)
    shuffled = Recorder()
    run(spec, small, shuffled)
    assert not np.allclose(shuffled.losses, single, rtol=1e-3)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_huge_learning_rate_diverges(
    implementation: str, small: Mnist, recorder: Recorder
) -> None:
    # Without relu there are no dead units to stop the weights' growth: they overflow.
    layers = [{"units": 256, "activation": "linear"}, {"units": 10, "activation": "softmax"}]
    spec = job(
        implementation,
        model={"layers": layers},
        optimizer={"name": "manual_sgd", "learning_rate": 10.0},
        batch_size=64,
    )
    with pytest.raises(Diverged) as diverged:
        run(spec, small, recorder)
    last = recorder.batches[-1]
    assert diverged.value.step == last["step"]
    assert str(diverged.value) == f"diverged at step {last['step']}"
    assert not math.isfinite(last["loss"])
    assert all(math.isfinite(loss) for loss in recorder.losses[:-1])


def test_a_nan_image_diverges_at_its_batch(small: Mnist, recorder: Recorder) -> None:
    x_train = small.x_train.copy()
    x_train[123] = np.nan
    data = Mnist(x_train, small.y_train, small.x_test, small.y_test)
    # tanh, not relu: compiled graphs fuse MatMul+BiasAdd+Relu, and the fused kernel maps
    # nan to 0, which would hide the bad image.
    layers = [{"units": 32, "activation": "tanh"}, {"units": 10, "activation": "softmax"}]
    # Epoch 1 shuffles with default_rng([seed, 1]): find the batch the bad image lands in.
    position = int(np.flatnonzero(np.random.default_rng([5, 1]).permutation(1000) == 123)[0])
    expected_step = 10 + position // 100
    spec = job("keras", model={"layers": layers}, epochs=2, batch_size=100, seed=5)
    with pytest.raises(Diverged, match=rf"^diverged at step {expected_step}$"):
        run(spec, data, recorder, position=FitPosition(epoch=1))
    assert recorder.batches[-1]["step"] == expected_step and math.isnan(recorder.losses[-1])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_same_seed_same_losses(implementation: str, small: Mnist) -> None:
    data = limited(small, 512, 50)
    spec = job(implementation, epochs=1, batch_size=64, seed=11)
    first, second, other = Recorder(), Recorder(), Recorder()
    run(spec, data, first)
    run(spec, data, second)
    run(spec.model_copy(update={"seed": 12}), data, other)
    assert first.losses == second.losses
    assert first.losses != other.losses


def test_a_worker_running_job_after_job_logs_no_retracing_alarm(small: Mnist) -> None:
    # Each job traces its own steps once; TensorFlow would call that excessive after 5 jobs.
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    tf.get_logger().addHandler(handler)
    try:
        data = limited(small, 300, 100)
        for seed in range(7):
            run(job("keras", epochs=1, batch_size=100, seed=seed), data, Recorder())
    finally:
        tf.get_logger().removeHandler(handler)
    assert not [message for message in seen if "retracing" in message]
