"""Pydantic v2 schemas: what the API accepts and returns.

No ORM and no TensorFlow here: the worker reads `JobSpec` back from the stored JSON,
so this module is the contract between the API and the worker.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic import Strict as StrictType

from service.layers import (
    MNIST_INPUT_SHAPE,
    NUM_CLASSES,
    Activation,
    DenseLayer,
    Layer,
    check_model,
)

# Bounds a job must stay within. They keep one job from exhausting a worker's memory
# or running for days, and they are listed in the README. The layers' own bounds (units,
# parameters, multiply-adds) are in service/layers.py.
MAX_EPOCHS = 100
MAX_BATCH_SIZE = 60_000
MAX_LAYERS = 32
MAX_LEARNING_RATE = 10.0
INPUT_SIZE = 784


class Strict(BaseModel):
    """Base for request bodies: unknown fields and NaN/Inf are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# The numbers and switches of request bodies, strictly typed: JSON's `true` is not the
# number 1 and `1.0` is not a whole number (pydantic's lax mode would take both). A float
# still takes a whole number: 1 is a fine learning rate.
Int = Annotated[int, StrictType()]
Float = Annotated[float, StrictType()]
Bool = Annotated[bool, StrictType()]


class Implementation(StrEnum):
    naive = "naive"  # the book's NaiveDense / NaiveSequential on plain tf.Variables
    keras = "keras"  # Keras layers: every layer type


class OptimizerName(StrEnum):
    manual_sgd = "manual_sgd"  # the book's update_weights: w.assign_sub(g * lr)
    sgd = "sgd"
    momentum = "momentum"
    rmsprop = "rmsprop"
    adam = "adam"


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    pruned = "pruned"  # a study's trial stopped early by its pruner; its rows and model kept

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {JobState.succeeded, JobState.failed, JobState.cancelled, JobState.pruned}
)


def _default_layers() -> list[Layer]:
    return [
        DenseLayer(units=512, activation=Activation.relu),
        DenseLayer(units=NUM_CLASSES, activation=Activation.softmax),
    ]


class ModelSpec(Strict):
    """The network: typed layers (service/layers.py), checked on MNIST's (28, 28, 1) input."""

    implementation: Implementation = Implementation.keras
    layers: list[Layer] = Field(
        default_factory=_default_layers, min_length=1, max_length=MAX_LAYERS
    )

    @field_validator("layers")
    @classmethod
    def _layers_fit_together(cls, layers: list[Layer], info: ValidationInfo) -> list[Layer]:
        if info.data.get("implementation") is Implementation.naive:
            for index, layer in enumerate(layers):
                if layer.type != "dense":
                    raise ValueError(
                        f"layers[{index}] ({layer.type}): the naive implementation has dense "
                        "layers only (the book's NaiveDense); use keras for this layer"
                    )
        if _CHECK_ON_MNIST.get():
            check_model(layers, MNIST_INPUT_SHAPE)  # a ShapeError is a ValueError: a 422
        return layers


# Whether a job's layers are checked on MNIST's input as they are parsed: yes, unless the job
# names an uploaded dataset, whose input shape and classes only the database knows; the API
# checks those when the job is submitted (service/datasets/jobs.py).
_CHECK_ON_MNIST: ContextVar[bool] = ContextVar("check_on_mnist", default=True)


def _names_an_upload(data: object) -> bool:
    dataset = data.get("dataset") if isinstance(data, dict) else None
    if isinstance(dataset, DatasetSpec):
        return dataset.id is not None
    return isinstance(dataset, dict) and dataset.get("id") is not None


MAX_DECAY_STEPS = 10_000_000
MAX_SCHEDULE_BOUNDARIES = 32


class ConstantSchedule(Strict):
    """The learning rate stays `optimizer.learning_rate`."""

    type: Literal["constant"] = "constant"


class ExponentialSchedule(Strict):
    """Keras' ExponentialDecay: learning_rate * decay_rate ** (step / decay_steps)."""

    type: Literal["exponential"]
    decay_steps: Int = Field(ge=1, le=MAX_DECAY_STEPS)
    decay_rate: Float = Field(gt=0, le=1)


class CosineSchedule(Strict):
    """Keras' CosineDecay: from learning_rate down to alpha * learning_rate over decay_steps."""

    type: Literal["cosine"]
    decay_steps: Int = Field(ge=1, le=MAX_DECAY_STEPS)
    alpha: Float = Field(default=0.0, ge=0, le=1)


class StepSchedule(Strict):
    """Keras' PiecewiseConstantDecay: values[i] until step boundaries[i], then the next."""

    type: Literal["step"]
    boundaries: list[Int] = Field(min_length=1, max_length=MAX_SCHEDULE_BOUNDARIES)
    values: list[Annotated[Float, Field(gt=0, le=MAX_LEARNING_RATE)]] = Field(
        min_length=2, max_length=MAX_SCHEDULE_BOUNDARIES + 1
    )

    @model_validator(mode="after")
    def _one_more_value_than_boundaries(self) -> StepSchedule:
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(
                f"values needs one more entry than boundaries ({len(self.boundaries) + 1}), "
                f"got {len(self.values)}"
            )
        if any(b < 1 for b in self.boundaries) or any(
            a >= b for a, b in zip(self.boundaries, self.boundaries[1:], strict=False)
        ):
            raise ValueError("boundaries must be positive steps in increasing order")
        return self


