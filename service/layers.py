"""The layers a job's model is made of, as typed specs, and the shapes they give.

Pure Python, no TensorFlow: the API computes every layer's output shape when a job is
submitted, so a model that cannot be built is a 422 naming the layer, not a failed job; the
worker builds the same layers (worker/models.py) and reads the same shapes.

A layer without a `type` is `dense`, so every spec written before the other types existed
still means what it meant. Shapes leave out the batch: MNIST's input is (28, 28, 1); a
`dense` layer on an image flattens it first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag
from pydantic import Strict as StrictType

Shape = tuple[int, ...]

MNIST_INPUT_SHAPE: Shape = (28, 28, 1)
NUM_CLASSES = 10
MAX_UNITS = 4_096
MAX_FILTERS = 1_024
MAX_WINDOW = 32  # the largest kernel, pool or stride, per side
MAX_PARAMETERS = 20_000_000
# Multiply-adds of one image's forward pass (dense and conv layers). A training step costs
# about three times that per image; at this cap a 100-epoch job on 60,000 images is ~4.5e14,
# about half a day on two CPU cores. The book's chapter-8 convnet needs 3.1 million.
MAX_MULTIPLY_ADDS = 25_000_000

Int = Annotated[int, StrictType()]
Float = Annotated[float, StrictType()]


class Activation(StrEnum):
    relu = "relu"
    sigmoid = "sigmoid"
    tanh = "tanh"
    softmax = "softmax"
    linear = "linear"


class ShapeError(ValueError):
    """A model that cannot be built on its input: the message names the layer and shapes."""


class _Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def output_shape(self, shape: Shape) -> Shape:
        """The shape this layer gives for an input of `shape`; ShapeError when it cannot."""
        return shape

    def parameters(self, shape: Shape) -> int:
        """Its weights (trainable or not) on an input of `shape`."""
        return 0

    def multiply_adds(self, shape: Shape) -> int:
        """Multiply-adds of its forward pass for one sample of `shape`."""
        return 0


class DenseLayer(_Layer):
    type: Literal["dense"] = "dense"
    units: Int = Field(ge=1, le=MAX_UNITS)
    activation: Activation = Activation.relu

    def output_shape(self, shape: Shape) -> Shape:
        return (self.units,)

    def parameters(self, shape: Shape) -> int:
        return (math.prod(shape) + 1) * self.units

    def multiply_adds(self, shape: Shape) -> int:
        return math.prod(shape) * self.units


class _Spatial(_Layer):
    """A layer that slides a window over an image (height, width, channels)."""

    def _image(self, shape: Shape) -> Shape:
        if len(shape) != 3:
            raise ShapeError(
                f"needs an image input (height, width, channels), got the flat {_show(shape)}"
            )
        return shape

    def _slide(self, shape: Shape, window: int, strides: int, padding: str, what: str) -> Shape:
        height, width, _ = self._image(shape)
        if padding == "same":
            return -(-height // strides), -(-width // strides)
        if window > height or window > width:
            raise ShapeError(
                f"its {window}×{window} {what} is larger than its input {_show(shape)}: the "
                "shape would reach zero"
            )
        return (height - window) // strides + 1, (width - window) // strides + 1


class Conv2DLayer(_Spatial):
    type: Literal["conv2d"]
    filters: Int = Field(ge=1, le=MAX_FILTERS)
    kernel_size: Int = Field(ge=1, le=MAX_WINDOW, description="a square kernel, this many a side")
    strides: Int = Field(default=1, ge=1, le=MAX_WINDOW)
    padding: Literal["valid", "same"] = "valid"
    activation: Activation = Activation.relu

    def output_shape(self, shape: Shape) -> Shape:
        return (*self._slide(shape, self.kernel_size, self.strides, self.padding, "kernel"),
                self.filters)

    def parameters(self, shape: Shape) -> int:
        return (self.kernel_size**2 * self._image(shape)[2] + 1) * self.filters

    def multiply_adds(self, shape: Shape) -> int:
        height, width, filters = self.output_shape(shape)
        return height * width * filters * self.kernel_size**2 * shape[2]


class _Pool2D(_Spatial):
    pool_size: Int = Field(default=2, ge=1, le=MAX_WINDOW)
    strides: Int | None = Field(default=None, ge=1, le=MAX_WINDOW,
                                description="default: the pool size")

    def output_shape(self, shape: Shape) -> Shape:
        strides = self.strides or self.pool_size
        return (*self._slide(shape, self.pool_size, strides, "valid", "pool"), shape[2])


class MaxPool2DLayer(_Pool2D):
    type: Literal["max_pool2d"]


class AvgPool2DLayer(_Pool2D):
    type: Literal["avg_pool2d"]


class GlobalAvgPool2DLayer(_Spatial):
    type: Literal["global_avg_pool2d"]

    def output_shape(self, shape: Shape) -> Shape:
        return (self._image(shape)[2],)


class FlattenLayer(_Layer):
    type: Literal["flatten"]

    def output_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)


class DropoutLayer(_Layer):
    type: Literal["dropout"]
    rate: Float = Field(ge=0, lt=1, description="the fraction of inputs zeroed while training")


class BatchNormLayer(_Layer):
    type: Literal["batch_norm"]
    momentum: Float = Field(default=0.99, ge=0, lt=1)
    epsilon: Float = Field(default=0.001, gt=0, le=1)

    def parameters(self, shape: Shape) -> int:
        return 4 * shape[-1]  # scale and offset, trained; the moving mean and variance


LAYER_TYPES = {
    "dense": DenseLayer,
    "conv2d": Conv2DLayer,
    "max_pool2d": MaxPool2DLayer,
    "avg_pool2d": AvgPool2DLayer,
    "global_avg_pool2d": GlobalAvgPool2DLayer,
    "flatten": FlattenLayer,
    "dropout": DropoutLayer,
    "batch_norm": BatchNormLayer,
}
# The layers that need an image input: a model with one of them takes images whole.
SPATIAL_TYPES = frozenset({"conv2d", "max_pool2d", "avg_pool2d", "global_avg_pool2d"})


def _layer_type(value: Any) -> str | None:
    # No `type` means dense: the specs written before the other layer types existed.
    found = value.get("type", "dense") if isinstance(value, dict) else getattr(value, "type", None)
    return found if isinstance(found, str) else None


Layer = Annotated[
    Annotated[DenseLayer, Tag("dense")]
    | Annotated[Conv2DLayer, Tag("conv2d")]
    | Annotated[MaxPool2DLayer, Tag("max_pool2d")]
    | Annotated[AvgPool2DLayer, Tag("avg_pool2d")]
    | Annotated[GlobalAvgPool2DLayer, Tag("global_avg_pool2d")]
    | Annotated[FlattenLayer, Tag("flatten")]
    | Annotated[DropoutLayer, Tag("dropout")]
    | Annotated[BatchNormLayer, Tag("batch_norm")],
    Discriminator(
        _layer_type,
        custom_error_type="layer_type",
        custom_error_message=f"unknown layer type: choose from {', '.join(LAYER_TYPES)} "
        "(no type: dense)",
    ),
]


@dataclass(frozen=True)
class LayerShape:
    """One layer on its input: what comes in and out, its weights and its work per sample."""

    index: int
    layer: _Layer
    input: Shape
    output: Shape
    parameters: int
    multiply_adds: int


@dataclass(frozen=True)
class ModelShape:
    input: Shape
    layers: tuple[LayerShape, ...]

    @property
    def output(self) -> Shape:
        return self.layers[-1].output if self.layers else self.input

    @property
    def parameters(self) -> int:
        return sum(layer.parameters for layer in self.layers)

    @property
    def multiply_adds(self) -> int:
        return sum(layer.multiply_adds for layer in self.layers)

    @property
    def takes_images(self) -> bool:
        """Whether the model reads its input as an image, not as flat values: true when a
        layer before its first dense or flatten needs the image's shape."""
        if len(self.input) == 1:
            return False
        for shape in self.layers:
            if shape.layer.type in ("dense", "flatten"):
                return False  # flattening comes first: the flat pixels are the same input
            if shape.layer.type != "dropout":
                return True
        return False


