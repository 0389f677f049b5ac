"""How a batch's gradients change the weights: the book's update by hand, or a Keras optimizer;
either at a learning rate that follows a Keras schedule, with gradients clipped by norm."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, assert_never

import keras
import tensorflow as tf

from service.schemas import (
    ConstantSchedule,
    CosineSchedule,
    ExponentialSchedule,
    OptimizerName,
    OptimizerSpec,
    StepSchedule,
)

LearningRate = float | keras.optimizers.schedules.LearningRateSchedule


class Updater(Protocol):
    """Applies one batch's gradients to the weights."""

    def build(self, weights: Sequence[tf.Variable]) -> None:
        """Create any state the updater keeps, eagerly: before a compiled step traces (so it
        traces once) and before a checkpoint is restored into it."""

    def apply(self, gradients: Sequence[tf.Tensor], weights: Sequence[tf.Variable]) -> None: ...

    def set_learning_rate(self, rate: float) -> None:
        """Change a constant learning rate. The compiled steps read it as a variable, so a
        worker's next job of the same architecture at another rate reuses them."""

    @property
    def variables(self) -> list[tf.Variable]:
        """The updater's own state (optimizer slots, step count), for checkpoints."""
        ...


class ManualSGD:
    """The book's `update_weights`: plain gradient descent. It keeps no state, but for the
    step count a learning-rate schedule reads (checkpointed with it, so a resumed job goes
    on along its schedule)."""

    def __init__(self, learning_rate: LearningRate, clipnorm: float | None = None) -> None:
        self.learning_rate, self.clipnorm = learning_rate, clipnorm
        self.scheduled = not isinstance(learning_rate, float | int)
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False)
        # float32, as the product it scales: the same update as the float's own constant.
        self._rate = tf.Variable(0.0 if self.scheduled else learning_rate, dtype=tf.float32,
                                 trainable=False)

    def build(self, weights: Sequence[tf.Variable]) -> None:
        """Nothing to build: the step count exists from the start."""

    def apply(self, gradients: Sequence[tf.Tensor], weights: Sequence[tf.Variable]) -> None:
        rate = self.learning_rate(self.iterations) if self.scheduled else self._rate
        for g, w in zip(gradients, weights, strict=True):
            if self.clipnorm is not None:
                g = tf.clip_by_norm(g, self.clipnorm)  # each gradient, as Keras' clipnorm
            w.assign_sub(g * tf.cast(rate, g.dtype))
        self.iterations.assign_add(1)

    def set_learning_rate(self, rate: float) -> None:
        if self.scheduled:
            raise ValueError("the learning rate follows a schedule")
        self.learning_rate = rate
        self._rate.assign(rate)

    @property
    def variables(self) -> list[tf.Variable]:
        # Without a schedule the checkpoint is the book's update's: no state at all.
        return [self.iterations] if self.scheduled else []


class KerasUpdater:
    """A keras optimizer; it accepts plain tf.Variables as well as keras ones."""

    def __init__(self, optimizer: keras.optimizers.Optimizer) -> None:
        self.optimizer = optimizer

    def build(self, weights: Sequence[tf.Variable]) -> None:
        """Create the optimizer's slots (once)."""
        if not self.optimizer.built:
            self.optimizer.build(list(weights))

    def apply(self, gradients: Sequence[tf.Tensor], weights: Sequence[tf.Variable]) -> None:
        self.optimizer.apply(list(gradients), list(weights))

    def set_learning_rate(self, rate: float) -> None:
        # Keras keeps a constant rate in a variable and assigns it here.
        self.optimizer.learning_rate = rate

    @property
    def variables(self) -> list[tf.Variable]:
        # The tf.Variables behind keras 3's own, as for the model's weights.
        return [variable.value for variable in self.optimizer.variables]


def learning_rate(spec: OptimizerSpec) -> LearningRate:
    """The learning rate, or the Keras schedule that makes it a function of the step."""
    match spec.schedule:
        case ConstantSchedule():
            return spec.learning_rate
        case ExponentialSchedule(decay_steps=steps, decay_rate=rate):
            return keras.optimizers.schedules.ExponentialDecay(spec.learning_rate, steps, rate)
        case CosineSchedule(decay_steps=steps, alpha=alpha):
            return keras.optimizers.schedules.CosineDecay(spec.learning_rate, steps,
                                                          alpha=alpha)
        case StepSchedule(boundaries=boundaries, values=values):
            return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    assert_never(spec.schedule)


def build_updater(spec: OptimizerSpec) -> Updater:
    """The updater `spec` names, at its learning rate (or schedule), clipping by its norm."""
    rate, clip = learning_rate(spec), {"clipnorm": spec.clipnorm}
    match spec.name:
        case OptimizerName.manual_sgd:
            return ManualSGD(rate, spec.clipnorm)
        case OptimizerName.sgd:
            return KerasUpdater(keras.optimizers.SGD(rate, **clip))
        case OptimizerName.momentum:
            return KerasUpdater(keras.optimizers.SGD(rate, momentum=spec.momentum, **clip))
        case OptimizerName.rmsprop:
            return KerasUpdater(keras.optimizers.RMSprop(rate, **clip))
        case OptimizerName.adam:
            return KerasUpdater(keras.optimizers.Adam(rate, **clip))
    assert_never(spec.name)
