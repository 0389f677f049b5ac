"""A worker's kits: a job trained on a kit that earlier jobs used gives the same losses, test
figures and servable model, bit for bit, as the same job on a model built anew; and the
export's template fills in a model's weights or declines to."""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from service.layers import MNIST_INPUT_SHAPE
from service.schemas import JobSpec
from worker.data import Mnist
from worker.export import ExportTemplate, export_model
from worker.kits import Kits, kit_key
from worker.models import build_model, predict_probabilities
from worker.training import fit
from worker.updaters import build_updater

SHAPE = MNIST_INPUT_SHAPE  # what a job on MNIST hands its kit
SMALL_DENSE = {"layers": [{"units": 32}, {"units": 10, "activation": "softmax"}]}
WITH_STATE = {"layers": [{"units": 32}, {"type": "dropout", "rate": 0.3},
                         {"type": "batch_norm"}, {"units": 10, "activation": "softmax"}]}
CONVNET = {"layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3},
                      {"type": "max_pool2d", "pool_size": 2}, {"type": "flatten"},
                      {"units": 10, "activation": "softmax"}]}


class Losses:
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_batch(self, *, loss: float, **_: float) -> None:
        self.losses.append(loss)

    def on_epoch_end(self, **_: float) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def fresh_run(spec: JobSpec, data: Mnist) -> tuple[list[float], tuple[float, float], bytes]:
    model = build_model(spec.model, seed=spec.seed)
    updater = build_updater(spec.optimizer)
    seen = Losses()
    result = fit(model, updater, data, epochs=spec.epochs, batch_size=spec.batch_size,
                 seed=spec.seed, callback=seen)
    return seen.losses, result, export_model(model)


def kit_run(kits: Kits, spec: JobSpec, data: Mnist
            ) -> tuple[list[float], tuple[float, float], bytes]:
    kit = kits.take(spec, SHAPE)
    model, updater = kit.start(spec, SHAPE)
    seen = Losses()
    result = fit(model, updater, data, epochs=spec.epochs, batch_size=spec.batch_size,
                 seed=spec.seed, callback=seen, compiler=kit.compile)
    return seen.losses, result, kit.export(scratch=None, standardize=None)


def litert(content: bytes, images: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=content)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.parametrize("family", [
    [{"seed": 1}, {"seed": 2, "optimizer": {"learning_rate": 0.01}}, {"seed": 3}],
    [{"seed": 4, "model": {"implementation": "naive"},
      "optimizer": {"name": "manual_sgd", "learning_rate": 0.1}},
     {"seed": 5, "model": {"implementation": "naive"},
      "optimizer": {"name": "manual_sgd", "learning_rate": 0.05}}],
    [{"seed": 6, "model": WITH_STATE, "optimizer": {"name": "adam", "learning_rate": 0.003}},
     {"seed": 7, "model": WITH_STATE, "optimizer": {"name": "adam", "learning_rate": 0.001}}],
    [{"seed": 8, "model": CONVNET, "batch_size": 64},
     {"seed": 9, "model": CONVNET, "batch_size": 64}],
], ids=["dense-rmsprop", "naive-manual-sgd", "dropout-batchnorm-adam", "convnet"])
def test_a_reused_kit_trains_as_a_fresh_build(family: list[dict], small: Mnist) -> None:
    kits = Kits()
    specs = [JobSpec.model_validate({"epochs": 2, **spec}) for spec in family]
    for spec in [*specs, specs[0]]:  # and the first again, after the others changed the kit
        reused = kit_run(kits, spec, small)
        built = fresh_run(spec, small)
        assert reused[0] == built[0]  # every batch's loss
        assert reused[1] == built[1]  # test loss and accuracy
        images = small.x_test[:16]
        if spec.model.layers[0].type == "conv2d":
            images = images.reshape(-1, 28, 28, 1)
        np.testing.assert_array_equal(litert(reused[2], images), litert(built[2], images))
    assert len(kits) == 1  # one architecture, one kit, whatever the learning rates
    # The first two jobs' models were converted (the second's confirming the template the
    # first's made), the others' filled in; but batch norm's statistics are folded by the
    # converter, so its models are all converted.
    kit = kits.take(specs[0], SHAPE)
    folded = any(layer.type == "batch_norm" for layer in specs[0].model.layers)
    assert kit.conversions == (len(specs) + 1 if folded else 2)


