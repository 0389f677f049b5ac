"""Ask a trained job's model for predictions, as JSON instances or an uploaded image; download
it. An MNIST model reads digits; a model of an uploaded dataset reads that dataset's inputs
(raw feature rows, or pixels in [0, 1]) and answers in its labels
(service/serving/signatures.py).

`{job_id}` is a job id or an alias, `latest` or `best` (see service/serving/catalog.py).

Decoding an image within the limits costs up to about 180 MB (see service/serving/imaging.py), so at
most TAPEFIT_MAX_CONCURRENT_DECODES run at once, in the thread pool; an upload that finds no
turn within DECODE_WAIT seconds is answered 503 with Retry-After. The wait holds no thread.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State, UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message

from service.api.deps import IdentityDep
from service.api.responses import ErrorRead, errors
from service.api.serving_deps import CatalogDep, body_limit, read_capped
from service.schemas import ExplainedPrediction, ExplainedPredictResponse, PredictRequest
from service.serving import imaging, tensors
from service.serving.catalog import Catalog
from service.serving.signatures import Signature, check_inputs
from service.serving.store import BadInput, ModelBusy, as_numbers
from service.tenancy.identity import Identity

router = APIRouter(prefix="/jobs/{job_id}", tags=["predict"])

# Room for the multipart boundaries and part headers around a file at the size limit.
_FORM_OVERHEAD = 64 * 1024
# A JSON body up to this size (about ten images) whose model is in memory is answered on the
# event loop: parsing it and running the model take less time than handing the request to
# a worker thread and back, the one thing a prediction by id then cost beyond /healthz.
INLINE_BYTES = 64 * 1024
# Seconds an upload waits for a free decode slot before it is refused with 503.
DECODE_WAIT = 2.0
RETRY_AFTER = 1

_RESPONSES = {
    **errors(404, 409, 413, 415),
    503: {
        "model": ErrorRead,
        "description": "Every image decode slot is busy (TAPEFIT_MAX_CONCURRENT_DECODES), or "
        "the database is; retry after Retry-After seconds",
    },
}

_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "additionalProperties": False,
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "a PNG or JPEG of one digit, at most 5 MB, "
                            "4096x4096 pixels and 64 MiB decoded (by default)",
                        }
                    },
                }
            },
        },
    }
}


async def read_input(
    request: Request, identity: IdentityDep, job_id: str
) -> bytes | np.ndarray:
    """The JSON body (parsed by the route, in its thread, once it knows the model:
    `read_instances`), or the image uploaded as the form field `file`, read as the model
    reads images: a digit for MNIST, resized to its dataset's shape otherwise."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _read_image(request, await _read_upload(request), job_id, identity)
    return await read_capped(request, body_limit(request))


def read_instances(body: bytes) -> np.ndarray:
    """A JSON body's images as a (N, 784) float32 batch: straight to numpy when the body is
    plainly valid (service/serving/tensors.py), else through the schema, whose errors make
    the 422."""
    images = tensors.plain_instances(body)
    if images is not None:
        return images
    try:
        payload = PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    return np.array([np.ravel(instance) for instance in payload.instances], np.float32)


def dataset_instances(body: bytes, signature: Signature) -> np.ndarray:
    """A JSON body's instances for the model of an uploaded dataset: its raw feature rows,
    or its images' pixels in [0, 1], checked (BadInput, a 422, says what it takes)."""
    try:
        request = tensors.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadInput(f"the body is not JSON: {exc}") from None
    if not isinstance(request, dict) or set(request) != {"instances"}:
        raise BadInput('send {"instances": [...]}: one list of input values per instance')
    return check_inputs(as_numbers(request["instances"]), signature)


async def _read_upload(request: Request) -> bytes:
    body = await read_capped(request, imaging.MAX_UPLOAD_BYTES + _FORM_OVERHEAD)

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    # The body is already read (and capped); the form parser reads it again from memory.
    try:
        async with Request(request.scope, replay).form(max_files=1, max_fields=8) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise imaging.ImageError("send the image as a multipart file field named 'file'")
            return await upload.read()
    except HTTPException as exc:  # Starlette's word on a malformed form: invalid input to us
        raise imaging.ImageError(f"the multipart form could not be read: {exc.detail}") from None


async def _read_image(
    request: Request, data: bytes, job_id: str, identity: Identity
) -> np.ndarray:
    settings = request.app.state.settings
    slots = _decode_slots(request.app.state, settings.max_concurrent_decodes)
    try:
        async with asyncio.timeout(DECODE_WAIT):
            await slots.acquire()
    except TimeoutError:
        raise HTTPException(
            503,
            "every image decode slot is busy "
            f"(TAPEFIT_MAX_CONCURRENT_DECODES={settings.max_concurrent_decodes}); "
            f"retry in {RETRY_AFTER} s",
            headers={"Retry-After": str(RETRY_AFTER)},
        ) from None
    try:
        return await run_in_threadpool(
            _decode, request.app.state.catalog, job_id, identity, data,
            settings.max_decoded_image_bytes,
        )
    finally:
        slots.release()


