"""The custom fit loop of Deep Learning with Python, chapter 2: GradientTape, batches, updates.

The compiled step does tensor math only; everything with a side effect (metric rows,
cancellation, heartbeats) happens in `fit`'s eager loop, through a `FitCallback`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import tensorflow as tf

from service.schemas import EarlyStoppingSpec
from worker.data import DataError, Mnist
from worker.models import LABELS, Model, is_correct, per_sample_loss
from worker.updaters import Updater


class _OneTracePerJob(logging.Filter):
    """Each job builds its own model and traces its own steps once (their input signatures
    are fixed, so a job never retraces). TensorFlow counts those traces across the jobs of a
    long-lived worker and warns of "excessive retracing": a false alarm, kept out of the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


tf.get_logger().addFilter(_OneTracePerJob())

TrainStep = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


class BatchGenerator:
    """Consecutive batches of (images, labels): each sample once per epoch, the last batch smaller.

    With a seed, an epoch visits the samples in the order
    `np.random.default_rng([seed, epoch]).permutation(n)`, so resuming at epoch k needs no
    saved random state. Set `epoch` and iterate again for the next epoch: the permuted copy's
    memory is reused, so a batch stays valid only until the next iteration starts.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int = 128,
        *,
        seed: int | None = None,
        epoch: int = 0,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.seed, self.epoch = seed, epoch
        self.num_batches = math.ceil(len(images) / batch_size)
        self._shuffled: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        images, labels = self.epoch_arrays()
        for start in range(0, len(images), self.batch_size):
            yield images[start : start + self.batch_size], labels[start : start + self.batch_size]

    def epoch_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """This epoch's images and labels in visiting order (valid until the next call)."""
        images, labels = self.images, self.labels
        if self.seed is not None:
            order = self.order()
            # Reusing the buffers spares the page faults of a fresh 188 MB array every epoch
            # on the full MNIST; mode="clip" (a no-op for a permutation) avoids a buffered take.
            if self._shuffled is None:
                self._shuffled = (np.empty_like(images), np.empty_like(labels))
            images, labels = self._shuffled
            np.take(self.images, order, axis=0, out=images, mode="clip")
            np.take(self.labels, order, out=labels, mode="clip")
        return images, labels

    def order(self) -> np.ndarray:
        """The indices of this epoch's samples, in visiting order."""
        if self.seed is None:
            return np.arange(len(self.images))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.images))


