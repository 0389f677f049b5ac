"""Export: the .tflite gives the TF model's probabilities under LiteRT; the conversion's
temporary files stay in the data dir's scratch folder and never outlive it for good."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from service.files import UNLOCKED_GRACE_S, owned_folder, sweep_abandoned
from service.schemas import ModelSpec
from worker.data import Mnist
from worker.export import SCRATCH_PREFIX, export_model
from worker.models import build_model, predict_probabilities

SPECS = {
    "naive": ModelSpec(implementation="naive"),
    "keras": ModelSpec(implementation="keras"),
    "keras-linear-last": ModelSpec(
        layers=[{"units": 64, "activation": "sigmoid"}, {"units": 10, "activation": "linear"}]
    ),
}


def litert_predict(content: bytes, images: np.ndarray) -> np.ndarray:
    """What the API does: resize the batch dimension to N, allocate, invoke."""
    interpreter = Interpreter(model_content=content)
    inputs = interpreter.get_input_details()[0]
    assert list(inputs["shape_signature"]) == [-1, 784]
    interpreter.resize_tensor_input(inputs["index"], [len(images), 784])
    interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], images)
    interpreter.invoke()
    output = interpreter.get_output_details()[0]
    assert list(output["shape_signature"]) == [-1, 10]
    return interpreter.get_tensor(output["index"])


@pytest.mark.parametrize("name", SPECS)
def test_tflite_gives_the_models_probabilities(name: str, mnist: Mnist) -> None:
    model = build_model(SPECS[name], seed=0)
    content = export_model(model)
    for images in (mnist.x_test[:3], mnist.x_test[3:4]):
        expected = predict_probabilities(model, images).numpy()
        got = litert_predict(content, images)
        assert got.shape == (len(images), 10)
        # rtol too: the naive layers' initial logits are ~100, where float32 rounding in a
        # different summation order (XNNPACK vs Eigen) moves a probability by up to ~2e-5.
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)


def test_the_converter_works_in_the_scratch_folder_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Watch where the converter makes its SavedModel: it asks tempfile, with no folder.
    made: list[Path] = []
    mkdtemp = tempfile.mkdtemp

    def watched(*args, **kwargs) -> str:  # noqa: ANN002, ANN003
        made.append(Path(mkdtemp(*args, **kwargs)))
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", watched)
    scratch = tmp_path / "data" / "tmp"
    default = tempfile.gettempdir()
    export_model(build_model(SPECS["keras"], seed=0), scratch=scratch)
    # The process's own folder, and the SavedModel's folder inside it: both in the data dir.
    assert all(p.is_relative_to(scratch) for p in made), made
    assert any(p.parent.parent == scratch and p.parent.name.startswith(SCRATCH_PREFIX)
               for p in made), made
    assert list(scratch.iterdir()) == []  # the SavedModel and its folder are gone
    assert tempfile.gettempdir() == default  # the process's default is back


def test_a_failed_conversion_leaves_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    convert = tf.lite.TFLiteConverter.convert

    def convert_then_fail(self) -> bytes:  # noqa: ANN001
        convert(self)  # every file the real conversion makes, then an error
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "convert", convert_then_fail)
    scratch = tmp_path / "tmp"
    with pytest.raises(OSError, match="No space left"):
        export_model(build_model(SPECS["keras"], seed=0), scratch=scratch)
    assert list(scratch.iterdir()) == []


HOLD_A_FOLDER = """
import sys, time
from pathlib import Path
from service.files import owned_folder
with owned_folder(Path(sys.argv[1]), prefix=sys.argv[2]) as folder:
    (folder / "saved_model.pb").write_bytes(b"x" * 1000)
    print(folder, flush=True)
    time.sleep(600)
"""


def test_the_sweep_removes_a_killed_processs_folder_and_keeps_live_ones(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    # A process converting (alive, holding its folder), as another worker sharing the disk.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_FOLDER, str(scratch), SCRATCH_PREFIX],
                              stdout=subprocess.PIPE, text=True)
    try:
        folder = Path(holder.stdout.readline().strip())
        assert folder.parent == scratch and (folder / "saved_model.pb").exists()
        with owned_folder(scratch, prefix=SCRATCH_PREFIX) as mine:
            assert sweep_abandoned(scratch, prefix=SCRATCH_PREFIX) == []
            assert folder.exists() and mine.exists()
            holder.kill()  # as a worker killed in the middle of a conversion
            holder.wait()
            assert folder.exists()  # what it leaves behind
            assert sweep_abandoned(scratch, prefix=SCRATCH_PREFIX) == [folder]
            assert mine.exists()
        assert list(scratch.iterdir()) == []
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_the_sweep_waits_for_a_folder_not_locked_yet(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    fresh, old, other = (scratch / f"{SCRATCH_PREFIX}fresh", scratch / f"{SCRATCH_PREFIX}old",
                         scratch / "not-a-scratch-folder")
    for folder in (fresh, old, other):
        folder.mkdir(parents=True)
    # Made and never locked: its process died before it could lock it, long ago.
    long_ago = time.time() - UNLOCKED_GRACE_S - 1
    for folder in (old, other):
        os.utime(folder, (long_ago, long_ago))
    # `fresh` may be a folder whose owner is locking it right now.
    assert sweep_abandoned(scratch, prefix=SCRATCH_PREFIX) == [old]
    assert sorted(p.name for p in scratch.iterdir()) == sorted([fresh.name, other.name])
