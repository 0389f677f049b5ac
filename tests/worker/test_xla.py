"""The fit loop under XLA: the same job draws the same losses, bit for bit, run after run, in
one process or two, and resumed from a checkpoint; close to the plain graph's (XLA fuses, so the
last bits differ); a step that draws random numbers (dropout) keeps the plain graph, whose
masks are what a seed has always meant; a step XLA cannot compile falls back to the plain
graph; and only a job big enough to repay the compilation asks for XLA."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import pytest
import tensorflow as tf

from service.schemas import JobSpec, ModelSpec, OptimizerName
from worker.checkpoint import Checkpointer
from worker.data import Mnist, limited
from worker.models import build_model
from worker.training import (
    XLA_MIN_MULTIPLY_ADDS,
    CompiledSteps,
    FitPosition,
    Stopped,
    compile_steps,
    fit,
    make_train_steps,
    under_xla,
    use_xla,
)
from worker.updaters import ManualSGD, build_updater

DENSE = {"layers": [{"units": 64, "activation": "relu"}, {"units": 10, "activation": "softmax"}]}
BATCH_NORM = {"layers": [  # state that changes in training, and no random op
    {"units": 64, "activation": "relu"},
    {"type": "batch_norm", "momentum": 0.9},
    {"units": 10, "activation": "softmax"},
]}
CONVNET = {"layers": [
    {"type": "conv2d", "filters": 4, "kernel_size": 3},
    {"type": "max_pool2d", "pool_size": 2},
    {"type": "flatten"},
    {"units": 10, "activation": "softmax"},
]}
DROPOUT = {"layers": [
    {"units": 64, "activation": "relu"},
    {"type": "dropout", "rate": 0.5},
    {"units": 10, "activation": "softmax"},
]}


class Losses:
    """A FitCallback keeping every batch's loss; stops after `stop_after` batches."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.losses: list[float] = []
        self.steps: list[int] = []
        self.stop_after = stop_after

    def on_batch(self, *, step: int, loss: float, **_: float) -> None:
        self.steps.append(step)
        self.losses.append(loss)

    def on_epoch_end(self, **_: float) -> None:
        pass

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.losses) >= self.stop_after


def spec_of(model: dict, **fields: object) -> JobSpec:
    fields.setdefault("optimizer", {"name": "rmsprop", "learning_rate": 1e-3})
    return JobSpec.model_validate({"model": model, "epochs": 2, "batch_size": 25, "seed": 3,
                                   **fields})


def train(spec: JobSpec, data: Mnist, *, xla: bool) -> list[float]:
    losses = Losses()
    fit(build_model(spec.model, seed=spec.seed), build_updater(spec.optimizer), data,
        epochs=spec.epochs, batch_size=spec.batch_size, seed=spec.seed, callback=losses, xla=xla)
    return losses.losses


@pytest.fixture(scope="module")
def data(small: Mnist) -> Mnist:
    return limited(small, 1000, 100)  # 40 batches of 25 an epoch: calls of 16, 16 and 8


def test_the_same_job_draws_the_same_losses_under_xla(
    data: Mnist, caplog: pytest.LogCaptureFixture
) -> None:
    spec = spec_of(DENSE)
    with caplog.at_level(logging.DEBUG, logger="tapefit.worker"):
        first = train(spec, data, xla=True)
    assert "run under XLA" in caplog.text and "XLA cannot compile" not in caplog.text
    assert len(first) == 80
    assert train(spec, data, xla=True) == first  # bit for bit
    assert train(spec.model_copy(update={"seed": 4}), data, xla=True) != first