def test_kits_are_per_architecture_and_optimizer_but_not_learning_rate() -> None:
    base = JobSpec.model_validate({"model": SMALL_DENSE})
    same = [base.model_copy(update={"seed": 9}),
            JobSpec.model_validate({"model": SMALL_DENSE, "optimizer": {"learning_rate": 0.1}})]
    other = [JobSpec.model_validate({"model": WITH_STATE}),
             JobSpec.model_validate({"model": SMALL_DENSE, "optimizer": {"name": "adam"}}),
             JobSpec.model_validate({"model": SMALL_DENSE, "optimizer": {
                 "schedule": {"type": "exponential", "decay_steps": 10, "decay_rate": 0.9}}})]
    assert {kit_key(spec, SHAPE) for spec in [base, *same]} == {kit_key(base, SHAPE)}
    assert len({kit_key(spec, SHAPE) for spec in [base, *other]}) == 4
    assert kit_key(base, (20,)) != kit_key(base, SHAPE)


def test_kits_keep_the_most_recently_used(small: Mnist) -> None:
    kits = Kits(max_kits=2)
    widths = [8, 16, 24]
    taken = [kits.take(JobSpec.model_validate(
        {"model": {"layers": [{"units": units}, {"units": 10, "activation": "softmax"}]}}),
        SHAPE) for units in widths]
    assert len(kits) == 2
    again = kits.take(JobSpec.model_validate(
        {"model": {"layers": [{"units": 24}, {"units": 10, "activation": "softmax"}]}}), SHAPE)
    assert again is taken[2]
    small_budget = Kits(max_bytes=1)  # every kit is over it: only the one at hand is kept
    for units in widths:
        small_budget.take(JobSpec.model_validate(
            {"model": {"layers": [{"units": units}, {"units": 10, "activation": "softmax"}]}}),
            SHAPE)
        assert len(small_budget) == 1


def test_a_template_fills_in_weights_once_a_conversion_confirms_it(small: Mnist) -> None:
    spec = JobSpec.model_validate({"model": SMALL_DENSE}).model
    first = build_model(spec, seed=1)
    # Freshly built, both biases are zeros: which zeros are whose is unknown.
    assert ExportTemplate.from_conversion(first, export_model(first)) is None
    for index, weight in enumerate(first.weights):  # as trained: no two alike
        weight.assign(np.random.default_rng(index).normal(size=weight.shape).astype(np.float32))
    content = export_model(first)
    template = ExportTemplate.from_conversion(first, content)
    assert template is not None and not template.confirmed
    second = build_model(spec, seed=2)
    converted = export_model(second)
    assert template.confirm(second, converted)
    images = small.x_test[:8]
    np.testing.assert_array_equal(litert(template.fill(second), images), litert(converted, images))
    np.testing.assert_allclose(litert(template.fill(second), images),
                               predict_probabilities(second, images).numpy(), atol=1e-5)
    # A template that writes a weight in another layout than the converter's (here the
    # kernels as they are, not transposed) is never confirmed; nor one that breaks the bytes.
    as_they_are = ExportTemplate(content, [(offset, tuple(sorted(layout))) for offset, layout
                                           in template._places], first.input_shape)
    assert not as_they_are.confirm(second, converted)
    broken = ExportTemplate(content, [(offset - 4, layout) for offset, layout
                                      in template._places], first.input_shape)
    assert not broken.confirm(second, converted)


def test_batch_norm_is_not_fillable() -> None:
    # The converter folds batch norm's statistics into the next layer's weights.
    model = build_model(JobSpec.model_validate({"model": WITH_STATE}).model, seed=1)
    for index, weight in enumerate(model.weights):  # no two alike, no zeros
        weight.assign(np.random.default_rng(index).normal(size=weight.shape).astype(np.float32))
    assert ExportTemplate.from_conversion(model, export_model(model)) is None
