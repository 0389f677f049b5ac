"""KServe's V2 inference protocol (the Open Inference Protocol) over REST, with the binary
tensor data extension that tritonclient and KServe's clients use by default.

With the extension, a body is a JSON header of `Inference-Header-Content-Length` bytes
followed by the raw tensors (little-endian, row-major) in the order the JSON lists them; a
tensor sent that way carries `parameters.binary_data_size` instead of `data`.
"""

from __future__ import annotations

import json
import math
import struct
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.schemas import INPUT_SIZE
from service.serving.catalog import ModelRef
from service.serving.signatures import MNIST, Signature, check_inputs
from service.serving.store import MAX_INSTANCES, BadInput, as_numbers

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT_NAME = "images"
PROBABILITIES = "probabilities"
DIGIT = "digit"  # MNIST models only
CLASS = "class"  # the predicted class's index
LABEL = "label"  # its name, as BYTES
PLATFORM = "tensorflow_tflite"
EXTENSIONS = ["binary_tensor_data"]
_DTYPES = {PROBABILITIES: ("FP32", "<f4"), DIGIT: ("INT64", "<i8"), CLASS: ("INT64", "<i8"),
           LABEL: ("BYTES", None)}

Parameters = dict[str, str | int | float | bool]


class _Message(BaseModel):
    # Clients may add fields of their own; the protocol says to ignore what one does not know.
    model_config = ConfigDict(extra="ignore")


class InputTensor(_Message):
    name: str
    shape: list[int] = Field(min_length=1, max_length=8)
    datatype: str
    parameters: Parameters | None = None
    data: Any = None


class RequestedOutput(_Message):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(_Message):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


@dataclass(frozen=True)
class InferCall:
    id: str
    images: np.ndarray  # (N, 784) float32, checked; the model reshapes them to its input
    outputs: list[tuple[str, bool]]  # (name, as binary) in the order asked
    signature: Signature = MNIST  # what the model reads, and its labels


def model_metadata(
    ref: ModelRef, input_shape: tuple[int, ...], signature: Signature = MNIST
) -> dict[str, Any]:
    """The model metadata response: one FP32 input in the model's own shape ([-1, 784], or
    [-1, 28, 28, 1] for a convnet, [-1, features] for tabular data), and its outputs: the
    probabilities of its classes, the class and its label (BYTES), and MNIST's digit."""
    outputs = [
        {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(signature.classes)]},
        {"name": CLASS, "datatype": "INT64", "shape": [-1]},
        {"name": LABEL, "datatype": "BYTES", "shape": [-1]},
    ]
    if signature.mnist:
        outputs.insert(1, {"name": DIGIT, "datatype": "INT64", "shape": [-1]})
    return {
        "name": ref.name,
        "versions": [ref.version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *input_shape]}],
        "outputs": outputs,
    }


def parse_infer(
    body: bytes, header_length: str | None, signature: Signature = MNIST
) -> InferCall:
    """The inputs and the wanted outputs of an inference request, JSON or JSON + binary,
    checked against what the model of `signature` reads."""
    header, binary = _split(body, header_length)
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadInput(f"{where}: {first['msg']}") from None
    if len(request.inputs) != 1:
        raise BadInput(f"the model has one input, '{INPUT_NAME}'; got {len(request.inputs)}")
    images = _images(request.inputs[0], binary, signature)
    return InferCall(
        id=request.id if request.id is not None else uuid.uuid4().hex,
        images=images,
        outputs=_wanted(request, signature),
        signature=signature,
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isdecimal() or not 0 < int(header_length) <= len(body):
        raise BadInput(
            f"{HEADER_LENGTH} must be the JSON header's length, 1 to {len(body)}; "
            f"got '{header_length}'"
        )
    return body[: int(header_length)], body[int(header_length) :]


def _images(tensor: InputTensor, binary: bytes, signature: Signature) -> np.ndarray:
    if tensor.name != INPUT_NAME:
        raise BadInput(f"unknown input '{tensor.name}': the model's input is '{INPUT_NAME}'")
    if tensor.datatype != "FP32":
        raise BadInput(f"input '{INPUT_NAME}' must be FP32, got {tensor.datatype}")
    shape = tensor.shape
    if any(d < 0 for d in shape) or shape[0] > MAX_INSTANCES:
        raise BadInput(
            f"expected shape [N, {INPUT_SIZE}], [N, 28, 28] or [N, 28, 28, 1], got {shape}"
        )
    count = math.prod(shape)
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        if binary:
            raise BadInput("binary data follows the JSON but no input has binary_data_size")
        if tensor.data is None:
            raise BadInput(f"input '{INPUT_NAME}' has neither data nor binary_data_size")
        # The protocol allows the data flat or nested in the tensor's natural shape.
        flat = as_numbers(tensor.data).ravel()
    else:
        if tensor.data is not None:
            raise BadInput(f"input '{INPUT_NAME}' has both data and binary_data_size")
        if isinstance(size, bool) or not isinstance(size, int) or size != len(binary):
            raise BadInput(
                f"binary_data_size is {size!r} but {len(binary)} bytes follow the JSON header"
            )
        if size != count * 4:
            raise BadInput(f"shape {shape} of FP32 needs {count * 4} bytes, got {size}")
        flat = np.frombuffer(binary, dtype="<f4")
    if flat.size != count:
        raise BadInput(f"shape {shape} holds {count} values, but the data has {flat.size}")
    return check_inputs(flat.reshape(shape), signature)


def _wanted(request: InferenceRequest, signature: Signature) -> list[tuple[str, bool]]:
    # binary_data_output asks for every output in binary; an output's binary_data overrides it.
    default = (request.parameters or {}).get("binary_data_output") is True
    if request.outputs is None:
        return [(PROBABILITIES, default)]
    wanted = []
    known = sorted(name for name in _DTYPES if name != DIGIT or signature.mnist)
    for output in request.outputs:
        if output.name not in known:
            raise BadInput(f"unknown output '{output.name}': the model has {known}")
        binary = (output.parameters or {}).get("binary_data", default) is True
        wanted.append((output.name, binary))
    return wanted


def infer_response(
    ref: ModelRef, call: InferCall, probabilities: np.ndarray
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or JSON then binary tensors when asked."""
    best = probabilities.argmax(axis=1)
    values = {PROBABILITIES: probabilities, DIGIT: best, CLASS: best}
    outputs, parts = [], []
    for name, binary in call.outputs:
        datatype, dtype = _DTYPES[name]
        output: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [len(best)]}
        if name == LABEL:
            labels = [call.signature.classes[i] for i in best.tolist()]
            if binary:  # each element: its length, 4 bytes little-endian, then its UTF-8
                parts.append(b"".join(struct.pack("<I", len(text.encode())) + text.encode()
                                      for text in labels))
            else:
                output["data"] = labels
        else:
            tensor = np.ascontiguousarray(values[name], dtype=dtype)
            output["shape"] = list(tensor.shape)
            if binary:
                parts.append(tensor.tobytes())
            else:
                output["data"] = tensor.ravel().tolist()
        if binary:
            output["parameters"] = {"binary_data_size": len(parts[-1])}
        outputs.append(output)
    header = json.dumps(
        {"model_name": ref.name, "model_version": ref.version, "id": call.id, "outputs": outputs},
        separators=(",", ":"),
    ).encode()
    if not parts:
        return header, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return header + b"".join(parts), headers
