"""What `POST /studies` accepts and what the API shows of a study.

The space is checked here against the real job spec (service/studies/space.py), so a bad
path, a range outside a field's bounds or a refused choice is a 422 that names the path.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from service.schemas import Bool, Float, Int, JobSpec, JobState, Strict
from service.studies.space import SpaceError, check_path, check_value

MAX_TRIALS = 1_000
MAX_DIMENSIONS = 20
MAX_CHOICES = 100
MAX_GRID_POINTS = 100_000

Number = Int | Float
Choice = Int | Float | Annotated[str, Field(max_length=100)] | Bool | None


class RangeSpec(Strict):
    """Numbers from `low` to `high`: whole numbers when both are, else reals; `log` samples
    evenly on a log scale; `step` makes a grid (whole numbers take step 1 by default)."""

    low: Number
    high: Number
    log: Bool = False
    step: Number | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> RangeSpec:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low above 0")
        if self.log and self.step is not None:
            raise ValueError("a range takes log or step, not both")
        if self.integer and self.step is not None and not isinstance(self.step, int):
            raise ValueError("a range of whole numbers takes a whole step")
        return self

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def grid(self) -> list[Number] | None:
        """Its points for a grid search; None when it is continuous (no step)."""
        step = self.step if self.step is not None else (1 if self.integer else None)
        if step is None or self.log:
            return None
        count = math.floor((self.high - self.low) / step + 1e-9) + 1
        if count > MAX_GRID_POINTS:
            return None
        return [self.low + i * step for i in range(count)]


class ChoicesSpec(Strict):
    """One of these values."""

    choices: list[Choice] = Field(min_length=1, max_length=MAX_CHOICES)


Dimension = RangeSpec | ChoicesSpec


class Metric(StrEnum):
    val_accuracy = "val_accuracy"
    val_loss = "val_loss"
    train_accuracy = "train_accuracy"
    train_loss = "train_loss"


class Objective(Strict):
    """What the study optimises: an epoch figure of the trial's kept epoch (never the test set:
    selection uses validation). Direction defaults by the metric: accuracy up, loss down."""

    metric: Metric = Metric.val_accuracy
    direction: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="after")
    def _default_direction(self) -> Objective:
        if self.direction is None:
            self.direction = "maximize" if self.metric.endswith("accuracy") else "minimize"
        return self


def _error(message: str) -> PydanticCustomError:
    return PydanticCustomError("study_spec", "{message}", {"message": message})


class StudyCreate(Strict):
    """A search: trials of the base job spec with the space's paths set by the sampler."""

    name: str = Field(default="study", min_length=1, max_length=100)
    base: JobSpec = Field(default_factory=JobSpec, description="the trials' job spec")
    space: dict[str, Dimension] = Field(
        min_length=1, max_length=MAX_DIMENSIONS,
        description="dotted paths into the job spec (a list index is a number): "
        '{"low", "high", "log", "step"} or {"choices"}',
    )
    objective: Objective = Field(default_factory=Objective)
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["asha", "median", "none"] = "asha"
    trials: Int = Field(default=10, ge=1, le=MAX_TRIALS)
    parallel: Int = Field(default=1, ge=1, le=MAX_TRIALS,
                          description="the most trials queued or running at once")
    seed: Int = Field(default=0, ge=0, le=2**31 - 1)

    @field_validator("space")
    @classmethod
    def _space_fits_the_spec(cls, space: dict[str, Dimension], info: ValidationInfo
                             ) -> dict[str, Dimension]:
        base = info.data.get("base")
        if base is None or (info.context or {}).get("stored"):
            return space  # the base's own error is reported; a stored study was checked
        dumped = base.model_dump(mode="json")
        try:
            for path, dimension in space.items():
                check_path(dumped, path)
                if isinstance(dimension, RangeSpec):
                    check_value(dumped, path, dimension.low, "low")
                    check_value(dumped, path, dimension.high, "high")
                else:
                    for choice in dimension.choices:
                        check_value(dumped, path, choice, "choice")
        except SpaceError as exc:
            raise _error(str(exc)) from None
        return space

    @field_validator("objective")
    @classmethod
    def _objective_is_measured(cls, objective: Objective, info: ValidationInfo) -> Objective:
        base = info.data.get("base")
        if base is not None and objective.metric.startswith("val_") and (
            base.validation_split == 0
        ):
            raise _error(
                f"metric {objective.metric} needs a validation split: set "
                "base.validation_split above 0 (selection never uses the test set)"
            )
        return objective

    @field_validator("parallel")
    @classmethod
    def _parallel_within_trials(cls, parallel: int, info: ValidationInfo) -> int:
        trials = info.data.get("trials")
        if trials is not None and parallel > trials:
            raise _error(f"parallel ({parallel}) cannot exceed trials ({trials})")
        return parallel

    @model_validator(mode="after")
    def _grid_is_finite(self) -> StudyCreate:
        if self.sampler == "grid":
            points = 1
            for path, dimension in self.space.items():
                values = dimension.choices if isinstance(dimension, ChoicesSpec) else (
                    dimension.grid())
                if values is None:
                    raise _error(
                        f"space.{path}: the grid sampler needs choices, or a range with a step "
                        "(whole numbers step by 1)"
                    )
                points *= len(values)
            if self.trials > points:
                raise _error(f"trials: the grid has {points} points, fewer than {self.trials}")
        return self

    @classmethod
    def stored(cls, spec: dict[str, Any]) -> StudyCreate:
        """A study's spec as stored: checked at creation, so its space (one job spec
        validated per bound and choice) is not checked again at every read."""
        return cls.model_validate(spec, context={"stored": True})

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space: each path's points."""
        return {
            path: list(d.choices) if isinstance(d, ChoicesSpec) else d.grid() or []
            for path, d in self.space.items()
        }


class StudyState(StrEnum):
    running = "running"  # trials are being asked for, queued and run
    succeeded = "succeeded"  # every trial has ended
    cancelled = "cancelled"  # POST /studies/{id}/cancel: its trials were cancelled


class TrialRead(BaseModel):
    number: int
    job_id: int | None
    state: JobState | Literal["failed"] = Field(
        description="its job's state (failed when its spec could not be made)"
    )
    params: dict[str, Any]
    value: float | None = Field(description="the objective at the kept epoch, once ended")
    epochs_run: int
    error: str | None = None


class BestRead(BaseModel):
    number: int
    job_id: int | None
    params: dict[str, Any]
    value: float


class StudyRead(BaseModel):
    id: int
    name: str
    state: StudyState
    spec: StudyCreate
    created_at: datetime
    finished_at: datetime | None
    trials: list[TrialRead]
    best: BestRead | None
    epochs_run: int = Field(description="epochs trained by all its trials")


class StudySummary(BaseModel):
    id: int
    name: str
    state: StudyState
    created_at: datetime
    finished_at: datetime | None
    trials: int = Field(description="trials made so far")
    trials_planned: int
    best: BestRead | None


class StudiesRead(BaseModel):
    items: list[StudySummary]
    total: int
    limit: int
    offset: int
