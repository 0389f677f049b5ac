"""TensorFlow Serving's REST API: model status, metadata and predict, for every trained job.

A model's name is a job id, `latest` or `best`; its one version is the job id. The `:predict`
paths end in a literal after the name, and a name or version never holds a colon, so neither
matches one: `/v1/models/3:predict` is model 3's predict, never the status of a model named
`3:predict` (and a GET there is a 405 that allows POST).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.convertors import StringConvertor, register_url_convertor

from service.api.deps import IdentityDep, Name, Version
from service.api.errors import error_response
from service.api.responses import protocol_errors
from service.api.serving_deps import BodyDep, CatalogDep
from service.serving import tfserving
from service.serving.catalog import Catalog, ModelRef
from service.tenancy.identity import Identity


class _Segment(StringConvertor):
    """A name or version in a path: no `/`, as any segment, and no `:`, which starts a verb."""

    regex = "[^/:]+"


register_url_convertor("segment", _Segment())

router = APIRouter(
    prefix="/v1/models",
    tags=["tensorflow serving"],
    # 405: a name with a colon in it is no model's name, but it may be a verb's path.
    responses=protocol_errors(400, 404, 405, 413),
)


@router.get("/{name:segment}")
def model_status(catalog: CatalogDep, identity: IdentityDep, name: Name) -> dict[str, Any]:
    """The model's version and state (AVAILABLE once trained), with KServe v1's `ready`."""
    return tfserving.model_status(catalog.find(name, identity=identity))


@router.get("/{name:segment}/versions/{version:segment}")
def version_status(
    catalog: CatalogDep, identity: IdentityDep, name: Name, version: Version
) -> dict[str, Any]:
    """The state of one version of the model; the version is its job id."""
    return tfserving.model_status(catalog.find(name, version, identity=identity))


@router.get("/{name:segment}/metadata")
def model_metadata(catalog: CatalogDep, identity: IdentityDep, name: Name) -> dict[str, Any]:
    """The serving signature: DT_FLOAT images in the model's own shape ([-1, 784], or
    [-1, 28, 28, 1] for a convnet), probabilities [-1, 10] out."""
    return _metadata(catalog, catalog.resolve(name, identity=identity))


@router.get("/{name:segment}/versions/{version:segment}/metadata")
def version_metadata(
    catalog: CatalogDep, identity: IdentityDep, name: Name, version: Version
) -> dict[str, Any]:
    """The serving signature of one version of the model."""
    return _metadata(catalog, catalog.resolve(name, version, identity=identity))


@router.post("/{name:segment}:predict")
def predict(catalog: CatalogDep, identity: IdentityDep, name: Name, body: BodyDep) -> JSONResponse:
    """Rows (`instances` → `predictions`) or columns (`inputs` → `outputs`) of probabilities."""
    return _predict(catalog, body, name=name, version=None, identity=identity)


@router.post("/{name:segment}/versions/{version:segment}:predict")
def version_predict(
    catalog: CatalogDep, identity: IdentityDep, name: Name, version: Version, body: BodyDep
) -> JSONResponse:
    """Predict with one version of the model; another version than its job id is a 404."""
    return _predict(catalog, body, name=name, version=version, identity=identity)


def _metadata(catalog: Catalog, ref: ModelRef) -> dict[str, Any]:
    return tfserving.model_metadata(ref, catalog.input_shape(ref),
                                    classes=len(catalog.signature(ref).classes))


def _predict(
    catalog: Catalog, body: bytes, *, name: str, version: str | None, identity: Identity
) -> JSONResponse:
    ref = catalog.resolve(name, version, identity=identity)
    call = tfserving.parse_predict(body, catalog.signature(ref))
    probabilities = catalog.predict(ref, call.images)
    # A ready response: FastAPI would validate a returned dict again, in one more thread hop.
    return JSONResponse(tfserving.predict_response(probabilities, columnar=call.columnar))


@router.post("/{name:segment}:{verb}", include_in_schema=False)
@router.post("/{name:segment}/versions/{version:segment}:{verb}", include_in_schema=False)
def other_verb(name: str, verb: str, version: str | None = None) -> JSONResponse:
    """TF Serving's other verbs: this model has only the predict signature."""
    if verb in ("classify", "regress"):
        return error_response(router.prefix, 400,
                              f"model '{name}' has no {verb} signature; it serves :predict")
    return error_response(router.prefix, 404, f"Malformed request: POST /v1/models/{name}:{verb}")
