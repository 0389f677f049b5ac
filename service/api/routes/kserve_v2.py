"""KServe's V2 protocol (the Open Inference Protocol): health, metadata and inference, with
the binary tensor data extension. A model's name is a job id, `latest` or `best`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from service.api.deps import IdentityDep, Name, Version
from service.api.responses import protocol_errors
from service.api.serving_deps import BodyDep, CatalogDep
from service.serving import kserve_v2 as open_inference
from service.serving.catalog import Catalog, ModelRef
from service.tenancy.identity import Identity

router = APIRouter(
    prefix="/v2",
    tags=["kserve v2"],
    responses=protocol_errors(400, 404, 413),
)

HeaderLength = Annotated[
    str | None, Header(alias=open_inference.HEADER_LENGTH, description="binary tensor data")
]


@router.get("")
def server_metadata(request: Request) -> dict[str, Any]:
    """The server's name, version and protocol extensions."""
    app = request.app
    return {"name": app.title, "version": app.version, "extensions": open_inference.EXTENSIONS}


@router.get("/health/live")
def live() -> dict[str, bool]:
    """Liveness: the process answers."""
    return {"live": True}


@router.get("/health/ready")
def ready(catalog: CatalogDep) -> dict[str, bool]:
    """Readiness: the database answers, so models can be found and served."""
    return {"ready": catalog.database_ready()}


@router.get("/models")
def list_models(catalog: CatalogDep, identity: IdentityDep) -> dict[str, list[str]]:
    """The servable models: succeeded jobs' ids, newest first, then `latest` and `best`."""
    return {"models": catalog.names(identity=identity)}


@router.get("/models/{name}")
def model_metadata(catalog: CatalogDep, identity: IdentityDep, name: Name) -> dict[str, Any]:
    """The model's version, its FP32 input in its own shape ([-1, 784], or [-1, 28, 28, 1]
    for a convnet) and its outputs."""
    return _metadata(catalog, catalog.resolve(name, identity=identity))


@router.get("/models/{name}/versions/{version}")
def version_metadata(
    catalog: CatalogDep, identity: IdentityDep, name: Name, version: Version
) -> dict[str, Any]:
    """One version's metadata; the version is the job id."""
    ref = catalog.resolve(name, version, identity=identity)
    return _metadata(catalog, ref)


@router.get("/models/{name}/ready")
def model_ready(catalog: CatalogDep, identity: IdentityDep, name: Name) -> dict[str, Any]:
    """200 with ready true once trained; 400 while the job is not, 404 for an unknown name."""
    ref = catalog.resolve(name, identity=identity)
    return {"name": ref.name, "ready": True}


@router.get("/models/{name}/versions/{version}/ready")
def version_ready(
    catalog: CatalogDep, identity: IdentityDep, name: Name, version: Version
) -> dict[str, Any]:
    """Readiness of one version of the model."""
    ref = catalog.resolve(name, version, identity=identity)
    return {"name": ref.name, "ready": True}


@router.post("/models/{name}/infer")
def infer(
    catalog: CatalogDep, identity: IdentityDep, name: Name, body: BodyDep,
    length: HeaderLength = None,
) -> Response:
    """Probabilities (and the digit when asked) for FP32 [N, 784], [N, 28, 28] or
    [N, 28, 28, 1] images."""
    return _infer(catalog, body, length, name=name, version=None, identity=identity)


@router.post("/models/{name}/versions/{version}/infer")
def version_infer(
    catalog: CatalogDep, identity: IdentityDep, name: Name, version: Version, body: BodyDep,
    length: HeaderLength = None,
) -> Response:
    """Inference with one version of the model; another version than its job id is a 404."""
    return _infer(catalog, body, length, name=name, version=version, identity=identity)


def _metadata(catalog: Catalog, ref: ModelRef) -> dict[str, Any]:
    return open_inference.model_metadata(ref, catalog.input_shape(ref), catalog.signature(ref))


def _infer(
    catalog: Catalog, body: bytes, length: str | None, *,
    name: str, version: str | None, identity: Identity,
) -> Response:
    ref = catalog.resolve(name, version, identity=identity)
    call = open_inference.parse_infer(body, length, catalog.signature(ref))
    probabilities = catalog.predict(ref, call.images)
    content, headers = open_inference.infer_response(ref, call, probabilities)
    return Response(content, headers=headers)
