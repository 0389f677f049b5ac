"""How a batch's gradients change the weights: the book's update by hand, or a Keras optimizer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, assert_never

import keras
import tensorflow as tf

from service.schemas import OptimizerName, OptimizerSpec


class Updater(Protocol):
    """Applies one batch's gradients to the weights."""

    def build(self, weights: Sequence[tf.Variable]) -> None:
        """Create any state the updater keeps, eagerly: before a compiled step traces (so it
        traces once) and before a checkpoint is restored into it."""

    def apply(self, gradients: Sequence[tf.Tensor], weights: Sequence[tf.Variable]) -> None: ...

    @property
    def variables(self) -> list[tf.Variable]:
        """The updater's own state (optimizer slots, step count), for checkpoints."""
        ...


class ManualSGD:
    """The book's `update_weights`: plain gradient descent, no optimizer state."""

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = learning_rate

    def build(self, weights: Sequence[tf.Variable]) -> None:
        """Nothing to build: the update keeps no state."""

    def apply(self, gradients: Sequence[tf.Tensor], weights: Sequence[tf.Variable]) -> None:
        for g, w in zip(gradients, weights, strict=True):
            w.assign_sub(g * self.learning_rate)

    @property
    def variables(self) -> list[tf.Variable]:
        return []


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

    @property
    def variables(self) -> list[tf.Variable]:
        # The tf.Variables behind keras 3's own, as for the model's weights.
        return [variable.value for variable in self.optimizer.variables]


def build_updater(spec: OptimizerSpec) -> Updater:
    """The updater `spec` names, at its learning rate."""
    rate = spec.learning_rate
    match spec.name:
        case OptimizerName.manual_sgd:
            return ManualSGD(rate)
        case OptimizerName.sgd:
            return KerasUpdater(keras.optimizers.SGD(rate))
        case OptimizerName.momentum:
            return KerasUpdater(keras.optimizers.SGD(rate, momentum=spec.momentum))
        case OptimizerName.rmsprop:
            return KerasUpdater(keras.optimizers.RMSprop(rate))
        case OptimizerName.adam:
            return KerasUpdater(keras.optimizers.Adam(rate))
    assert_never(spec.name)
