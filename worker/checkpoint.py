"""A job's training state on disk, so a requeued job resumes instead of starting over.

One checkpoint holds the weights, the optimizer's slots and the fit position together
(`tf.train.CheckpointManager` publishes a checkpoint only once all its files are written).
Each lease writes into its own folder, so a worker that lost its job and wakes up late cannot
overwrite the checkpoints of the job's new worker.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import tensorflow as tf

from worker.training import FitPosition, KerasUpdater, Model, Updater

CHECKPOINTS_DIR = "checkpoints"
_POSITION = ("epoch", "batch", "loss_sum", "correct_sum")


class Checkpointer:
    """Saves and restores one job's model, optimizer state and fit position."""

    def __init__(self, model: Model, updater: Updater, job_dir: Path) -> None:
        if isinstance(updater, KerasUpdater):
            updater.build(model.weights)  # its slots must exist before they can be restored
        self.root = job_dir / CHECKPOINTS_DIR
        self._position = {
            "epoch": tf.Variable(0, dtype=tf.int64),
            "batch": tf.Variable(0, dtype=tf.int64),
            "loss_sum": tf.Variable(0.0, dtype=tf.float64),
            "correct_sum": tf.Variable(0.0, dtype=tf.float64),
        }
        self._checkpoint = tf.train.Checkpoint(
            weights=list(model.weights),
            optimizer=list(updater.variables),
            **{f"position_{name}": variable for name, variable in self._position.items()},
        )

    def save(self, position: FitPosition, *, token: int) -> None:
        """Write `position` and the current weights as lease `token`'s newest checkpoint."""
        for name in _POSITION:
            self._position[name].assign(getattr(position, name))
        manager = tf.train.CheckpointManager(self._checkpoint, self.root / str(token), 1)
        manager.save()
        for older in self._lease_dirs():
            if int(older.name) < token:
                shutil.rmtree(older, ignore_errors=True)

    def restore(self, *, batches_per_epoch: int, recorded_steps: int) -> FitPosition:
        """Load the newest checkpoint whose step the job's history reaches; the start if none.

        A checkpoint past `recorded_steps` (written by a worker whose rows were refused) would
        leave a gap in the loss curve, so it is passed over.
        """
        for folder in sorted(self._lease_dirs(), key=lambda d: int(d.name), reverse=True):
            path = tf.train.latest_checkpoint(str(folder))
            if path is None:
                continue
            reader = tf.train.load_checkpoint(path)
            saved = FitPosition(
                **{
                    name: reader.get_tensor(f"position_{name}/.ATTRIBUTES/VARIABLE_VALUE").item()
                    for name in _POSITION
                }
            )
            if saved.epoch * batches_per_epoch + saved.batch <= recorded_steps:
                self._checkpoint.restore(path).assert_existing_objects_matched()
                return saved
        return FitPosition()

    def _lease_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [d for d in self.root.iterdir() if d.is_dir() and d.name.isdecimal()]