Schedule = Annotated[
    ConstantSchedule | ExponentialSchedule | CosineSchedule | StepSchedule,
    Field(discriminator="type"),
]


class OptimizerSpec(Strict):
    name: OptimizerName = OptimizerName.rmsprop
    learning_rate: Float = Field(default=0.001, gt=0, le=MAX_LEARNING_RATE)
    momentum: Float | None = Field(
        default=None, ge=0, lt=1, description="Only for `momentum`; defaults to 0.9 there."
    )
    schedule: Schedule = Field(
        default_factory=ConstantSchedule,
        description="how the learning rate changes with the step (Keras' own schedules)",
    )
    clipnorm: Float | None = Field(
        default=None, gt=0, le=1e6,
        description="clip each gradient to this L2 norm before the update",
    )

    @model_validator(mode="after")
    def _momentum_only_for_momentum(self) -> OptimizerSpec:
        if self.name is OptimizerName.momentum:
            if self.momentum is None:
                self.momentum = 0.9
        elif self.momentum is not None:
            raise ValueError(
                f"momentum applies only to the 'momentum' optimizer, not '{self.name}'"
            )
        return self


def _is_none(value: object) -> bool:
    return value is None


class DatasetSpec(Strict):
    """The data a job trains on: the built-in MNIST (`{"name": "mnist"}`, the default) or an
    uploaded dataset (`{"id": 3}`, see POST /datasets)."""

    name: Literal["mnist"] | None = Field(
        default=None, exclude_if=_is_none, description="mnist: the default when no id is given"
    )
    id: Int | None = Field(default=None, ge=1, le=2**31 - 1, exclude_if=_is_none,
                           description="an uploaded dataset's id (GET /datasets)")
    train_limit: Int | None = Field(default=None, ge=1, le=60_000)
    test_limit: Int | None = Field(default=None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _one_dataset(self) -> DatasetSpec:
        if self.id is not None and self.name is not None:
            raise ValueError("name the dataset by its id, or as mnist: not both")
        if self.id is None:
            self.name = "mnist"
        return self


class EarlyStoppingSpec(Strict):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs."""

    monitor: Literal["val_loss", "val_accuracy", "train_loss"] = "val_loss"
    patience: Int = Field(default=3, ge=0, le=MAX_EPOCHS)
    min_delta: Float = Field(default=0.0, ge=0, le=1_000)
    restore_best_weights: Bool = Field(
        default=False,
        description="end with the best epoch's weights: its test figures and exported model",
    )

    def improves(self, value: float | None, best: float | None) -> bool:
        """Whether `value` of the monitor beats `best` by more than min_delta (a lower loss, a
        higher accuracy), as Keras' EarlyStopping judges it; the first value always does."""
        if value is None or not math.isfinite(value):
            return False
        if best is None:
            return True
        if self.monitor.endswith("accuracy"):
            return value > best + self.min_delta
        return value < best - self.min_delta


class JobSpec(Strict):
    """A training job. Every field is optional; the defaults are the book's first example."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    epochs: Int = Field(default=5, ge=1, le=MAX_EPOCHS)
    batch_size: Int = Field(default=128, ge=1, le=MAX_BATCH_SIZE)
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    seed: Int = Field(default=0, ge=0, le=2**31 - 1)
    priority: Int = Field(
        default=0, ge=-1000, le=1000,
        description="higher starts first among its key's queued jobs (between keys, the "
        "queue is fair first: see the README's Keys and quotas); training ignores it",
    )
    shuffle: Bool = Field(
        default=True,
        description="visit the training set in a new seeded order each epoch; false: in "
        "order, as the book's BatchGenerator does",
    )
    validation_split: Float = Field(
        default=0.0, ge=0, le=0.5,
        description="the share of the training set held out (seeded, fixed) for val_loss and "
        "val_accuracy each epoch; selection uses it, never the test set",
    )
    early_stopping: EarlyStoppingSpec | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _layers_checked_on_their_dataset(cls, data: Any, handler: Any) -> JobSpec:
        # An uploaded dataset's shape and classes are checked at submit, not on MNIST's.
        token = _CHECK_ON_MNIST.set(not _names_an_upload(data))
        try:
            return handler(data)
        finally:
            _CHECK_ON_MNIST.reset(token)

    @model_validator(mode="after")
    def _monitor_needs_validation(self) -> JobSpec:
        if (
            self.early_stopping is not None
            and self.early_stopping.monitor.startswith("val_")
            and self.validation_split == 0
        ):
            raise ValueError(
                f"early_stopping.monitor {self.early_stopping.monitor} needs a "
                "validation_split above 0"
            )
        return self


class Progress(BaseModel):
    epoch: int
    epochs: int
    step: int
    total_steps: int | None
    fraction: float


class JobRead(BaseModel):
    id: int
    state: JobState
    spec: JobSpec
    owner: int | None = Field(
        default=None,
        description="the id of the API key that submitted it; null: the admin token (or made "
        "before keys existed)",
    )
    owner_name: str | None = Field(default=None, description="that key's name")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    loss: float | None
    test_accuracy: float | None
    error: str | None
    cancel_requested: bool = Field(
        description="a cancel was asked while running; the job stops within a second"
    )
    study_id: int | None = Field(default=None, description="the study this job is a trial of")
    trial: int | None = Field(default=None, description="its trial number in that study")
    stopped_early_at_epoch: int | None = Field(
        default=None, description="the epoch (from 1) early stopping ended the job after"
    )
    samples_per_second: float | None = Field(
        default=None, description="training throughput while running"
    )
    eta_seconds: float | None = Field(
        default=None, description="estimated seconds of training left, while running"
    )
    queue_position: int | None = Field(
        default=None, description="1 for the next job a free worker takes, while queued"
    )
    workers_alive: int | None = Field(
        default=None,
        description="while queued: workers that heartbeated within their lease timeout",
    )
    note: str | None = Field(
        default=None, description="why a queued job is not starting: no worker is alive"
    )


class Readiness(BaseModel):
    """GET /readyz: whether the service can run jobs now."""

    status: Literal["ready", "not ready"]
    workers_alive: int | None = Field(
        description="workers that heartbeated within their lease timeout; null when the "
        "database does not answer"
    )
    detail: str | None = Field(default=None, description="what is missing, when not ready")


class JobsRead(BaseModel):
    items: list[JobRead]
    total: int
    limit: int
    offset: int


class MetricRead(BaseModel):
    step: int
    epoch: int
    batch: int
    loss: float | None = Field(description="null when the loss was not finite")
    accuracy: float | None
    time: float = Field(description="seconds since the job started training")


class MetricPage(BaseModel):
    items: list[MetricRead]
    next_after_step: int = Field(
        description="pass as after_step to get the rows after these; unchanged when none are new"
    )


class MetricBucket(BaseModel):
    """Consecutive steps folded into one point, for plotting long runs."""

    step: int = Field(description="the bucket's first step")
    step_end: int = Field(description="the bucket's last step")
    epoch: int
    loss: float | None = Field(description="mean loss over the bucket")
    loss_min: float | None
    loss_max: float | None
    accuracy: float | None = Field(description="mean batch accuracy over the bucket")
    time: float = Field(description="seconds since the job started, at the bucket's end")


class MetricSummary(BaseModel):
    """The loss curve in at most `max_points` buckets; exact (one step each) when shorter."""

    items: list[MetricBucket]
    bucket_size: int
    total_steps: int


class EpochRead(BaseModel):
    epoch: int
    train_loss: float | None
    train_accuracy: float | None
    test_loss: float | None
    test_accuracy: float | None
    seconds: float
    val_loss: float | None = None
    val_accuracy: float | None = None


# An instance is 784 pixel values in [0, 1], flat, as 28 rows of 28, or as 28 rows of 28
# one-channel pixels (a convnet's input shape); every MNIST model takes all three.
Pixel = Annotated[Float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
FlatImage = Annotated[list[Pixel], Field(min_length=INPUT_SIZE, max_length=INPUT_SIZE)]
Row = Annotated[list[Pixel], Field(min_length=28, max_length=28)]
GridImage = Annotated[list[Row], Field(min_length=28, max_length=28)]
Channels = Annotated[list[Pixel], Field(min_length=1, max_length=1)]
ChannelRow = Annotated[list[Channels], Field(min_length=28, max_length=28)]
ChannelImage = Annotated[list[ChannelRow], Field(min_length=28, max_length=28)]


class PredictRequest(Strict):
    instances: list[FlatImage | GridImage | ChannelImage] = Field(min_length=1, max_length=1_000)


class Prediction(BaseModel):
    """One instance's prediction, in the labels of the dataset the model was trained on."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    label: str = Field(description="the predicted class's name")
    class_: int = Field(alias="class", description="its index in the dataset's classes")
    digit: int | None = Field(default=None, description="MNIST models: the digit read")
    probabilities: list[float] = Field(description="one per class, ordered as its classes")


class PredictResponse(BaseModel):
    predictions: list[Prediction]


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: a non-finite loss is stored and served as null."""
    if value is None or not math.isfinite(value):
        return None
    return value


class ExplainedPrediction(Prediction):
    image: list[list[float]] | list[list[list[float]]] | None = Field(
        default=None,
        description="an uploaded image as the model saw it (with ?explain=1): 28 rows of 28 "
        "for MNIST, the dataset's height x width (x 3 for RGB) otherwise",
    )


class ExplainedPredictResponse(BaseModel):
    """A prediction per instance, or one for an uploaded image."""

    predictions: list[ExplainedPrediction]
