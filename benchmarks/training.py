"""Training figures: the service's fit loop against Keras's model.fit (the default dense job
and the book's chapter-8 convnet), the cost of writing every batch's loss, what XLA buys the
dense loop against the plain graph, and the compiled step against the book's eager one.

All in one process, on the same data, model and batch size, so the ratios are fair even on
a noisy machine; each figure is the median of the epochs after the first (which traces).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from service.db import Database
from service.migrate import upgrade
from service.queue import jobs, leases
from service.schemas import JobSpec, ModelSpec, OptimizerSpec
from worker.data import Mnist
from worker.models import build_model
from worker.recorder import Heartbeat, JobRecorder
from worker.training import BatchGenerator, fit, one_training_step, use_xla
from worker.updaters import build_updater


@dataclass
class TrainingFigures:
    service_epoch_s: float  # the service's loop, writing every batch's loss to SQLite
    model_fit_epoch_s: float  # keras model.fit, same model, data, batch size, evaluation
    no_writes_epoch_s: float  # the service's loop with a callback that writes nothing
    plain_graph_epoch_s: float  # the same, its full batches in the plain graph, not XLA
    writing_share: float  # of the service loop's time, the part spent in database writes
    naive_compiled_epoch_s: float  # naive model, manual_sgd, the compiled step
    naive_eager_epoch_s: float  # the same, the book's eager step

    @property
    def fit_ratio(self) -> float:
        return self.service_epoch_s / self.model_fit_epoch_s

    @property
    def write_overhead(self) -> float:
        """With writes against without, measured A/B (noisier than writing_share)."""
        return self.service_epoch_s / self.no_writes_epoch_s - 1

    @property
    def xla_ratio(self) -> float:
        """What XLA bought: the loop under XLA against the plain graph (no writes either)."""
        return self.no_writes_epoch_s / self.plain_graph_epoch_s

    @property
    def eager_ratio(self) -> float:
        return self.naive_compiled_epoch_s / self.naive_eager_epoch_s


# Deep Learning with Python, chapter 8: the MNIST convnet, rmsprop at 1e-3, batch 64.
CONVNET = JobSpec.model_validate({
    "model": {"layers": [
        {"type": "conv2d", "filters": 32, "kernel_size": 3},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "conv2d", "filters": 64, "kernel_size": 3},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "conv2d", "filters": 128, "kernel_size": 3},
        {"type": "flatten"},
        {"units": 10, "activation": "softmax"},
    ]},
    "batch_size": 64,
})


@dataclass
class ConvnetFigures:
    service_epoch_s: float  # the service's loop, writing every batch's loss to SQLite
    model_fit_epoch_s: float  # keras model.fit on the same network, data and batch size

    @property
    def fit_ratio(self) -> float:
        return self.service_epoch_s / self.model_fit_epoch_s


class _Timed:
    """A FitCallback that notes each epoch's seconds and passes everything on."""

    def __init__(self, inner: object | None = None) -> None:
        self.inner = inner
        self.seconds: list[float] = []

    def on_batch(self, **row: float) -> None:
        if self.inner is not None:
            self.inner.on_batch(**row)

    def on_epoch_end(self, **figures: float) -> None:
        self.seconds.append(figures["seconds"])
        if self.inner is not None:
            self.inner.on_epoch_end(**figures)

    def should_stop(self) -> bool:
        return self.inner.should_stop() if self.inner is not None else False


def _median_after_first(seconds: list[float]) -> float:
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def service_loop(data: Mnist, spec: JobSpec, *, write: bool, xla: bool | None = None
                 ) -> tuple[float, float]:
    """Seconds per epoch of the worker's loop, and the share of it spent writing; with
    `write`, through a real JobRecorder on a fresh SQLite file (a real job, under a lease).
    `xla`: as `fit`'s (by default, what the worker would choose for the job)."""
    model = build_model(spec.model, seed=spec.seed)
    updater = build_updater(spec.optimizer)
    if not write:
        timed = _Timed()
        fit(model, updater, data, epochs=spec.epochs, batch_size=spec.batch_size,
            seed=spec.seed, callback=timed, xla=xla)
        return _median_after_first(timed.seconds), 0.0
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        upgrade(url)
        database = Database(url)
        with database.session(write=True) as session:
            jobs.submit_job(session=session, spec=spec)
        with database.session(write=True) as session:
            lease = leases.claim_job(session=session, worker_id="bench")
        with Heartbeat(database, lease, interval=5.0) as heartbeat:
            recorder = JobRecorder(database, lease, flush_rows=100, flush_interval=1.0,
                                   stop=threading.Event(), heartbeat=heartbeat)
            timed = _Timed(recorder)
            fit(model, updater, data, epochs=spec.epochs, batch_size=spec.batch_size,
                seed=spec.seed, callback=timed)
        database.dispose()
    return _median_after_first(timed.seconds), recorder.seconds_writing / sum(timed.seconds)


