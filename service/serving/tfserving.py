"""TensorFlow Serving's REST API (v1), as its clients and KServe's v1 client expect it.

Request bodies are read here rather than by pydantic: TF Serving accepts a tensor in several
shapes (rows or columns, named or not), and its errors are `{"error": "message"}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.schemas import NUM_CLASSES
from service.serving import tensors
from service.serving.catalog import ModelRef
from service.serving.signatures import MNIST, Signature, check_inputs
from service.serving.store import BadInput, as_numbers

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
SIGNATURE = "serving_default"

# TF Serving's ModelVersionStatus.State for each job state, with the status it reports:
# a queued job has not started loading, a running one is on its way, the others never will.
_STATES = {
    "queued": ("START", "OK"),
    "running": ("LOADING", "OK"),
    "succeeded": ("AVAILABLE", "OK"),
    "failed": ("END", "UNKNOWN"),
    "cancelled": ("END", "CANCELLED"),
    "pruned": ("AVAILABLE", "OK"),  # a study's pruned trial keeps its model
}


@dataclass(frozen=True)
class PredictCall:
    images: np.ndarray  # (N, 784) float32, checked
    columnar: bool  # asked with "inputs": answer with "outputs"


def model_status(ref: ModelRef) -> dict[str, Any]:
    """GetModelStatusResponse as JSON, plus KServe v1's `name` and `ready`."""
    state, code = _STATES[ref.state]
    message = "" if code == "OK" else (ref.error or f"job {ref.job_id} was {ref.state}")
    return {
        "model_version_status": [
            {
                "version": ref.version,
                "state": state,
                "status": {"error_code": code, "error_message": message},
            }
        ],
        "name": ref.name,
        "ready": ref.ready,
    }


def model_metadata(
    ref: ModelRef, input_shape: tuple[int, ...], *, classes: int = NUM_CLASSES
) -> dict[str, Any]:
    """GetModelMetadataResponse as JSON: the one signature, inputs in (one sample of
    `input_shape` each: (784,), or (28, 28, 1) for a convnet, (features,) for tabular data),
    the probabilities of its `classes` out."""
    return {
        "model_spec": {"name": ref.name, "signature_name": "", "version": ref.version},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    SIGNATURE: {
                        "inputs": {
                            INPUT_NAME: _tensor_info(input_shape, "serving_default_images:0")
                        },
                        "outputs": {OUTPUT_NAME: _tensor_info((classes,), "Identity:0")},
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            }
        },
    }


def _tensor_info(shape: tuple[int, ...], name: str) -> dict[str, Any]:
    dims = [{"size": str(size), "name": ""} for size in (-1, *shape)]
    return {
        "dtype": "DT_FLOAT",
        "tensor_shape": {"dim": dims, "unknown_rank": False},
        "name": name,
    }


def parse_predict(body: bytes, reads: Signature = MNIST) -> PredictCall:
    """The inputs in a predict request, row format (`instances`) or columnar (`inputs`),
    checked against what the model reads (its signature, `reads`)."""
    try:
        request = tensors.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"JSON Parse error: {exc}") from None
    except RecursionError:  # arrays nested thousands deep
        raise BadInput("JSON Parse error: nested too deeply") from None
    if not isinstance(request, dict):
        raise BadInput("the request must be a JSON object with 'instances' or 'inputs'")
    signature = request.get("signature_name", SIGNATURE)
    if signature not in (SIGNATURE, ""):
        raise BadInput(f'Serving signature name: "{signature}" not found in signature def')
    unknown = set(request) - {"signature_name", "instances", "inputs"}
    if unknown:
        raise BadInput(f"unknown field(s) in the request: {', '.join(sorted(unknown))}")
    if ("instances" in request) == ("inputs" in request):
        raise BadInput("the request must have either 'instances' or 'inputs', not both")
    if "instances" in request:
        instances = request["instances"]
        if not isinstance(instances, list):
            raise BadInput("'instances' must be a list")
        rows = check_inputs(as_numbers([_unname(i) for i in instances]), reads)
        return PredictCall(images=rows, columnar=False)
    return PredictCall(images=check_inputs(as_numbers(_unname(request["inputs"])), reads),
                       columnar=True)


def _unname(value: Any) -> Any:
    # A named tensor, {"images": ...}, is the same as the bare one: the model has one input.
    if isinstance(value, dict):
        if set(value) != {INPUT_NAME}:
            raise BadInput(f"the model's only input is '{INPUT_NAME}', got {sorted(value)}")
        return value[INPUT_NAME]
    return value


def predict_response(probabilities: np.ndarray, *, columnar: bool) -> dict[str, Any]:
    """One output tensor: a list of probabilities (one per class) per instance, under the
    format's key."""
    return {"outputs" if columnar else "predictions": probabilities.tolist()}
