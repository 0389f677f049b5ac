"""Checkpoints: a fit stopped at any batch and resumed from its packed checkpoint, in a new
model, goes on exactly as if it had never stopped."""

from __future__ import annotations

import numpy as np
import pytest

from service.schemas import JobSpec
from worker.checkpoint import Checkpointer
from worker.data import Mnist, limited
from worker.models import build_model
from worker.training import FitPosition, Stopped, fit
from worker.updaters import build_updater

SPEC = {"epochs": 2, "batch_size": 25, "seed": 3,
        "model": {"layers": [{"units": 32, "activation": "relu"},
                             {"units": 10, "activation": "softmax"}]}}


class Losses:
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


@pytest.mark.parametrize(("implementation", "optimizer"), [("keras", "rmsprop"), ("naive", "adam"),
                                                           ("naive", "manual_sgd")])
def test_a_resumed_fit_continues_exactly(
    implementation: str, optimizer: str, small: Mnist
) -> None:
    learning_rate = 0.01 if optimizer != "rmsprop" else 0.001
    spec = JobSpec.model_validate({
        **SPEC, "model": {**SPEC["model"], "implementation": implementation},
        "optimizer": {"name": optimizer, "learning_rate": learning_rate},
    })
    data = limited(small, 1000, 100)  # 40 batches an epoch, run 16 to a compiled call

    def fresh() -> tuple:
        model = build_model(spec.model, seed=spec.seed)
        updater = build_updater(spec.optimizer)
        return model, updater, Checkpointer(model, updater)

    whole = Losses()
    model, updater, _ = fresh()
    expected = fit(model, updater, data, epochs=2, batch_size=25, seed=3, callback=whole)

    first = Losses(stop_after=50)  # asked in the second epoch; it stops after its 2nd call
    model, updater, checkpointer = fresh()
    position = FitPosition()
    with pytest.raises(Stopped):
        fit(model, updater, data, epochs=2, batch_size=25, seed=3, callback=first,
            position=position)
    assert (position.epoch, position.batch) == (1, 16)  # mid-epoch
    packed = checkpointer.pack(position)

    model, updater, checkpointer = fresh()  # a new worker, maybe on another machine
    resumed_at = checkpointer.restore(packed, batches_per_epoch=40, recorded_steps=56)
    assert resumed_at == position
    rest = Losses()
    result = fit(model, updater, data, epochs=2, batch_size=25, seed=3, callback=rest,
                 position=resumed_at)
    assert [s for s, _ in first.rows + rest.rows] == list(range(80))
    np.testing.assert_allclose(
        [loss for _, loss in first.rows + rest.rows], [loss for _, loss in whole.rows], rtol=1e-5
    )
    np.testing.assert_allclose(rest.epochs[-1]["train_loss"], whole.epochs[-1]["train_loss"],
                               rtol=1e-5)
    np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_restore_passes_over_a_checkpoint_the_history_does_not_reach(small: Mnist) -> None:
    spec = JobSpec.model_validate(SPEC)
    model = build_model(spec.model, seed=0)
    updater = build_updater(spec.optimizer)
    checkpointer = Checkpointer(model, updater)
    assert checkpointer.restore(None, batches_per_epoch=8, recorded_steps=100) == FitPosition()
    saved = FitPosition(epoch=1, batch=4, loss_sum=3.0, correct_sum=2.0)
    packed = checkpointer.pack(saved)
    assert checkpointer.restore(packed, batches_per_epoch=8, recorded_steps=12) == saved
    assert checkpointer.restore(packed, batches_per_epoch=8, recorded_steps=11) == FitPosition()


def test_a_checkpoint_restores_the_weights_it_was_taken_with(small: Mnist) -> None:
    spec = JobSpec.model_validate(SPEC)
    model = build_model(spec.model, seed=0)
    packed = Checkpointer(model, build_updater(spec.optimizer)).pack(FitPosition(epoch=1))
    other = build_model(spec.model, seed=1)
    assert not np.allclose(other.weights[0].numpy(), model.weights[0].numpy())
    Checkpointer(other, build_updater(spec.optimizer)).restore(
        packed, batches_per_epoch=8, recorded_steps=8
    )
    for mine, theirs in zip(other.weights, model.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
