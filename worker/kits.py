"""What a worker keeps between jobs of one architecture: the model's variables, the updater's,
their traced training and evaluation steps, and the export's template.

Tracing a job's steps costs about 0.4 s and a conversion 0.2–0.4 s, several times a small
job's arithmetic (a study's trial on a few thousand images, say). A job whose network,
input shape and optimizer (all but its constant learning rate) match an earlier job's
reuses that job's kit: the variables are set to exactly what a fresh build gives for the new
job's seed (weights, batch norm's statistics, dropout's seed state) and the updater's to a
fresh one's at the new learning rate, so a job trains to the same losses, bit for bit,
whether its worker built it anew or reused a kit (tests/worker/test_kits.py).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from service.schemas import ConstantSchedule, JobSpec
from worker.export import ExportTemplate, export_model
from worker.models import Model, Shape, build_model
from worker.training import CompiledSteps, compile_steps, under_xla
from worker.updaters import Updater, build_updater

log = logging.getLogger("tapefit.worker")

# The kits a worker keeps, the least recently used dropped first; and a bound on their
# variables' bytes (a model near the parameter limit, with its optimizer's slots, is
# hundreds of MB: such a worker keeps only the kit of the job at hand).
MAX_KITS = 4
MAX_KIT_BYTES = 256 * 2**20
# A kit's templates, one per standardisation (a tabular dataset's mean and std): the newest.
MAX_TEMPLATES = 2


class Kit:
    """One architecture's model, updater, compiled steps and export templates."""

    def __init__(self, spec: JobSpec, input_shape: Shape) -> None:
        self.model = build_model(spec.model, seed=spec.seed, input_shape=input_shape)
        self.updater = build_updater(spec.optimizer)
        self.updater.build(self.model.weights)
        # A fresh updater's state (step count, zeroed slots), to start each job from.
        self._updater_start = [variable.numpy() for variable in self.updater.variables]
        self._steps: dict[bool, CompiledSteps] = {}
        self._templates: dict[bytes, ExportTemplate | None] = {}
        self.jobs = 0
        self.conversions = 0  # the exports that ran the converter (not filled in)

    @property
    def nbytes(self) -> int:
        """What the kit holds: its variables and its templates' bytes."""
        variables = [*self.model.weights, *self.model.state, *self.updater.variables]
        return (sum(variable.shape.num_elements() * variable.dtype.size for variable in variables)
                + sum(template.nbytes for template in self._templates.values()
                      if template is not None))

    def start(self, spec: JobSpec, input_shape: Shape) -> tuple[Model, Updater]:
        """The model and updater, as a fresh build for `spec` would make them."""
        if self.jobs:
            fresh = build_model(spec.model, seed=spec.seed, input_shape=input_shape)
            for live, start in zip([*self.model.weights, *self.model.state],
                                   [*fresh.weights, *fresh.state], strict=True):
                live.assign(start)
            for live, start in zip(self.updater.variables, self._updater_start, strict=True):
                live.assign(start)
        if isinstance(spec.optimizer.schedule, ConstantSchedule):
            self.updater.set_learning_rate(spec.optimizer.learning_rate)
        self.jobs += 1
        return self.model, self.updater

    def compile(self, model: Model, updater: Updater, *, xla: bool) -> CompiledSteps:
        """`fit`'s compiler: this kit's compiled steps (with XLA or without), traced at the
        first job's first call, kept for the next jobs."""
        if model is not self.model or updater is not self.updater:
            raise ValueError("a kit compiles the steps of its own model and updater")
        if False not in self._steps:
            self._steps[False] = compile_steps(model, updater)
        if xla and True not in self._steps:  # the same single step and plain graph under it
            plain = self._steps[False]
            self._steps[True] = CompiledSteps(plain.one, under_xla(model, plain.stack))
        return self._steps[xla]

    def export(self, *, scratch: Path | None,
               standardize: tuple[np.ndarray, np.ndarray] | None) -> bytes:
        """The model's servable bytes: its weights written into this architecture's template
        once one is confirmed, else converted (the first conversion makes the template, the
        second confirms it or shows the architecture is not fillable)."""
        key = b"" if standardize is None else b"".join(
            np.ascontiguousarray(values, np.float32).tobytes() for values in standardize)
        template = self._templates.get(key)
        if template is not None and template.confirmed:
            return template.fill(self.model)
        self.conversions += 1
        content = export_model(self.model, scratch=scratch, standardize=standardize)
        if key not in self._templates:
            # None: the next conversion is tried; its weights may tell apart what these did
            # not (two biases of zeros, say).
            made = ExportTemplate.from_conversion(self.model, content)
            if made is not None:
                self._templates[key] = made
                while len(self._templates) > MAX_TEMPLATES:
                    del self._templates[next(iter(self._templates))]
        elif template is not None and not template.confirm(self.model, content):
            log.info("this architecture's models are converted each time: a filled copy "
                     "computed other outputs than the converter's")
            self._templates[key] = None
        return content


def kit_key(spec: JobSpec, input_shape: Shape) -> str:
    """What a kit is reused for: the network, the input shape and the optimizer, but for a
    constant learning rate (a variable the steps read, not a constant traced into them)."""
    optimizer = spec.optimizer.model_dump(mode="json")
    if isinstance(spec.optimizer.schedule, ConstantSchedule):
        optimizer.pop("learning_rate")
    return json.dumps([spec.model.model_dump(mode="json"), list(input_shape), optimizer],
                      sort_keys=True)


class Kits:
    """A worker's kits, by `kit_key`."""

    def __init__(self, max_kits: int = MAX_KITS, max_bytes: int = MAX_KIT_BYTES) -> None:
        self.max_kits, self.max_bytes = max_kits, max_bytes
        self._kits: OrderedDict[str, Kit] = OrderedDict()

    def take(self, spec: JobSpec, input_shape: Shape) -> Kit:
        """The kit for a job of `spec` on inputs of `input_shape`: kept, or new."""
        key = kit_key(spec, input_shape)
        kit = self._kits.pop(key, None)
        if kit is None:
            kit = Kit(spec, input_shape)
        self._kits[key] = kit  # the most recently used, last
        total = sum(kept.nbytes for kept in self._kits.values())
        while len(self._kits) > 1 and (len(self._kits) > self.max_kits
                                       or total > self.max_bytes):
            _, dropped = self._kits.popitem(last=False)
            total -= dropped.nbytes
        return kit

    def __len__(self) -> int:
        return len(self._kits)
