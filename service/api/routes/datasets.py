"""Upload, list, read and delete datasets (service/datasets/). `{dataset_id}` is an id or
`mnist`, the built-in one."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from service.api.deps import SessionDep, TrainerDep, WriteSessionDep
from service.api.responses import errors
from service.datasets import builtin, ingest, storage
from service.datasets.errors import DatasetConflict, DatasetNotFound
from service.datasets.schemas import (
    BUILTIN,
    DatasetDetail,
    DatasetSamples,
    DatasetsRead,
    UploadForm,
)
from service.ids import PATTERN, parse_id

router = APIRouter(prefix="/datasets", tags=["datasets"])

_FORM = UploadForm.model_json_schema()
_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "additionalProperties": False,
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "an .npz (arrays), a .csv (a table with a header "
                            "row) or a .zip (a folder per class of PNG/JPEG images, "
                            "optionally under train/ and test/); at most 200 MB by default",
                        },
                        **{name: {"type": "string", "description": field.get("description", "")}
                           for name, field in _FORM["properties"].items()},
                    },
                }
            }
        },
    }
}

DatasetId = Annotated[
    str,
    Path(description="a dataset's id, or mnist",
         json_schema_extra={"pattern": f"^({PATTERN}|{BUILTIN})$"}),
]


def _parse(dataset_id: str) -> int | None:
    """The id, None for mnist; DatasetNotFound for anything else (404, not 422)."""
    if dataset_id == BUILTIN:
        return None
    parsed = parse_id(dataset_id)
    if parsed is None:
        raise DatasetNotFound(dataset_id[:40])
    return parsed


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetDetail,
    openapi_extra=_BODY,
    responses=errors(403, 413, 415, 422, 503),
)
async def upload_dataset(
    identity: TrainerDep, request: Request, response: Response
) -> DatasetDetail:
    """Upload a dataset (multipart `file`: .npz, .csv or .zip of class folders); 201 once
    it is checked, split and stored."""
    settings = request.app.state.settings
    async with ingest.receiving(request.stream(), settings=settings,
                                content_type=request.headers.get("content-type", "")) as upload:
        try:
            form = UploadForm.model_validate(upload.fields)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**error, "loc": ("body", *error["loc"])}
                 for error in exc.errors(include_url=False, include_context=False)]
            ) from None
        dataset = await run_in_threadpool(
            ingest.create, database=request.app.state.database, settings=settings,
            upload=upload, form=form,
        )
    response.headers["Location"] = f"/datasets/{dataset.id}"
    return storage.describe(dataset, detail=True)


@router.get("", response_model=DatasetsRead)
def list_datasets(
    request: Request,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> DatasetsRead:
    """Datasets: the built-in mnist first, then the uploaded ones, newest first."""
    return storage.page(session=session, mnist_path=request.app.state.settings.mnist_path,
                        limit=limit, offset=offset)


@router.get("/{dataset_id}", response_model=DatasetDetail, responses=errors(404))
def read_dataset(request: Request, session: SessionDep, dataset_id: DatasetId) -> DatasetDetail:
    """One dataset: its shape, classes, counts and preprocessing."""
    parsed = _parse(dataset_id)
    if parsed is None:
        return builtin.mnist(request.app.state.settings.mnist_path)
    return storage.describe(storage.get(session=session, dataset_id=parsed), detail=True)


@router.get("/{dataset_id}/samples", response_model=DatasetSamples, responses=errors(404))
def dataset_samples(session: SessionDep, dataset_id: DatasetId) -> DatasetSamples:
    """A few training images of an image dataset (404 for a tabular one)."""
    parsed = _parse(dataset_id)
    found = None if parsed is None else storage.samples(session=session, dataset_id=parsed)
    if found is None:
        raise DatasetNotFound(dataset_id, f"dataset {dataset_id} has no sample images (it "
                              "is tabular, or built in)")
    pixels, classes = found
    names = storage.get(session=session, dataset_id=parsed).classes
    return DatasetSamples(
        shape=list(pixels.shape), classes=classes.tolist(),
        labels=[names[i] for i in classes.tolist()],
        pixels=base64.b64encode(pixels.tobytes()).decode(),
    )


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses=errors(403, 404, 409, 503))
def delete_dataset(
    identity: TrainerDep, session: WriteSessionDep, dataset_id: DatasetId
) -> Response:
    """Delete a dataset (409 while a queued or running job uses it)."""
    parsed = _parse(dataset_id)
    if parsed is None:
        raise DatasetConflict("the built-in mnist cannot be deleted")
    storage.delete(session=session, dataset_id=parsed)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