def test_another_process_draws_the_same_losses_under_xla(data: Mnist, sample_path: object
                                                         ) -> None:
    spec = spec_of(DENSE)
    program = (
        "import json, sys\n"
        "from service.schemas import JobSpec\n"
        "from worker.data import limited, load_mnist\n"
        "from tests.worker.test_xla import train\n"
        f"data = limited(load_mnist({str(sample_path)!r}), 1000, 100)\n"
        f"spec = JobSpec.model_validate_json({spec.model_dump_json()!r})\n"
        "print(json.dumps(train(spec, data, xla=True)))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == train(spec, data, xla=True)


def test_xla_changes_only_the_last_bits(data: Mnist) -> None:
    spec = spec_of(DENSE, epochs=1)
    under_xla, in_graph = train(spec, data, xla=True), train(spec, data, xla=False)
    np.testing.assert_allclose(under_xla, in_graph, rtol=1e-4)


@pytest.mark.parametrize("implementation", ["keras", "naive"])
@pytest.mark.parametrize("optimizer", list(OptimizerName))
def test_every_updater_trains_under_xla(
    implementation: str, optimizer: OptimizerName, data: Mnist
) -> None:
    spec = spec_of({**DENSE, "implementation": implementation}, epochs=1,
                   optimizer={"name": optimizer, "learning_rate": 1e-3, "clipnorm": 1.0})
    under_xla = train(spec, data, xla=True)
    np.testing.assert_allclose(under_xla[:16], train(spec, data, xla=False)[:16], rtol=1e-4)
    assert under_xla[-1] < under_xla[0]


def test_a_learning_rate_schedule_follows_its_step_count_under_xla(data: Mnist) -> None:
    spec = spec_of(DENSE, epochs=1, optimizer={
        "name": "manual_sgd", "learning_rate": 0.1,
        "schedule": {"type": "step", "boundaries": [10], "values": [0.1, 0.01]}})
    model, updater = build_model(spec.model, seed=3), build_updater(spec.optimizer)
    losses = Losses()
    fit(model, updater, data, epochs=1, batch_size=25, seed=3, callback=losses, xla=True)
    assert isinstance(updater, ManualSGD) and int(updater.iterations.numpy()) == 40
    np.testing.assert_allclose(losses.losses, train(spec, data, xla=False), rtol=1e-4)


def test_batch_norm_trains_under_xla(data: Mnist) -> None:
    spec = spec_of(BATCH_NORM, epochs=1)
    np.testing.assert_allclose(train(spec, data, xla=True)[:16],
                               train(spec, data, xla=False)[:16], rtol=1e-4)


@pytest.mark.parametrize(("model", "reason"), [
    (DROPOUT, "it draws random numbers (dropout)"),
    (CONVNET, "it convolves or pools"),
], ids=["dropout", "convnet"])
def test_a_step_xla_would_change_or_slow_keeps_the_plain_graph(
    model: dict, reason: str, data: Mnist, caplog: pytest.LogCaptureFixture
) -> None:
    """Dropout's masks under XLA would be others (XLA's random numbers are not TensorFlow's),
    a convnet many times slower."""
    spec = spec_of(model, epochs=1)
    with caplog.at_level(logging.DEBUG, logger="tapefit.worker"):
        asked = train(spec, data, xla=True)
    assert f"run in the plain graph: {reason}" in caplog.text
    assert asked == train(spec, data, xla=False)  # the very losses (and masks) of the graph


class PyFunctionSGD(ManualSGD):
    """Gradient descent whose rate comes from Python, an op XLA has no kernel for."""

    def apply(self, gradients: Sequence[tf.Tensor], weights: Sequence[tf.Variable]) -> None:
        rate = tf.py_function(lambda: np.float32(self.learning_rate), [], tf.float32)
        for g, w in zip(gradients, weights, strict=True):
            w.assign_sub(g * rate)


def test_a_step_xla_cannot_compile_falls_back_to_the_plain_graph(
    data: Mnist, caplog: pytest.LogCaptureFixture
) -> None:
    spec = spec_of(DENSE, epochs=1)

    def losses(xla: bool) -> list[float]:
        recorded = Losses()
        fit(build_model(spec.model, seed=3), PyFunctionSGD(0.1), data, epochs=1, batch_size=25,
            seed=3, callback=recorded, xla=xla)
        return recorded.losses

    with caplog.at_level(logging.DEBUG, logger="tapefit.worker"):
        asked = losses(xla=True)
    assert "XLA cannot compile" in caplog.text and "run under XLA" in caplog.text
    assert asked == losses(xla=False)


def test_a_call_runs_the_first_count_of_its_batches(data: Mnist) -> None:
    model = build_model(spec_of(DENSE).model, seed=0)
    steps = under_xla(model, make_train_steps(model, build_updater(spec_of(DENSE).optimizer)))
    images = data.x_train[:100].reshape(4, 25, 784)
    labels = data.y_train[:100].reshape(4, 25)
    for count in (4, 1, 3):
        losses, accuracies = steps(images, labels, count)
        assert losses.shape == accuracies.shape == (4,)
        assert np.count_nonzero(losses.numpy()) == count  # the rest never ran


@pytest.mark.parametrize("model", [DENSE, BATCH_NORM], ids=["dense", "batch_norm"])
def test_a_job_resumed_under_xla_draws_the_uninterrupted_losses(model: dict, data: Mnist
                                                                 ) -> None:
    spec = spec_of(model)

    def fresh() -> tuple:
        built = build_model(spec.model, seed=spec.seed)
        updater = build_updater(spec.optimizer)
        return built, updater, Checkpointer(built, updater)

    def run(built: object, updater: object, losses: Losses, position: FitPosition) -> None:
        fit(built, updater, data, epochs=2, batch_size=25, seed=3, callback=losses,
            position=position, xla=True)

    whole = Losses()
    run(*fresh()[:2], whole, FitPosition())
    first, position = Losses(stop_after=50), FitPosition()
    built, updater, checkpointer = fresh()
    with pytest.raises(Stopped):
        run(built, updater, first, position)
    assert (position.epoch, position.batch) == (1, 16)
    packed = checkpointer.pack(position)
    built, updater, checkpointer = fresh()  # a new worker
    resumed_at = checkpointer.restore(packed, batches_per_epoch=40, recorded_steps=56)
    rest = Losses()
    run(built, updater, rest, resumed_at)
    assert first.steps + rest.steps == list(range(80))
    assert first.losses + rest.losses == whole.losses  # bit for bit


def test_only_a_job_big_enough_to_repay_the_compilation_asks_for_xla(mnist: Mnist) -> None:
    dense = build_model(ModelSpec(), seed=0).multiply_adds
    assert not use_xla(epochs=1, samples=2_000, multiply_adds=dense)  # a study's trial
    assert use_xla(epochs=5, samples=60_000, multiply_adds=dense)  # the default job
    assert use_xla(epochs=1, samples=XLA_MIN_MULTIPLY_ADDS, multiply_adds=1)
    assert not use_xla(epochs=1, samples=XLA_MIN_MULTIPLY_ADDS - 1, multiply_adds=1)


class CallOrder(Losses):
    """Losses, and the order of the compiled calls and the batches' rows among them."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def on_batch(self, *, step: int, loss: float, **rest: float) -> None:
        super().on_batch(step=step, loss=loss, **rest)
        self.events.append(f"row {step}")

    def compiler(self, model: object, updater: object, *, xla: bool) -> CompiledSteps:
        steps = compile_steps(model, updater, xla=xla)

        def one(*args: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            self.events.append("one")
            return steps.one(*args)

        def stack(*args: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            self.events.append("stack")
            return steps.stack(*args)

        return CompiledSteps(one, stack)


@pytest.mark.parametrize("xla", [True, False])
def test_under_xla_a_jobs_first_loss_comes_before_the_compile(data: Mnist, xla: bool) -> None:
    # Its first batch runs alone in the plain graph, so its row is written while the next
    # call compiles; in the plain graph (nothing to compile) the first call is a stack.
    spec = spec_of(DENSE, epochs=1)
    seen = CallOrder()
    fit(build_model(spec.model, seed=spec.seed), build_updater(spec.optimizer), data,
        epochs=1, batch_size=spec.batch_size, seed=spec.seed, callback=seen, xla=xla,
        compiler=seen.compiler)
    if xla:
        assert seen.events[:3] == ["one", "row 0", "stack"]
    else:
        assert seen.events[:2] == ["stack", "row 0"]
    assert seen.steps == list(range(40))
    # Resumed past its first batch, a job's calls are stacks from where it stands.
    resumed = CallOrder()
    fit(build_model(spec.model, seed=spec.seed), build_updater(spec.optimizer), data,
        epochs=1, batch_size=spec.batch_size, seed=spec.seed, callback=resumed, xla=xla,
        compiler=resumed.compiler, position=FitPosition(batch=3))
    assert resumed.events[:2] == ["stack", "row 3"]
