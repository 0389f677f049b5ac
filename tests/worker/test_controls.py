"""The training controls: a validation split, early stopping (and its best weights), learning
rate schedules and clipping, and all of it kept across a checkpoint."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from service.db import Database
from service.queue import history, jobs
from service.schemas import EarlyStoppingSpec, JobSpec, OptimizerSpec
from tests.helpers.settings import TINY_SPEC
from worker.checkpoint import Checkpointer
from worker.data import DataError, Mnist
from worker.main import Worker
from worker.models import build_model
from worker.run import JobRun
from worker.training import EarlyStopping, FitPosition, evaluate, fit, hold_out
from worker.updaters import ManualSGD, build_updater


class Epochs:
    """A FitCallback keeping the epochs' figures."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_batch(self, **row: float) -> None:
        pass

    def on_epoch_end(self, **row: float) -> None:
        self.epochs.append(row)

    def should_stop(self) -> bool:
        return False


def test_the_held_out_part_is_seeded_fixed_and_apart_from_training(small: Mnist) -> None:
    kept, (x_val, y_val) = hold_out(small, 0.2, seed=3)
    assert (len(kept.y_train), len(y_val)) == (800, 200)
    again, (x_again, _) = hold_out(small, 0.2, seed=3)
    np.testing.assert_array_equal(x_val, x_again)  # the same on every resume
    _, (x_other, _) = hold_out(small, 0.2, seed=4)
    assert not np.array_equal(x_val, x_other)
    rows = {row.tobytes() for row in small.x_train}
    assert {row.tobytes() for row in x_val} <= rows
    # Training and validation split the training set between them; the test set is untouched.
    assert len({row.tobytes() for row in kept.x_train} | {row.tobytes() for row in x_val}) == \
        len(rows)
    assert kept.x_test is small.x_test
    assert hold_out(small, 0.0, seed=3) == (small, None)


def test_a_split_that_leaves_no_validation_image_is_a_data_error(small: Mnist) -> None:
    tiny = hold_out(small, 0.0, 0)[0]
    with pytest.raises(DataError, match="no validation image"):
        hold_out(type(tiny)(tiny.x_train[:3], tiny.y_train[:3], tiny.x_test, tiny.y_test),
                 0.1, seed=0)


def model_and_updater(**optimizer: object):
    spec = JobSpec.model_validate({**TINY_SPEC, "optimizer": optimizer or {
        "name": "rmsprop", "learning_rate": 0.005}})
    return spec, build_model(spec.model, seed=0), build_updater(spec.optimizer)


def test_every_epoch_reports_the_validation_figures(small: Mnist) -> None:
    _, model, updater = model_and_updater()
    kept, validation = hold_out(small, 0.25, seed=0)
    callback = Epochs()
    fit(model, updater, kept, epochs=2, batch_size=50, seed=0, callback=callback,
        validation=validation)
    assert len(callback.epochs) == 2
    last = callback.epochs[-1]
    assert (last["val_loss"], last["val_accuracy"]) == pytest.approx(
        evaluate(model, *validation))
    assert last["val_accuracy"] > 0.5


def test_early_stopping_ends_the_fit_after_patience_epochs_without_improvement(
    small: Mnist,
) -> None:
    # No epoch improves train_loss by 1000 after the first: with patience 2 the fit stops
    # after epoch 3 of 6.
    _, model, updater = model_and_updater()
    stopping = EarlyStopping(EarlyStoppingSpec(monitor="train_loss", patience=2,
                                               min_delta=1000), model)
    position, callback = FitPosition(), Epochs()
    fit(model, updater, small, epochs=6, batch_size=100, seed=0, callback=callback,
        position=position, early_stopping=stopping)
    assert len(callback.epochs) == 3
    assert (position.stopped_early_at, position.best_epoch, position.wait) == (3, 1, 2)


