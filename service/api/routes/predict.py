"""Ask a trained job's model to read digits, as JSON pixels or an uploaded image; download it.

`{job_id}` is a job id or an alias, `latest` or `best` (see service/serving.py).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message

from service import imaging
from service.api.responses import errors
from service.api.serving_deps import MAX_BODY_BYTES, CatalogDep, read_capped
from service.schemas import ExplainedPrediction, ExplainedPredictResponse, PredictRequest

router = APIRouter(prefix="/jobs/{job_id}", tags=["predict"])

# Room for the multipart boundaries and part headers around a file at the size limit.
_FORM_OVERHEAD = 64 * 1024

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
                            "description": "a PNG or JPEG of one digit, at most 5 MB and "
                            "4096x4096 pixels",
                        }
                    },
                }
            },
        },
    }
}


async def read_input(request: Request) -> PredictRequest | bytes:
    """The JSON instances, or the bytes of the image uploaded as the form field `file`."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _read_upload(request)
    try:
        return PredictRequest.model_validate_json(await read_capped(request, MAX_BODY_BYTES))
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


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


InputDep = Annotated[PredictRequest | bytes, Depends(read_input)]


@router.post(
    "/predict",
    response_model=ExplainedPredictResponse,
    openapi_extra=_BODY,
    responses=errors(404, 409, 413, 415),
)
def predict(
    catalog: CatalogDep, job_id: str, payload: InputDep, explain: bool = False
) -> Response:
    """Digits and 10 probabilities for JSON images in [0, 1] or an uploaded PNG/JPEG digit."""
    model = catalog.resolve(job_id)
    if isinstance(payload, PredictRequest):
        images = np.array([np.ravel(instance) for instance in payload.instances], np.float32)
        return _response(catalog.predict(model, images))
    image = imaging.mnist_like(payload)
    return _response(catalog.predict(model, image), seen=image if explain else None)


def _response(probabilities: np.ndarray, seen: np.ndarray | None = None) -> Response:
    # A ready Response: FastAPI would otherwise validate the response model again, in one
    # more thread hop than the prediction itself costs.
    image = seen.tolist() if seen is not None else None
    response = ExplainedPredictResponse(
        predictions=[
            ExplainedPrediction(
                digit=int(np.argmax(row)), probabilities=row.tolist(), image=image
            )
            for row in probabilities
        ]
    )
    return Response(response.model_dump_json(exclude_none=True), media_type="application/json")


@router.get("/model", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}, **errors(404, 409)})
def download_model(catalog: CatalogDep, job_id: str) -> FileResponse:
    """The trained model as a .tflite file, for LiteRT or TensorFlow Lite."""
    model = catalog.resolve(job_id)
    return FileResponse(
        catalog.artifact(model),
        media_type="application/octet-stream",
        filename=f"tapefit-job-{model.job_id}.tflite",
    )