def model_shape(layers: list[_Layer], input_shape: Shape = MNIST_INPUT_SHAPE) -> ModelShape:
    """Every layer's output shape from `input_shape`; ShapeError naming the first layer
    that cannot take what it is given."""
    shapes, shape = [], tuple(input_shape)
    for index, layer in enumerate(layers):
        try:
            output = layer.output_shape(shape)
        except ShapeError as exc:
            raise ShapeError(f"{_name(index, layer)}: {exc}") from None
        if min(output) < 1:
            raise ShapeError(
                f"{_name(index, layer)}: the shape reaches zero, {_show(shape)} → {_show(output)}"
            )
        shapes.append(LayerShape(index, layer, shape, output, layer.parameters(shape),
                                 layer.multiply_adds(shape)))
        shape = output
    return ModelShape(tuple(input_shape), tuple(shapes))


def check_model(
    layers: list[_Layer],
    input_shape: Shape = MNIST_INPUT_SHAPE,
    *,
    num_classes: int = NUM_CLASSES,
    max_parameters: int = MAX_PARAMETERS,
    max_multiply_adds: int = MAX_MULTIPLY_ADDS,
) -> ModelShape:
    """The model's shapes when it can be built on `input_shape`, ends in a dense layer of
    `num_classes` units and is within both caps; ShapeError saying what is wrong otherwise."""
    last = layers[-1]
    if not isinstance(last, DenseLayer) or last.units != num_classes:
        got = f"{last.units} units" if isinstance(last, DenseLayer) else f"a {last.type} layer"
        raise ShapeError(
            f"the last layer must be dense with {num_classes} units (one per class), got {got}"
        )
    shapes = model_shape(layers, input_shape)
    if shapes.parameters > max_parameters:
        raise ShapeError(
            f"the model has {shapes.parameters:,} parameters, more than the "
            f"{max_parameters:,} allowed{_largest(shapes, 'parameters')}"
        )
    if shapes.multiply_adds > max_multiply_adds:
        raise ShapeError(
            f"the model takes {shapes.multiply_adds:,} multiply-adds per sample, more than the "
            f"{max_multiply_adds:,} allowed{_largest(shapes, 'multiply_adds')}"
        )
    return shapes


def _largest(shapes: ModelShape, figure: str) -> str:
    top = max(shapes.layers, key=lambda layer: getattr(layer, figure))
    return (f"; the most in {_name(top.index, top.layer)}: {getattr(top, figure):,} "
            f"on {_show(top.input)} → {_show(top.output)}")


def _name(index: int, layer: _Layer) -> str:
    return f"layers[{index}] ({layer.type})"


def _show(shape: Shape) -> str:
    return f"({shape[0]},)" if len(shape) == 1 else f"({', '.join(map(str, shape))})"
