"""A job's training state as one archive, so a requeued job resumes instead of starting over.

One checkpoint holds the weights, the model's other state (batch norm's moving statistics,
dropout's seed state), the optimizer's slots and the fit position together. It is
packed into bytes for the database (`leases.save_checkpoint`), not left on the worker's disk:
the job's next worker may run on another machine. The database write is fenced by the
lease, so a worker that lost its job and wakes up late cannot overwrite the new holder's.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import tensorflow as tf

from worker.models import Model
from worker.training import EarlyStopping, FitPosition
from worker.updaters import Updater


class UnusableCheckpoint(ValueError):
    """The stored bytes are not a checkpoint of this model (corrupt, or another shape)."""


_PREFIX = "ckpt"  # the file names inside the archive: ckpt.index, ckpt.data-00000-of-00001


class Checkpointer:
    """Packs and restores one job's model, optimizer state and fit position."""

    def __init__(
        self, model: Model, updater: Updater, early_stopping: EarlyStopping | None = None
    ) -> None:
        updater.build(model.weights)  # its slots must exist before they can be restored
        self._position = {
            "epoch": tf.Variable(0, dtype=tf.int64),
            "batch": tf.Variable(0, dtype=tf.int64),
            "loss_sum": tf.Variable(0.0, dtype=tf.float64),
            "correct_sum": tf.Variable(0.0, dtype=tf.float64),
        }
        # Only a model with state has the `state` entry, so the checkpoints of dense models
        # are what they were before models had any; likewise early stopping's entries (its
        # best so far, patience count and best weights) for the jobs that use it.
        state = {"state": list(model.state)} if model.state else {}
        if early_stopping is not None:
            self._position.update({
                "best": tf.Variable(0.0, dtype=tf.float64),
                "best_epoch": tf.Variable(0, dtype=tf.int64),
                "wait": tf.Variable(0, dtype=tf.int64),
                "stopped_early_at": tf.Variable(0, dtype=tf.int64),
            })
            if early_stopping.best_weights:
                state["best_weights"] = list(early_stopping.best_weights)
        self._checkpoint = tf.train.Checkpoint(
            weights=list(model.weights),
            optimizer=list(updater.variables),
            **state,
            **{f"position_{name}": variable for name, variable in self._position.items()},
        )

    def pack(self, position: FitPosition) -> bytes:
        """`position` and the current weights and optimizer state, as a tar archive."""
        for name in self._position:
            self._position[name].assign(getattr(position, name))
        with tempfile.TemporaryDirectory(prefix="tapefit-checkpoint-") as folder:
            self._checkpoint.write(str(Path(folder) / _PREFIX))
            archive = io.BytesIO()
            with tarfile.open(fileobj=archive, mode="w") as tar:
                for file in sorted(Path(folder).iterdir()):
                    tar.add(file, arcname=file.name)
        return archive.getvalue()

    def restore(
        self, content: bytes | None, *, batches_per_epoch: int, recorded_steps: int
    ) -> FitPosition:
        """Load a packed checkpoint and return its position; the start when there is none.

        A checkpoint past `recorded_steps` would leave a gap in the loss curve, so it is
        passed over (the fenced writes make that impossible; this keeps it so).
        """
        if content is None:
            return FitPosition()
        try:
            return self._restore(content, batches_per_epoch, recorded_steps)
        except (tarfile.TarError, tf.errors.OpError, AssertionError, ValueError) as exc:
            raise UnusableCheckpoint(f"{type(exc).__name__}: {exc}") from exc

    def _restore(self, content: bytes, batches_per_epoch: int, recorded_steps: int) -> FitPosition:
        with tempfile.TemporaryDirectory(prefix="tapefit-checkpoint-") as folder:
            with tarfile.open(fileobj=io.BytesIO(content), mode="r:") as tar:
                # Plain files by bare name only: nothing can land outside the folder.
                for member in tar.getmembers():
                    if member.isfile() and member.name.startswith(f"{_PREFIX}."):
                        (Path(folder) / Path(member.name).name).write_bytes(
                            tar.extractfile(member).read()
                        )
            prefix = str(Path(folder) / _PREFIX)
            reader = tf.train.load_checkpoint(prefix)
            saved = FitPosition(
                **{
                    name: reader.get_tensor(f"position_{name}/.ATTRIBUTES/VARIABLE_VALUE").item()
                    for name in self._position
                }
            )
            if saved.epoch * batches_per_epoch + saved.batch > recorded_steps:
                return FitPosition()
            self._checkpoint.read(prefix).assert_existing_objects_matched()
        return saved