def test_restoring_the_best_weights_reports_and_keeps_the_best_epoch(small: Mnist) -> None:
    _, model, updater = model_and_updater()
    stopping = EarlyStopping(EarlyStoppingSpec(monitor="train_loss", patience=1,
                                               min_delta=1000, restore_best_weights=True),
                             model)
    position, callback = FitPosition(), Epochs()
    test_loss, test_accuracy = fit(model, updater, small, epochs=5, batch_size=100, seed=0,
                                   callback=callback, position=position,
                                   early_stopping=stopping)
    first, second = callback.epochs
    assert position.stopped_early_at == 2
    # The answer and the weights are epoch 1's, not epoch 2's.
    assert (test_loss, test_accuracy) == pytest.approx(
        (first["test_loss"], first["test_accuracy"]))
    assert evaluate(model, small.x_test, small.y_test) == pytest.approx(
        (first["test_loss"], first["test_accuracy"]))
    assert second["test_loss"] != pytest.approx(first["test_loss"])


@pytest.mark.parametrize(("schedule", "keras_schedule"), [
    ({"type": "exponential", "decay_steps": 4, "decay_rate": 0.5},
     keras.optimizers.schedules.ExponentialDecay(0.01, 4, 0.5)),
    ({"type": "cosine", "decay_steps": 10, "alpha": 0.1},
     keras.optimizers.schedules.CosineDecay(0.01, 10, alpha=0.1)),
    ({"type": "step", "boundaries": [3, 6], "values": [0.01, 0.005, 0.001]},
     keras.optimizers.schedules.PiecewiseConstantDecay([3, 6], [0.01, 0.005, 0.001])),
])
@pytest.mark.parametrize("name", ["manual_sgd", "adam"])
def test_schedules_are_keras_own_and_follow_the_step(
    small: Mnist, name: str, schedule: dict, keras_schedule: object
) -> None:
    spec = OptimizerSpec.model_validate({"name": name, "learning_rate": 0.01,
                                         "schedule": schedule})
    updater = build_updater(spec)
    model = build_model(JobSpec.model_validate(TINY_SPEC).model, seed=0)
    fit(model, updater, small, epochs=1, batch_size=125, seed=0, callback=Epochs())  # 8 steps
    if isinstance(updater, ManualSGD):
        step, rate = updater.iterations, updater.learning_rate(updater.iterations)
    else:
        step, rate = updater.optimizer.iterations, updater.optimizer.learning_rate
    assert int(step.numpy()) == 8
    assert float(rate) == pytest.approx(float(keras_schedule(8)))


def test_clipnorm_bounds_each_update(small: Mnist) -> None:
    moved = {}
    for clip in (None, 1e-4):
        spec = OptimizerSpec.model_validate({"name": "manual_sgd", "learning_rate": 1.0,
                                             "clipnorm": clip})
        model = build_model(JobSpec.model_validate(TINY_SPEC).model, seed=0)
        before = [w.numpy().copy() for w in model.weights]
        fit(model, build_updater(spec), small, epochs=1, batch_size=500, seed=0,
            callback=Epochs())  # 2 steps
        moved[clip] = max(np.linalg.norm(w.numpy() - b) for w, b in zip(model.weights, before,
                                                                         strict=True))
    assert moved[1e-4] <= 2 * 1e-4 + 1e-7 < moved[None]
    spec = OptimizerSpec.model_validate({"name": "adam", "clipnorm": 0.5})
    assert build_updater(spec).optimizer.clipnorm == 0.5


