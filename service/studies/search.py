"""Optuna's samplers and pruners, on a study rebuilt from our rows at each decision.

Optuna's own database storage (RDBStorage) cannot share our database: it keeps its schema
version in the same `alembic_version` table as our migrations (it refuses to start on a
database of ours: "no longer compatible with the table schema") and it would make tables
named `studies` and `trials` beside ours. A second database would split the truth: a trial
asked of Optuna and the job made for it could not commit together. So our tables are the
storage: each decision (ask for a trial, prune or not) rebuilds an in-memory Optuna study
from the study's rows (params, states, values, each epoch's objective as the intermediate
values, and the attributes the sampler and pruner keep, such as ASHA's rungs) and asks it.
The sampler's seed is derived from the study's seed and the trial number, so a study is
reproducible and two asks from the same history still differ.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from service.studies.schemas import ChoicesSpec, RangeSpec, StudyCreate

# Optuna's trial states, as stored in study_trials.state.
RUNNING, COMPLETE, PRUNED, FAIL = "running", "complete", "pruned", "fail"


@dataclass
class TrialRecord:
    """One trial as a decision needs it."""

    number: int
    state: str
    params: dict[str, Any]
    system_attrs: dict[str, Any]
    value: float | None = None
    # {step: value}: the objective after each epoch (step = the epochs done, from 1).
    intermediate: dict[int, float] = field(default_factory=dict)


def _optuna() -> Any:
    import optuna  # imported on first use: the API starts without it

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(spec: StudyCreate) -> dict[str, Any]:
    """Each path's Optuna distribution."""
    optuna = _optuna()
    result: dict[str, Any] = {}
    for path, dimension in spec.space.items():
        if isinstance(dimension, ChoicesSpec):
            result[path] = optuna.distributions.CategoricalDistribution(dimension.choices)
        elif isinstance(dimension, RangeSpec) and dimension.integer:
            result[path] = optuna.distributions.IntDistribution(
                dimension.low, dimension.high, log=dimension.log, step=dimension.step or 1
            )
        else:
            result[path] = optuna.distributions.FloatDistribution(
                float(dimension.low), float(dimension.high), log=dimension.log,
                step=None if dimension.step is None else float(dimension.step),
            )
    return result


def _sampler(spec: StudyCreate, number: int) -> Any:
    optuna = _optuna()
    seed = (spec.seed * 1_000_003 + number) % 2**32
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "grid":
        # The grid's order comes from the seed and trial n takes point n of it: the same
        # seed for every trial, or two trials could land on one point.
        return optuna.samplers.GridSampler(spec.grid(), seed=spec.seed)
    # A quarter of the trials (at least 3, at most Optuna's 10) explore at random first.
    startup = min(10, max(3, spec.trials // 4))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def _pruner(spec: StudyCreate) -> Any:
    optuna = _optuna()
    if spec.pruner == "asha":
        # Rungs after epochs 1, 3, 9, ...: a trial goes on past a rung when it is in the best
        # third of the trials that reached it.
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(1, spec.trials // 4)))
    return optuna.pruners.NopPruner()


def rebuild(spec: StudyCreate, trials: list[TrialRecord], *, number: int) -> Any:
    """An in-memory Optuna study holding `trials` (numbered 0.. in order), whose sampler is
    seeded for trial `number`."""
    optuna = _optuna()
    states = {RUNNING: optuna.trial.TrialState.RUNNING,
              COMPLETE: optuna.trial.TrialState.COMPLETE,
              PRUNED: optuna.trial.TrialState.PRUNED, FAIL: optuna.trial.TrialState.FAIL}
    dists = distributions(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature notices
        study = optuna.create_study(
            direction=spec.objective.direction, sampler=_sampler(spec, number),
            pruner=_pruner(spec),
        )
        for index, record in enumerate(sorted(trials, key=lambda t: t.number)):
            if record.number != index:
                raise ValueError(f"trial numbers must run 0.., got {record.number} at {index}")
            params = {path: value for path, value in record.params.items() if path in dists}
            study.add_trial(
                optuna.trial.create_trial(
                    state=states[record.state],
                    value=record.value if record.state == COMPLETE else None,
                    params=params,
                    distributions={path: dists[path] for path in params},
                    intermediate_values=dict(record.intermediate),
                    system_attrs=dict(record.system_attrs),
                )
            )
    return study


def ask(spec: StudyCreate, trials: list[TrialRecord]) -> TrialRecord:
    """The next trial's params (numbered after `trials`), as the study's sampler picks them."""
    number = len(trials)
    study = rebuild(spec, trials, number=number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = study.ask(fixed_distributions=distributions(spec))
    frozen = study._storage.get_trial(trial._trial_id)
    return TrialRecord(number=number, state=RUNNING, params=dict(trial.params),
                       system_attrs=_jsonable(frozen.system_attrs))


def should_prune(spec: StudyCreate, trials: list[TrialRecord], number: int
                 ) -> tuple[bool, dict[str, Any]]:
    """Whether the pruner stops trial `number` at its last reported step, and the trial's
    attributes after asking (ASHA records the rungs it reached there)."""
    study = rebuild(spec, trials, number=number)
    trial_id = study._storage.get_all_trials(study._study_id, deepcopy=False)[number]._trial_id
    frozen = study._storage.get_trial(trial_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune = bool(study.pruner.prune(study, frozen))
    return prune, _jsonable(study._storage.get_trial(trial_id).system_attrs)


def _jsonable(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes as JSON keeps them (the grid's search space holds tuples)."""
    import json

    return json.loads(json.dumps(attrs, default=list))
