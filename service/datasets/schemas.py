"""What the datasets routes accept (the upload form's fields) and return."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from service.datasets.prepare import MAX_SIDE, MIN_SIDE
from service.schemas import Strict

BUILTIN = "mnist"


class Color(StrEnum):
    grayscale = "grayscale"
    rgb = "rgb"


class UploadForm(Strict):
    """The form fields beside the file of `POST /datasets` (all optional)."""

    name: str | None = Field(default=None, min_length=1, max_length=100,
                             description="default: the file's name without its extension")
    label_column: str = Field(default="label", min_length=1, max_length=200,
                              description="CSV: the column holding the labels")
    test_fraction: float = Field(
        default=0.2, gt=0, le=0.9,
        description="the share of each class held out for testing, when the file has no "
        "test split (seeded and stratified)",
    )
    image_size: str | None = Field(
        default=None, pattern=r"^[0-9]{1,4}x[0-9]{1,4}$",
        description="image folders: HxW to resize every image to; default the most common "
        "size",
    )
    color: Color | None = Field(
        default=None, description="image folders: default grayscale unless an image has colour"
    )

    @field_validator("name")
    @classmethod
    def _printable(cls, name: str | None) -> str | None:
        if name is None:
            return None
        name = name.strip()
        if not name or any(unicodedata.category(c).startswith("C") for c in name):
            raise ValueError("a name is printable text")
        if name.lower() == BUILTIN:
            raise ValueError(f"'{BUILTIN}' is the built-in dataset's name")
        return name

    @field_validator("label_column")
    @classmethod
    def _stripped(cls, column: str) -> str:
        return column.strip() or column

    @field_validator("image_size")
    @classmethod
    def _sides(cls, size: str | None) -> str | None:
        if size is not None and not all(MIN_SIDE <= int(side) <= MAX_SIDE
                                        for side in size.split("x")):
            raise ValueError(f"each side of image_size must be {MIN_SIDE} to {MAX_SIDE}")
        return size

    def size(self) -> tuple[int, int] | None:
        """image_size as (height, width)."""
        if self.image_size is None:
            return None
        height, width = self.image_size.split("x")
        return int(height), int(width)


class DatasetRead(BaseModel):
    """A dataset: uploaded, or the built-in MNIST (`builtin`, no id)."""

    id: int | None = Field(description="null for the built-in mnist")
    name: str
    builtin: bool = False
    format: Literal["npz", "csv", "images"] | None = Field(
        description="what was uploaded; null for the built-in mnist")
    kind: Literal["image", "tabular"]
    input_shape: list[int] = Field(description="one sample's shape: [features] or [H, W, C]")
    classes: list[str] = Field(description="the class names; a label's class is its index")
    train_count: int | None
    test_count: int | None
    bytes: int | None = Field(description="the stored .npz's size")
    sha256: str | None = Field(description="the stored .npz's hash; workers check their copy")
    source_name: str | None = Field(default=None, description="the uploaded file's name")
    created_at: datetime | None


class DatasetDetail(DatasetRead):
    preprocessing: dict[str, Any] | None = Field(
        default=None,
        description="how inputs are prepared: {standardize: {mean, std}} (the training "
        "split's, per feature) or {scale} for pixels",
    )


class DatasetsRead(BaseModel):
    items: list[DatasetRead]
    total: int
    limit: int
    offset: int


class DatasetSamples(BaseModel):
    """A few training images of an image dataset, for a preview."""

    shape: list[int] = Field(description="[k, height, width, channels]")
    classes: list[int] = Field(description="each image's class index")
    labels: list[str] = Field(description="each image's class name")
    pixels: str = Field(description="the uint8 pixels, row-major, base64")