def keras_fit(data: Mnist, spec: JobSpec) -> float:
    """Seconds per epoch of model.fit on the same network the worker builds, fed the images
    in its input shape, with the test set as validation data so both sides evaluate it every
    epoch."""
    keras.utils.set_random_seed(spec.seed)
    built = build_model(spec.model, seed=spec.seed)
    model = built.network
    model.compile(optimizer=keras.optimizers.RMSprop(spec.optimizer.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    seconds: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seconds.append(time.perf_counter() - self.started)

    shape = (-1, *built.input_shape)  # views of the flat rows: (N, 784) or (N, 28, 28, 1)
    model.fit(data.x_train.reshape(shape), data.y_train, epochs=spec.epochs,
              batch_size=spec.batch_size, verbose=0, callbacks=[EpochTimer()],
              validation_data=(data.x_test.reshape(shape), data.y_test))
    return _median_after_first(seconds)


def naive_eager(data: Mnist, spec: JobSpec, epochs: int) -> float:
    """Seconds per epoch of the book's loop as written: the step called eagerly."""
    model = build_model(spec.model, seed=spec.seed)
    updater = build_updater(spec.optimizer)
    seconds = []
    batches = BatchGenerator(data.x_train, data.y_train, spec.batch_size, seed=spec.seed)
    for epoch in range(epochs):
        batches.epoch = epoch
        started = time.perf_counter()
        for images, labels in batches:
            loss, _ = one_training_step(model, updater, tf.constant(images), tf.constant(labels))
            float(loss)  # as the compiled loop reads every batch's loss
        seconds.append(time.perf_counter() - started)
    return _median_after_first(seconds)


def bench_training(data: Mnist, *, epochs: int = 3, rounds: int = 2) -> TrainingFigures:
    """All the training figures. The compared loops run interleaved, `rounds` times each,
    and each keeps its fastest round: on a shared machine, noise only ever adds time."""
    book = JobSpec(epochs=epochs)
    naive = JobSpec(
        epochs=epochs,
        model=ModelSpec(implementation="naive"),
        optimizer=OptimizerSpec(name="manual_sgd", learning_rate=0.1),
    )
    no_eval = Mnist(data.x_train, data.y_train, data.x_test[:1], data.y_test[:1])
    # Whether the worker runs the default job (its 5 epochs, not the bench's) under XLA on
    # this data: the loop measured is the one that job gets, whatever --epochs says.
    xla = use_xla(epochs=JobSpec().epochs, samples=len(data.y_train),
                  multiply_adds=build_model(book.model, seed=0).multiply_adds)
    service, model_fit, no_writes, plain_graph, shares = [], [], [], [], []
    for _ in range(rounds):
        seconds, share = service_loop(data, book, write=True, xla=xla)
        service.append(seconds)
        shares.append(share)
        model_fit.append(keras_fit(data, book))
        no_writes.append(service_loop(data, book, write=False, xla=xla)[0])
        plain_graph.append(service_loop(data, book, write=False, xla=False)[0])
    return TrainingFigures(
        service_epoch_s=min(service),
        model_fit_epoch_s=min(model_fit),
        no_writes_epoch_s=min(no_writes),
        plain_graph_epoch_s=min(plain_graph),
        writing_share=min(shares),
        # Training only: the eager loop has no evaluation to compare with.
        naive_compiled_epoch_s=service_loop(no_eval, naive, write=False)[0],
        naive_eager_epoch_s=naive_eager(data, naive, epochs),
    )


def bench_convnet(data: Mnist, *, epochs: int = 3) -> ConvnetFigures:
    """The chapter-8 convnet: the service's loop (every batch's loss written to SQLite)
    against model.fit on the same network, one run each (an epoch takes tens of seconds on
    two cores); each figure is its epochs after the first, which traces."""
    spec = CONVNET.model_copy(update={"epochs": epochs})
    service, _ = service_loop(data, spec, write=True)
    return ConvnetFigures(service_epoch_s=service, model_fit_epoch_s=keras_fit(data, spec))