def _decode(
    catalog: Catalog, job_id: str, identity: Identity, data: bytes, max_decoded_bytes: int
) -> np.ndarray:
    """The upload as the model reads images: a digit centred as MNIST's (28, 28), or the
    image resized to its dataset's (height, width, channels)."""
    signature = catalog.signature(catalog.resolve(job_id, identity=identity))
    if signature.mnist:
        return imaging.mnist_like(data, max_decoded_bytes=max_decoded_bytes)
    if signature.kind != "image":
        raise imaging.ImageError(
            f"the model of job {job_id} reads rows of {signature.size} features (dataset "
            f"'{signature.dataset}'), not images: send JSON {{\"instances\": [...]}}"
        )
    return imaging.dataset_image(data, signature.sample_shape,
                                 max_decoded_bytes=max_decoded_bytes)


def _decode_slots(state: State, size: int) -> asyncio.Semaphore:
    # Made on first use: an asyncio.Semaphore belongs to the event loop that first waits on
    # it, and an app may be served by another loop later (each TestClient has its own).
    loop = asyncio.get_running_loop()
    slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = getattr(
        state, "decode_slots", None
    )
    if slots is None or slots[0] is not loop:
        slots = state.decode_slots = (loop, asyncio.Semaphore(size))
    return slots[1]


InputDep = Annotated[bytes | np.ndarray, Depends(read_input)]


@router.post(
    "/predict",
    response_model=ExplainedPredictResponse,
    openapi_extra=_BODY,
    responses=_RESPONSES,
)
async def predict(
    catalog: CatalogDep, identity: IdentityDep, job_id: str, payload: InputDep,
    explain: bool = False,
) -> Response:
    """Each instance's label, class and probabilities (one per class): for JSON instances
    (MNIST: images in [0, 1]; an uploaded dataset's: its raw feature rows, or pixels in
    [0, 1]) or an uploaded PNG/JPEG. MNIST models add the digit."""
    if (isinstance(payload, bytes) and len(payload) <= INLINE_BYTES
            and catalog.in_memory(job_id, identity=identity)):
        try:
            return _predict(catalog, identity, job_id, payload, explain, wait=False)
        except ModelBusy:
            pass  # its interpreter is serving another request: wait for it in a thread
    return await run_in_threadpool(_predict, catalog, identity, job_id, payload, explain)


def _predict(
    catalog: Catalog, identity: Identity, job_id: str, payload: bytes | np.ndarray,
    explain: bool, wait: bool = True,
) -> Response:
    # The model first: what a valid body is depends on the dataset it was trained on.
    model = catalog.resolve(job_id, identity=identity)
    signature = catalog.signature(model)
    if isinstance(payload, bytes):
        images = (read_instances(payload) if signature.mnist
                  else dataset_instances(payload, signature))
        return _response(catalog.predict(model, images, wait=wait), signature)
    return _response(catalog.predict(model, payload, wait=wait), signature,
                     seen=payload if explain else None)


def _response(
    probabilities: np.ndarray, signature: Signature, seen: np.ndarray | None = None
) -> Response:
    # A ready Response: FastAPI would otherwise validate the response model again, in one
    # more thread hop than the prediction itself costs.
    if seen is not None and seen.ndim == 3 and seen.shape[2] == 1:
        seen = seen[..., 0]  # a gray image as rows of pixels, as MNIST's
    image = seen.tolist() if seen is not None else None
    predictions = []
    for row in probabilities:
        best = int(np.argmax(row))
        predictions.append(ExplainedPrediction(
            label=signature.classes[best], class_=best,
            digit=best if signature.mnist else None, probabilities=row.tolist(), image=image,
        ))
    response = ExplainedPredictResponse(predictions=predictions)
    return Response(response.model_dump_json(exclude_none=True), media_type="application/json")


@router.get("/model", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}, **errors(404, 409)})
def download_model(catalog: CatalogDep, identity: IdentityDep, job_id: str) -> Response:
    """The trained model as a .tflite file, for LiteRT or TensorFlow Lite."""
    model = catalog.resolve(job_id, identity=identity)
    return Response(
        catalog.content(model),
        media_type="application/octet-stream",
        headers={"Content-Disposition":
                 f'attachment; filename="tapefit-job-{model.job_id}.tflite"'},
    )
