"""Receiving a dataset upload: the multipart body is parsed as it streams in, the file part
written straight to a file in a folder of the data dir's disk (never held in memory), and the
few small form fields kept beside it.

Bounded: the file at `max_bytes`, each field at MAX_FIELD_BYTES, the form at MAX_PARTS parts,
each part's headers by the parser's own limits. A body that ends before its closing boundary
is refused: a cut-off upload is never taken for a whole one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.datasets.errors import DatasetError, DatasetTooLarge, NotMultipart
from service.files import NO_SPACE, DiskFull

FILE_FIELD = "file"
MAX_FIELD_BYTES = 1024
MAX_PARTS = 8
# Room for the boundaries and part headers around a file at the size limit.
FORM_OVERHEAD = 64 * 1024


@dataclass
class Upload:
    """A received upload: the file's bytes on disk, its name, and the form's other fields."""

    path: Path
    filename: str
    size: int
    fields: dict[str, str] = field(default_factory=dict)


def too_large(max_bytes: int) -> DatasetTooLarge:
    return DatasetTooLarge(
        f"the upload is over the limit of {max_bytes:,} bytes (TAPEFIT_MAX_DATASET_BYTES)"
    )


async def receive(
    chunks: AsyncIterator[bytes], *, content_type: str, folder: Path, max_bytes: int
) -> Upload:
    """Parse a multipart/form-data body from `chunks`, its file field `file` written to a file
    in `folder` (the caller removes the folder). DatasetError for a malformed form,
    DatasetTooLarge past `max_bytes`, NotMultipart for another media type."""
    media_type, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise NotMultipart(
            "send the dataset as multipart/form-data with the file in a field named 'file' "
            "(curl -F file=@data.csv)"
        )
    receiver = _Receiver(folder / "upload", max_bytes)
    parser = MultipartParser(boundary, receiver.callbacks())
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise DatasetError(f"the multipart form could not be read: {exc}") from None
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise DiskFull(exc.errno, "no space left for the upload") from exc
        raise
    finally:
        receiver.close()
    return receiver.result()


class _Receiver:
    """The parser's callbacks: one part at a time, the file part to disk."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path, self.max_bytes = path, max_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.parts = 0
        self.ended = False
        self._file: BinaryIO | None = None
        self._headers: dict[bytes, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self._name: str | None = None
        self._value = bytearray()
        self._in_file = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise DatasetError(f"the form has more than {MAX_PARTS} parts")
        self._headers, self._name, self._value, self._in_file = {}, None, bytearray(), False

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        disposition, options = parse_options_header(
            self._headers.get(b"content-disposition", b"")
        )
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise DatasetError("a part of the form has no Content-Disposition: form-data name")
        self._name = name.decode("utf-8", "replace")
        if self._name == FILE_FIELD:
            if self._file is not None or self.filename is not None:
                raise DatasetError("send one file: the form has more than one 'file' field")
            raw = options.get(b"filename", b"").decode("utf-8", "replace")
            # Only the last component: a browser or client may send a path.
            self.filename = PureWindowsPath(raw).name[:255] or "upload"
            self._file = self.path.open("wb")
            self._in_file = True
        elif self._name in self.fields:
            raise DatasetError(f"the form field '{self._name}' is given twice")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.size += end - start
            if self.size > self.max_bytes:
                raise too_large(self.max_bytes)
            self._file.write(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise DatasetError(
                f"the form field '{self._name}' is over {MAX_FIELD_BYTES:,} bytes"
            )

    def _part_end(self) -> None:
        if self._in_file:
            self._file.close()
            self._in_file = False
            return
        try:
            self.fields[self._name] = self._value.decode("utf-8")
        except UnicodeDecodeError:
            raise DatasetError(f"the form field '{self._name}' is not UTF-8 text") from None

    def _end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def result(self) -> Upload:
        if not self.ended:
            raise DatasetError("the multipart form ended before its closing boundary")
        if self.filename is None:
            raise DatasetError("send the dataset as a multipart file field named 'file'")
        if self.size == 0:
            raise DatasetError(f"the file {self.filename!r} is empty")
        return Upload(path=self.path, filename=self.filename, size=self.size,
                      fields=self.fields)