def test_a_checkpoint_keeps_best_so_far_patience_best_weights_and_schedule(
    small: Mnist,
) -> None:
    spec = JobSpec.model_validate({**TINY_SPEC, "optimizer": {
        "name": "manual_sgd", "learning_rate": 0.1,
        "schedule": {"type": "exponential", "decay_steps": 5, "decay_rate": 0.5}}})
    stopping_spec = EarlyStoppingSpec(monitor="train_loss", patience=3,
                                      restore_best_weights=True)

    def fresh():
        model, updater = build_model(spec.model, seed=0), build_updater(spec.optimizer)
        stopping = EarlyStopping(stopping_spec, model)
        return model, updater, stopping, Checkpointer(model, updater, stopping)

    model, updater, stopping, checkpointer = fresh()
    position = FitPosition()
    fit(model, updater, small, epochs=2, batch_size=250, seed=0, callback=Epochs(),
        position=position, early_stopping=stopping)
    position.wait = 2  # as if two epochs had not improved
    packed = checkpointer.pack(position)
    best = [w.numpy() for w in stopping.best_weights]

    model2, updater2, stopping2, checkpointer2 = fresh()
    restored = checkpointer2.restore(packed, batches_per_epoch=4, recorded_steps=8)
    assert (restored.best, restored.best_epoch, restored.wait) == (
        position.best, position.best_epoch, 2)
    assert not math.isnan(restored.best)
    for kept, saved in zip(stopping2.best_weights, best, strict=True):
        np.testing.assert_array_equal(kept.numpy(), saved)
    assert int(updater2.iterations.numpy()) == 8  # the schedule goes on from step 8
    for live, saved in zip(model2.weights, model.weights, strict=True):
        np.testing.assert_array_equal(live.numpy(), saved.numpy())


def submit(database: Database, spec: dict) -> int:
    with database.session(write=True) as session:
        return jobs.submit_job(session=session, spec=JobSpec.model_validate(spec)).id


def test_a_job_that_stops_early_succeeds_with_the_best_epoch_and_val_figures(
    settings, database: Database
) -> None:
    spec = {**TINY_SPEC, "epochs": 6, "validation_split": 0.2,
            "early_stopping": {"monitor": "train_loss", "patience": 1, "min_delta": 1000,
                               "restore_best_weights": True}}
    job_id = submit(database, spec)
    with Worker(settings) as worker:
        assert worker.run_once()
    with database.session() as session:
        job = jobs.describe(jobs.get_job(session=session, job_id=job_id))
        epochs = history.epoch_rows(session=session, job_id=job_id)
    assert job.state == "succeeded" and job.stopped_early_at_epoch == 2
    assert len(epochs) == 2 and all(e.val_accuracy is not None for e in epochs)
    assert job.test_accuracy == pytest.approx(epochs[0].test_accuracy)


def test_a_resumed_job_keeps_its_patience_count(
    settings, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handed back during epoch 3 with one epoch of patience spent, the job resumes on another
    worker and stops where an uninterrupted run does (after epoch 4, not 5)."""
    spec = {**TINY_SPEC, "epochs": 6, "batch_size": 50,
            "early_stopping": {"monitor": "train_loss", "patience": 3, "min_delta": 1000}}
    interrupted, uninterrupted = submit(database, spec), submit(database, spec)
    with Worker(settings) as worker:
        real_after_epoch = JobRun._after_epoch

        def after_epoch(run: JobRun) -> None:
            real_after_epoch(run)
            if run._position.epoch == 2:
                worker.stop.set()  # as a SIGTERM: checkpoint at the next call and hand back

        monkeypatch.setattr(JobRun, "_after_epoch", after_epoch)
        assert worker.run_once()
        monkeypatch.undo()
    with database.session() as session:
        assert jobs.get_job(session=session, job_id=interrupted).state == "queued"
        assert history.epoch_rows(session=session, job_id=interrupted)[-1].epoch == 1
    for _ in range(2):
        with Worker(settings) as worker:
            assert worker.run_once()
    with database.session() as session:
        ends = [jobs.describe(jobs.get_job(session=session, job_id=job_id))
                for job_id in (interrupted, uninterrupted)]
    assert [e.state for e in ends] == ["succeeded", "succeeded"]
    assert ends[0].stopped_early_at_epoch == ends[1].stopped_early_at_epoch == 4
    assert ends[0].test_accuracy == pytest.approx(ends[1].test_accuracy)
