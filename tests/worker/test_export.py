"""Export: the .tflite gives the TF model's probabilities under LiteRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from service.schemas import ModelSpec
from worker.data import Mnist
from worker.export import export_model
from worker.models import build_model, predict_probabilities

SPECS = {
    "naive": ModelSpec(implementation="naive"),
    "keras": ModelSpec(implementation="keras"),
    "keras-linear-last": ModelSpec(
        layers=[{"units": 64, "activation": "sigmoid"}, {"units": 10, "activation": "linear"}]
    ),
}


def litert_predict(path: Path, images: np.ndarray) -> np.ndarray:
    """What the API does: resize the batch dimension to N, allocate, invoke."""
    interpreter = Interpreter(model_path=str(path))
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
def test_tflite_gives_the_models_probabilities(name: str, tmp_path: Path, mnist: Mnist) -> None:
    model = build_model(SPECS[name], seed=0)
    path = export_model(model, tmp_path / "job")
    assert path == tmp_path / "job" / "model.tflite"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.tflite"]
    for images in (mnist.x_test[:3], mnist.x_test[3:4]):
        expected = predict_probabilities(model, images).numpy()
        got = litert_predict(path, images)
        assert got.shape == (len(images), 10)
        # rtol too: the naive layers' initial logits are ~100, where float32 rounding in a
        # different summation order (XNNPACK vs Eigen) moves a probability by up to ~2e-5.
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)


def test_re_export_replaces_the_file(tmp_path: Path) -> None:
    first = export_model(build_model(SPECS["keras"], seed=0), tmp_path)
    before = first.read_bytes()
    export_model(build_model(SPECS["keras"], seed=1), tmp_path)
    assert first.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]