def one_training_step(
    model: Model, updater: Updater, images_batch: tf.Tensor, labels_batch: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """The book's step: forward pass under a tape, gradients, update; (mean loss, accuracy).

    In training mode: dropout drops, and batch norm normalises by the batch and updates its
    moving statistics (evaluation and export run the model with training=False)."""
    with tf.GradientTape() as tape:
        predictions = model(images_batch, training=True)
        per_sample_losses = per_sample_loss(model, predictions, labels_batch)
        average_loss = tf.reduce_mean(per_sample_losses)
    gradients = tape.gradient(average_loss, model.weights)
    updater.apply(gradients, model.weights)
    accuracy = tf.reduce_mean(tf.cast(is_correct(predictions, labels_batch), tf.float32))
    return average_loss, accuracy


def make_train_step(model: Model, updater: Updater) -> TrainStep:
    """Compile `one_training_step` for this model and updater.

    The fixed input signature keeps the last, smaller batch from tracing a second graph.
    """
    updater.build(model.weights)

    @tf.function(input_signature=[model.images, LABELS])
    def train_step(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return one_training_step(model, updater, images, labels)

    return train_step


# Full batches run up to this many at a time in one compiled call: one Python-to-TensorFlow
# dispatch per 16 batches instead of per batch (the profile put a quarter of an epoch in
# dispatch). Every batch's loss still comes back. A call holds at most CALL_SAMPLES images and
# CALL_MULTIPLY_ADDS of forward work (a convnet's images cost ~8 times a dense model's), so a
# cancel or shutdown, seen between calls, waits for a bounded amount of work.
STEPS_PER_CALL = 16
CALL_SAMPLES = 2048
CALL_MULTIPLY_ADDS = 1_000_000_000


def steps_per_call(batch_size: int, multiply_adds: int = 0) -> int:
    """How many full batches one compiled call runs, for a model of `multiply_adds` per
    sample."""
    by_work = CALL_MULTIPLY_ADDS // max(1, batch_size * multiply_adds)
    return max(1, min(STEPS_PER_CALL, CALL_SAMPLES // batch_size, by_work))

TrainSteps = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]

log = logging.getLogger("tapefit.worker")

# XLA fuses each step into a few kernels (on the default dense job an epoch takes about 0.75 of
# the plain graph's time), but compiling the multi-step call costs about 0.5-0.8 s for each
# batch size, before the first step: a job whose training is smaller than this, in forward
# multiply-adds over all its epochs (about two epochs of the default job on the full MNIST),
# runs in the plain graph. The choice follows from the spec and its data alone, so a job
# resumed elsewhere, or run again, takes the same path and draws the same losses.
XLA_MIN_MULTIPLY_ADDS = 5 * 10**10


def use_xla(*, epochs: int, samples: int, multiply_adds: int) -> bool:
    """Whether a job of `epochs` over `samples` training images, `multiply_adds` each, runs
    its full batches under XLA."""
    return epochs * samples * multiply_adds >= XLA_MIN_MULTIPLY_ADDS


def make_train_steps(model: Model, updater: Updater) -> TrainSteps:
    """Compile `one_training_step` over a stack of equal batches, shape (K, B, 784) and
    (K, B), of which the first `count` run, in order: each one's (loss, accuracy) comes back,
    shape (K,), the entries past `count` zero.

    The loop's trip count is an argument, not the stack's shape, so one compilation (XLA's
    is by shape) serves every call of a job: the epoch's last call, with fewer batches,
    passes the same buffer."""
    updater.build(model.weights)

    @tf.function(input_signature=_stack_signature(model))
    def train_steps(
        images: tf.Tensor, labels: tf.Tensor, count: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        capacity = tf.shape(images)[0]
        losses = tf.TensorArray(tf.float32, size=capacity, element_shape=[])
        accuracies = tf.TensorArray(tf.float32, size=capacity, element_shape=[])
        # A while on `i < count`, not a tf.range: XLA takes a range's limit as a constant,
        # and would compile the call again for every new count.
        i = tf.constant(0)
        while i < count:
            loss, accuracy = one_training_step(model, updater, images[i], labels[i])
            losses = losses.write(i, loss)
            accuracies = accuracies.write(i, accuracy)
            i += 1
        return losses.stack(), accuracies.stack()

    return train_steps


def _stack_signature(model: Model) -> list[tf.TensorSpec]:
    return [
        tf.TensorSpec([None, None, model.input_size], tf.float32),
        tf.TensorSpec([None, None], tf.int32),
        tf.TensorSpec([], tf.int32),
    ]


def under_xla(model: Model, plain: TrainSteps) -> TrainSteps:
    """`plain` (`make_train_steps`'s) compiled by XLA, at its first call: unless its graph has
    an op XLA would change or slow down (see `unfit_for_xla`: it then stays the plain graph),
    and falling back to the plain graph for good if XLA cannot compile it. Nothing is traced
    or compiled before that first call, so a job's first batch, which runs alone (see `fit`),
    is not kept waiting."""
    chosen: list[TrainSteps] = []

    def choose() -> TrainSteps:
        traced = plain.get_concrete_function()  # the plain graph's own trace, made once
        reason = unfit_for_xla(traced)
        if reason is not None:
            log.debug("this job's steps run in the plain graph: %s", reason)
            return plain

        # XLA compiles the traced graph itself: no second trace.
        @tf.function(input_signature=_stack_signature(model), jit_compile=True)
        def compiled(
            images: tf.Tensor, labels: tf.Tensor, count: tf.Tensor
        ) -> tuple[tf.Tensor, tf.Tensor]:
            return traced(images, labels, count)

        log.debug("this job's full batches run under XLA")
        return _falling_back(compiled, plain)

    def train_steps(
        images: tf.Tensor, labels: tf.Tensor, count: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        if not chosen:
            chosen.append(choose())
        return chosen[0](images, labels, count)

    return train_steps


# Random ops under XLA draw other numbers from the same seed: TensorFlow's kernels default to
# Philox, XLA's to ThreeFry on CPU (and keras' dropout does not choose), so a dropout model
# would train with other masks than the same job always had. XLA's CPU convolutions and
# pooling (and their gradients) are slower than TensorFlow's oneDNN kernels by an order of
# magnitude or more: the chapter-8 convnet took minutes an epoch under XLA, not seconds.
_UNFIT_FOR_XLA = {
    "it draws random numbers (dropout)": ("Random", "RngBitGenerator", "RngReadAndSkip"),
    "it convolves or pools": ("Conv", "Pool"),
}


def unfit_for_xla(function: tf.types.experimental.ConcreteFunction) -> str | None:
    """Why a traced function should not run under XLA, from the ops in it and in the
    functions it calls (a loop's body); None when nothing speaks against it."""
    graph = function.graph.as_graph_def()
    ops = {node.op for node in graph.node}
    ops.update(node.op for f in graph.library.function for node in f.node_def)
    for reason, markers in _UNFIT_FOR_XLA.items():
        if any(marker in op for op in ops for marker in markers):
            return reason
    return None


def _falling_back(first: TrainSteps, fallback: TrainSteps) -> TrainSteps:
    """`first`, unless its first call fails, as an XLA compilation of an op it has no kernel
    for would: then `fallback`, for every call. A failed XLA call has updated no variable
    (its updates are written when the whole computation is done)."""
    chosen: list[TrainSteps] = []

    def train_steps(
        images: tf.Tensor, labels: tf.Tensor, count: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        if chosen:
            return chosen[0](images, labels, count)
        try:
            result = first(images, labels, count)
            chosen.append(first)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
            # What XLA raises for an op it cannot compile; not, say, a failed allocation,
            # which would fail the plain graph too and must not change the path for good.
            log.debug("XLA cannot compile this step; the plain graph runs it: %s", error)
            chosen.append(fallback)
            result = fallback(images, labels, count)
        return result

    return train_steps


@dataclass(frozen=True)
class CompiledSteps:
    """A model's and updater's compiled steps: one batch, and a stack of equal batches."""

    one: TrainStep
    stack: TrainSteps


def compile_steps(model: Model, updater: Updater, *, xla: bool = False) -> CompiledSteps:
    """Both steps of `model` and `updater`, the stack under XLA with `xla`; they trace (and
    compile) at their first call, once: a worker keeps them for its next job of the same
    architecture (worker/kits.py)."""
    plain = make_train_steps(model, updater)
    return CompiledSteps(make_train_step(model, updater),
                         under_xla(model, plain) if xla else plain)


def evaluate(
    model: Model, images: np.ndarray, labels: np.ndarray, batch_size: int = 1024
) -> tuple[float, float]:
    """Mean loss and accuracy over `images`, computed in compiled batches."""
    total_loss = total_correct = 0.0
    for start in range(0, len(images), batch_size):
        loss, correct = model.evaluate_step(
            images[start : start + batch_size], labels[start : start + batch_size]
        )
        total_loss += float(loss)
        total_correct += float(correct)
    return total_loss / len(images), total_correct / len(images)


class FitCallback(Protocol):
    """Where `fit` reports progress; the caller stores rows and decides when to stop."""

    def on_batch(self, *, step: int, epoch: int, batch: int, loss: float, accuracy: float) -> None:
        """After every batch; `loss` may be nan or inf (the batch that diverged)."""

    def on_epoch_end(
        self,
        *,
        epoch: int,
        train_loss: float,
        train_accuracy: float,
        test_loss: float,
        test_accuracy: float,
        seconds: float,
        val_loss: float | None = None,
        val_accuracy: float | None = None,
    ) -> None:
        """After every epoch's evaluation; `seconds` covers its training and evaluation; the
        validation figures are None without a validation split."""

    def should_stop(self) -> bool:
        """Checked after every batch: True stops the fit with `Stopped`."""


class Diverged(Exception):
    """A batch's loss was not finite."""

    def __init__(self, step: int) -> None:
        super().__init__(f"diverged at step {step}")
        self.step = step


class Stopped(Exception):
    """The callback asked to stop; `step` is the last batch done, in `epoch`."""

    def __init__(self, *, epoch: int, step: int) -> None:
        super().__init__(f"stopped at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


@dataclass
class FitPosition:
    """Where a fit stands: the next batch to run, and the sums its epoch has so far.

    `fit` keeps it current after every batch, so a checkpoint taken at any batch boundary
    can resume the run exactly (the batch order follows from the seed and the epoch).
    """

    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    correct_sum: float = 0.0
    # Early stopping's state: the monitor's best value (nan: none yet), the epoch (from 1)
    # that reached it, the epochs since, and the epoch the fit stopped after (0: it did not).
    best: float = math.nan
    best_epoch: int = 0
    wait: int = 0
    stopped_early_at: int = 0

    def next_epoch(self) -> None:
        self.epoch, self.batch, self.loss_sum, self.correct_sum = self.epoch + 1, 0, 0.0, 0.0


def hold_out(data: Mnist, fraction: float, seed: int
             ) -> tuple[Mnist, tuple[np.ndarray, np.ndarray] | None]:
    """Split `fraction` of the training set off for validation: a seeded, fixed choice of
    images (the same on every resume), never the test set. Returns the training data left
    and the validation (images, labels), or None when `fraction` is 0."""
    if fraction <= 0:
        return data, None
    count = len(data.y_train)
    held = round(count * fraction)
    if held < 1 or held >= count:
        raise DataError(
            f"validation_split {fraction} of {count} training images leaves no "
            f"{'validation' if held < 1 else 'training'} image: use more images"
        )
    # Its own stream of the seed (the epochs' shuffles use [seed, epoch]).
    order = np.random.default_rng([seed, 2**32 - 1]).permutation(count)
    validation, training = np.sort(order[:held]), np.sort(order[held:])
    kept = replace(data, x_train=data.x_train[training], y_train=data.y_train[training])
    return kept, (data.x_train[validation], data.y_train[validation])


class EarlyStopping:
    """Keras' EarlyStopping rule on the epoch figures, with its state in the FitPosition
    (so checkpoints keep it) and, to restore the best weights, a copy of the weights (and the
    model's other state) as they were at the best epoch, which checkpoints keep too."""

    def __init__(self, spec: EarlyStoppingSpec, model: Model) -> None:
        self.spec = spec
        self._live = [*model.weights, *model.state]
        self.best_weights = (
            [tf.Variable(variable, trainable=False) for variable in self._live]
            if spec.restore_best_weights else []
        )

    def after_epoch(self, position: FitPosition, figures: dict[str, float | None]) -> bool:
        """Judge the epoch just done (`position.epoch` counts it); True when the fit stops."""
        best = None if math.isnan(position.best) else position.best
        value = figures[self.spec.monitor]
        if self.spec.improves(value, best):
            position.best, position.best_epoch, position.wait = value, position.epoch, 0
            for copy, live in zip(self.best_weights, self._live, strict=False):
                copy.assign(live)  # (no copies: the best weights are not restored)
            return False
        position.wait += 1
        if position.wait >= self.spec.patience:
            position.stopped_early_at = position.epoch
            return True
        return False

    def restore(self, position: FitPosition) -> bool:
        """Put the best epoch's weights back, when asked to and one was kept; True if so."""
        if not self.best_weights or position.best_epoch in (0, position.epoch):
            return False  # nothing kept, or the live weights are the best already
        for copy, live in zip(self.best_weights, self._live, strict=True):
            live.assign(copy)
        return True


def fit(
    model: Model,
    updater: Updater,
    data: Mnist,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    callback: FitCallback,
    position: FitPosition | None = None,
    shuffle: bool = True,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    early_stopping: EarlyStopping | None = None,
    compiler: Callable[..., CompiledSteps] = compile_steps,
    xla: bool | None = None,
) -> tuple[float, float]:
    """Runs the epochs from `position` (the start by default); returns the final
    (test_loss, test_accuracy): of the best epoch's weights when early stopping restores them.

    Each epoch is evaluated on `validation` too, when given. Early stopping ends the fit after
    an epoch (`position.stopped_early_at`). Step numbers are global (epoch * batches per
    epoch + batch), so a resumed fit continues the sequence. Raises Diverged on a non-finite
    batch loss, Stopped when the callback asks. `compiler` makes the steps (as
    `compile_steps`; a worker's kit hands out the ones it traced for an earlier job).
    `xla`: whether the full batches run under XLA; by default `use_xla` decides, from the
    job's size.
    """
    position = position if position is not None else FitPosition()
    if position.epoch < 0 or position.batch < 0:
        raise ValueError(f"cannot start at {position}")
    if position.epoch >= epochs or position.stopped_early_at:
        # Nothing left to train (a job resumed after its last epoch): report the model as is.
        if early_stopping is not None:
            early_stopping.restore(position)
        return evaluate(model, data.x_test, data.y_test)
    if xla is None:
        xla = use_xla(epochs=epochs, samples=len(data.y_train), multiply_adds=model.multiply_adds)
    steps = compiler(model, updater, xla=xla)
    train_step, train_steps = steps.one, steps.stack
    num_samples = len(data.y_train)
    # Unshuffled, the batches go in order every epoch, exactly as the book's generator yields them.
    batches = BatchGenerator(data.x_train, data.y_train, batch_size, seed=seed if shuffle else None)
    full_batches = num_samples // batch_size
    # Each call's images are gathered into this one small buffer, in visiting order: no
    # shuffled copy of the whole set (whose fresh pages cost ~0.4 s before a job's first step).
    # (No more than the epoch's full batches: a small job's buffer stays small.)
    per_call = min(steps_per_call(batch_size, model.multiply_adds), max(1, full_batches))
    capacity = per_call * batch_size
    # Every call passes the whole buffer, and how many of its batches to run: one shape, one
    # XLA compilation. Zeros, so the part a short first call leaves unwritten holds no garbage.
    image_buffer = np.zeros((capacity, model.input_size), np.float32)
    label_buffer = np.zeros(capacity, data.y_train.dtype)
    image_stack = image_buffer.reshape(per_call, batch_size, model.input_size)
    label_stack = label_buffer.reshape(per_call, batch_size)
    started = time.perf_counter()
    while position.epoch < epochs:
        epoch = position.epoch
        batches.epoch = epoch
        order = batches.order()
        first_step = epoch * batches.num_batches
        while position.batch < batches.num_batches:
            first = position.batch
            # Under XLA a job's very first batch runs alone, in the plain graph: its loss shows
            # at once, while the compile for the next call takes 0.5-0.8 s. Decided by the
            # position, not the call, so a run resumed past it takes the same path.
            alone = xla and epoch == 0 and first == 0
            count = 0 if alone else min(per_call, full_batches - first)
            rows = order[first * batch_size : (first + max(count, 1)) * batch_size]
            images = np.take(data.x_train, rows, axis=0, out=image_buffer[: len(rows)])
            labels = np.take(data.y_train, rows, out=label_buffer[: len(rows)])
            if count > 0:  # a stack of full batches, in one call
                losses, accuracies = train_steps(image_stack, label_stack, count)
                sizes = [batch_size] * count
            else:  # the epoch's last, smaller batch (or the first batch, alone)
                losses, accuracies = train_step(images, labels)
                sizes = [len(rows)]
            for offset, (loss, accuracy, size) in enumerate(
                zip(np.atleast_1d(losses.numpy())[: len(sizes)].tolist(),
                    np.atleast_1d(accuracies.numpy())[: len(sizes)].tolist(), sizes, strict=True)
            ):
                batch, step = first + offset, first_step + first + offset
                callback.on_batch(step=step, epoch=epoch, batch=batch, loss=loss,
                                  accuracy=accuracy)
                if not math.isfinite(loss):
                    raise Diverged(step)
                position.batch = batch + 1
                position.loss_sum += loss * size
                position.correct_sum += accuracy * size
            if callback.should_stop():
                raise Stopped(epoch=epoch, step=first_step + position.batch - 1)
        test_loss, test_accuracy = evaluate(model, data.x_test, data.y_test)
        val_loss, val_accuracy = (
            evaluate(model, *validation) if validation is not None else (None, None)
        )
        train_loss = position.loss_sum / num_samples
        train_accuracy = position.correct_sum / num_samples
        position.next_epoch()  # before the callback, which checkpoints it
        stop = early_stopping is not None and early_stopping.after_epoch(position, {
            "val_loss": val_loss, "val_accuracy": val_accuracy, "train_loss": train_loss})
        callback.on_epoch_end(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            test_loss=test_loss,
            test_accuracy=test_accuracy,
            seconds=time.perf_counter() - started,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
        )
        started = time.perf_counter()
        if stop:
            break
    if early_stopping is not None and early_stopping.restore(position):
        return evaluate(model, data.x_test, data.y_test)
    return test_loss, test_accuracy
