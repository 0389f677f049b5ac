"""Typed layers in the job spec: the table of types, old specs unchanged, every layer's shape
computed at submit, and each model that cannot be built refused with a 422 naming the layer."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.layers import (
    MAX_MULTIPLY_ADDS,
    MAX_PARAMETERS,
    MNIST_INPUT_SHAPE,
    BatchNormLayer,
    Conv2DLayer,
    DenseLayer,
    ShapeError,
    check_model,
    model_shape,
)
from service.schemas import JobSpec, ModelSpec

# Deep Learning with Python, chapter 8: the MNIST convnet.
CONVNET = [
    {"type": "conv2d", "filters": 32, "kernel_size": 3, "activation": "relu"},
    {"type": "max_pool2d", "pool_size": 2},
    {"type": "conv2d", "filters": 64, "kernel_size": 3, "activation": "relu"},
    {"type": "max_pool2d", "pool_size": 2},
    {"type": "conv2d", "filters": 128, "kernel_size": 3, "activation": "relu"},
    {"type": "flatten"},
    {"type": "dense", "units": 10, "activation": "softmax"},
]


def layers(*specs: dict) -> list:
    return ModelSpec.model_validate({"layers": [*specs, {"units": 10}]}).layers[:-1]


def test_every_layer_type_of_the_table_with_its_defaults() -> None:
    spec = ModelSpec.model_validate({"layers": [
        {"type": "conv2d", "filters": 8, "kernel_size": 3},
        {"type": "batch_norm"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "strides": 2, "padding": "same",
         "activation": "tanh"},
        {"type": "avg_pool2d", "pool_size": 2, "strides": 1},
        {"type": "dropout", "rate": 0.25},
        {"type": "global_avg_pool2d"},
        {"type": "flatten"},
        {"units": 10, "activation": "softmax"},
    ]})
    dumped = spec.model_dump(mode="json")["layers"]
    assert dumped[0] == {"type": "conv2d", "filters": 8, "kernel_size": 3, "strides": 1,
                         "padding": "valid", "activation": "relu"}
    # Keras' defaults for batch norm; a pool's strides default to its size.
    assert dumped[1] == {"type": "batch_norm", "momentum": 0.99, "epsilon": 0.001}
    assert dumped[2] == {"type": "max_pool2d", "pool_size": 2, "strides": None}
    assert [layer["type"] for layer in dumped] == [
        "conv2d", "batch_norm", "max_pool2d", "conv2d", "avg_pool2d", "dropout",
        "global_avg_pool2d", "flatten", "dense",
    ]
    shapes = model_shape(spec.layers)
    assert [shape.output for shape in shapes.layers] == [
        (26, 26, 8), (26, 26, 8), (13, 13, 8), (7, 7, 8), (6, 6, 8), (6, 6, 8), (8,), (8,),
        (10,),
    ]
    # A round trip through the stored JSON gives the same spec.
    assert ModelSpec.model_validate(spec.model_dump(mode="json")) == spec


def test_a_layer_without_a_type_is_dense_so_old_specs_mean_what_they_meant() -> None:
    stored = {  # a job's spec as it was stored before layers had types
        "model": {"implementation": "keras",
                  "layers": [{"units": 512, "activation": "relu"},
                             {"units": 10, "activation": "softmax"}]},
        "optimizer": {"name": "rmsprop", "learning_rate": 0.001, "momentum": None},
        "epochs": 5, "batch_size": 128,
        "dataset": {"name": "mnist", "train_limit": None, "test_limit": None},
        "seed": 0,
    }
    spec = JobSpec.model_validate(stored)
    assert spec == JobSpec()  # the default job, unchanged
    assert all(isinstance(layer, DenseLayer) for layer in spec.model.layers)
    assert [(layer.units, layer.activation) for layer in spec.model.layers] == [
        (512, "relu"), (10, "softmax")
    ]
    assert JobSpec.model_validate(stored) == JobSpec.model_validate(
        spec.model_dump(mode="json")
    )
    naive = ModelSpec.model_validate({"implementation": "naive",
                                      "layers": [{"units": 32}, {"units": 10}]})
    assert [layer.type for layer in naive.layers] == ["dense", "dense"]


def test_the_books_convnet_shapes_parameters_and_work() -> None:
    shapes = check_model(ModelSpec.model_validate({"layers": CONVNET}).layers)
    assert shapes.input == MNIST_INPUT_SHAPE == (28, 28, 1)
    assert [shape.output for shape in shapes.layers] == [
        (26, 26, 32), (13, 13, 32), (11, 11, 64), (5, 5, 64), (3, 3, 128), (1152,), (10,)
    ]
    assert shapes.parameters == 104_202  # Keras' model.summary() for the book's net
    assert shapes.multiply_adds == 3_100_032
    assert shapes.multiply_adds * 5 < MAX_MULTIPLY_ADDS  # it fits, with room
    assert shapes.takes_images


def test_dense_on_an_image_flattens_it_first() -> None:
    shapes = check_model(ModelSpec().layers)
    assert [shape.output for shape in shapes.layers] == [(512,), (10,)]
    assert shapes.parameters == 784 * 512 + 512 + 512 * 10 + 10  # as before layer types
    assert not shapes.takes_images  # the flat pixels are the same input
    convnet = check_model(layers({"type": "conv2d", "filters": 4, "kernel_size": 3}) +
                          [DenseLayer(units=10)])
    assert convnet.layers[1].input == (26, 26, 4) and convnet.parameters == 40 + 2704 * 10 + 10


def test_batch_norm_and_dropout_keep_the_shape() -> None:
    shapes = model_shape(layers({"type": "conv2d", "filters": 6, "kernel_size": 5},
                                {"type": "batch_norm"}, {"type": "dropout", "rate": 0.5}))
    assert [shape.output for shape in shapes.layers] == [(24, 24, 6)] * 3
    assert shapes.layers[1].parameters == 4 * 6  # scale, offset, moving mean and variance
    assert model_shape([BatchNormLayer(type="batch_norm")], (20,)).layers[0].output == (20,)
    # Before any flattening, batch norm normalises each channel of the image.
    assert check_model(layers({"type": "batch_norm"}) + [DenseLayer(units=10)]).takes_images


def test_other_input_shapes_for_other_datasets() -> None:
    color = check_model(ModelSpec.model_validate({"layers": CONVNET}).layers, (32, 32, 3))
    assert color.layers[0].output == (30, 30, 32) and color.layers[0].parameters == 896
    tabular = check_model(layers({"units": 16}) + [DenseLayer(units=3)], (20,), num_classes=3)
    assert tabular.parameters == 21 * 16 + 17 * 3
    with pytest.raises(ShapeError, match=r"layers\[0\] \(conv2d\).*flat \(20,\)"):
        model_shape([Conv2DLayer(type="conv2d", filters=1, kernel_size=1)], (20,))


# A bad model, where the 422's message points (model.layers), and what it must say.
REFUSED = [
    ("conv on a flat input",
     [{"units": 64}, {"type": "conv2d", "filters": 8, "kernel_size": 3}, {"units": 10}],
     ["layers[1] (conv2d)", "image input", "(64,)"]),
    ("pool on a flat input", [{"type": "flatten"}, {"type": "max_pool2d"}, {"units": 10}],
     ["layers[1] (max_pool2d)", "(784,)"]),
    ("global pool on a flat input",
     [{"units": 16}, {"type": "global_avg_pool2d"}, {"units": 10}],
     ["layers[1] (global_avg_pool2d)", "(16,)"]),
    ("kernel larger than its input",
     [{"type": "conv2d", "filters": 8, "kernel_size": 29}, {"units": 10}],
     ["layers[0] (conv2d)", "29×29 kernel", "(28, 28, 1)"]),
    ("pool larger than its input",
     [{"type": "conv2d", "filters": 4, "kernel_size": 25}, {"type": "avg_pool2d",
                                                            "pool_size": 5}, {"units": 10}],
     ["layers[1] (avg_pool2d)", "5×5 pool", "(4, 4, 4)"]),
    ("a shape that reaches zero", [{"type": "max_pool2d"}] * 5 + [{"units": 10}],
     ["layers[4] (max_pool2d)", "(1, 1, 1)", "reach zero"]),
    ("strides down to one pixel, then a kernel",
     [{"type": "conv2d", "filters": 4, "kernel_size": 3, "strides": 30, "padding": "same"},
      {"type": "conv2d", "filters": 4, "kernel_size": 2}, {"units": 10}],
     ["layers[1] (conv2d)", "(1, 1, 4)"]),
    ("naive with a layer other than dense",
     {"implementation": "naive", "layers": [{"type": "dropout", "rate": 0.5}, {"units": 10}]},
     ["layers[0] (dropout)", "naive", "dense"]),
    ("too many parameters",
     [{"type": "conv2d", "filters": 1024, "kernel_size": 1}, {"units": 1024}, {"units": 10}],
     ["parameters", f"{MAX_PARAMETERS:,}", "layers[1] (dense)", "(28, 28, 1024)"]),
    ("too many multiply-adds",
     [{"type": "conv2d", "filters": 64, "kernel_size": 3, "padding": "same"},
      {"type": "conv2d", "filters": 64, "kernel_size": 5, "padding": "same"}, {"units": 10}],
     ["multiply-adds", f"{MAX_MULTIPLY_ADDS:,}", "layers[1] (conv2d)", "(28, 28, 64)"]),
    ("a last layer that is not the 10 digits", [{"units": 10}, {"type": "dropout", "rate": 0.1}],
     ["last layer", "dense with 10 units", "dropout"]),
]


@pytest.mark.parametrize(("model", "says"), [(m, s) for _, m, s in REFUSED],
                         ids=[name for name, _, _ in REFUSED])
def test_a_model_that_cannot_be_built_is_refused_naming_the_layer(
    model: list | dict, says: list[str]
) -> None:
    spec = model if isinstance(model, dict) else {"layers": model}
    with pytest.raises(ValidationError) as refused:
        ModelSpec.model_validate(spec)
    (error,) = refused.value.errors()
    assert error["loc"] == ("layers",)
    for words in says:
        assert words in error["msg"], error["msg"]


# Bad fields of a layer: the 422 names the layer's index, its type and the field.
BAD_FIELDS = [
    ({"type": "lstm", "units": 10}, "model.layers.0", "unknown layer type"),
    ({"type": "conv2d", "filters": 0, "kernel_size": 3}, "model.layers.0.conv2d.filters", ""),
    ({"type": "conv2d", "filters": 8}, "model.layers.0.conv2d.kernel_size", "required"),
    ({"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "full"},
     "model.layers.0.conv2d.padding", ""),
    ({"type": "conv2d", "filters": 8, "kernel_size": 3, "units": 5},
     "model.layers.0.conv2d.units", "not permitted"),
    ({"type": "conv2d", "filters": 8, "kernel_size": 3.0}, "model.layers.0.conv2d.kernel_size",
     ""),
    ({"type": "max_pool2d", "pool_size": 0}, "model.layers.0.max_pool2d.pool_size", ""),
    ({"type": "dropout", "rate": 1.0}, "model.layers.0.dropout.rate", "less than 1"),
    ({"type": "dropout"}, "model.layers.0.dropout.rate", "required"),
    ({"type": "batch_norm", "momentum": 1.5}, "model.layers.0.batch_norm.momentum", ""),
    ({"type": "flatten", "rate": 0.5}, "model.layers.0.flatten.rate", "not permitted"),
    ({"type": None, "units": 10}, "model.layers.0", "unknown layer type"),
]


@pytest.mark.parametrize(("layer", "field", "says"), BAD_FIELDS,
                         ids=[f"{layer.get('type')}-{field}" for layer, field, _ in BAD_FIELDS])
def test_a_bad_layer_field_is_a_422_naming_it(
    client: TestClient, layer: dict, field: str, says: str
) -> None:
    response = client.post("/jobs", json={"model": {"layers": [layer, {"units": 10}]}})
    assert response.status_code == 422, response.text
    message = response.json()["message"]
    assert message.startswith(f"{field}:") and says in message, message
    assert client.get("/jobs").json()["total"] == 0


@pytest.mark.parametrize(("model", "says"), [(m, s) for _, m, s in REFUSED[::2]],
                         ids=[name for name, _, _ in REFUSED[::2]])
def test_through_the_api_a_bad_model_is_a_422_and_nothing_is_queued(
    client: TestClient, model: list | dict, says: list[str]
) -> None:
    spec = model if isinstance(model, dict) else {"layers": model}
    response = client.post("/jobs", json={"model": spec})
    assert response.status_code == 422, response.text
    message = response.json()["message"]
    assert message.startswith("model.layers: ")
    for words in says:
        assert words in message, message
    assert client.get("/jobs").json()["total"] == 0


def test_the_convnet_is_accepted_and_read_back_as_sent(client: TestClient) -> None:
    response = client.post("/jobs", json={"model": {"layers": CONVNET}, "batch_size": 64})
    assert response.status_code == 201, response.text
    stored = response.json()["spec"]["model"]["layers"]
    assert [layer["type"] for layer in stored] == [layer["type"] for layer in CONVNET]
    assert stored[0] == {**CONVNET[0], "strides": 1, "padding": "valid"}
    assert stored[-1] == CONVNET[-1]
