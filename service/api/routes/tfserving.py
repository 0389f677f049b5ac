"""TensorFlow Serving's REST API: model status, metadata and predict, for every trained job.

A model's name is a job id, `latest` or `best`; its one version is the job id. The `:predict`
paths end in a literal after the name: Starlette's `{name}` matches no `/` and gives way to
the literal, so `/v1/models/3:predict` is model 3 (a name never holds a colon).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service import tfserving
from service.api.responses import protocol_errors
from service.api.serving_deps import BodyDep, CatalogDep, ProtocolRoute, error
from service.serving import Catalog

router = APIRouter(
    prefix="/v1/models",
    tags=["tensorflow serving"],
    route_class=ProtocolRoute,
    responses=protocol_errors(400, 404, 413),
)


@router.get("/{name}")
def model_status(catalog: CatalogDep, name: str) -> dict[str, Any]:
    """The model's version and state (AVAILABLE once trained), with KServe v1's `ready`."""
    return tfserving.model_status(catalog.find(name))


@router.get("/{name}/versions/{version}")
def version_status(catalog: CatalogDep, name: str, version: str) -> dict[str, Any]:
    """The state of one version of the model; the version is its job id."""
    return tfserving.model_status(catalog.find(name, version))


@router.get("/{name}/metadata")
def model_metadata(catalog: CatalogDep, name: str) -> dict[str, Any]:
    """The serving signature: images [-1, 784] DT_FLOAT in, probabilities [-1, 10] out."""
    return tfserving.model_metadata(catalog.resolve(name))


@router.get("/{name}/versions/{version}/metadata")
def version_metadata(catalog: CatalogDep, name: str, version: str) -> dict[str, Any]:
    """The serving signature of one version of the model."""
    return tfserving.model_metadata(catalog.resolve(name, version))


@router.post("/{name}:predict")
def predict(catalog: CatalogDep, name: str, body: BodyDep) -> JSONResponse:
    """Rows (`instances` → `predictions`) or columns (`inputs` → `outputs`) of probabilities."""
    return _predict(catalog, body, name=name, version=None)


@router.post("/{name}/versions/{version}:predict")
def version_predict(catalog: CatalogDep, name: str, version: str, body: BodyDep) -> JSONResponse:
    """Predict with one version of the model; another version than its job id is a 404."""
    return _predict(catalog, body, name=name, version=version)


def _predict(catalog: Catalog, body: bytes, *, name: str, version: str | None) -> JSONResponse:
    ref = catalog.resolve(name, version)
    call = tfserving.parse_predict(body)
    probabilities = catalog.predict(ref, call.images)
    # A ready response: FastAPI would validate a returned dict again, in one more thread hop.
    return JSONResponse(tfserving.predict_response(probabilities, columnar=call.columnar))


@router.post("/{name}:{verb}", include_in_schema=False)
@router.post("/{name}/versions/{version}:{verb}", include_in_schema=False)
def other_verb(name: str, verb: str, version: str | None = None) -> JSONResponse:
    """TF Serving's other verbs: this model has only the predict signature."""
    if verb in ("classify", "regress"):
        return error(400, f"model '{name}' has no {verb} signature; it serves :predict")
    return error(404, f"Malformed request: POST /v1/models/{name}:{verb}")
