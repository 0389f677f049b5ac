"""Opening an uploaded zip (an image-folder dataset, or an .npz, which is a zip of .npy
arrays) without trusting it.

Before `zipfile` parses anything, the central directory is walked record by record straight
from the file, so an archive of millions of tiny entries is refused having cost a count, not a
`ZipInfo` each. Then every entry is checked before a byte is extracted: its name stays inside
the archive's folder (no `../`, no absolute path, no drive, no backslash), it is no symlink,
and the sizes the entries declare add up to at most the unpacked limit. `zipfile` never
inflates an entry past its declared size, so those sizes bound what extracting can cost: a
zip bomb is refused by its directory alone.
"""

from __future__ import annotations

import stat
import struct
import zipfile
from pathlib import Path, PurePosixPath

from service.datasets.errors import DatasetError, DatasetTooLarge

_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"
_CENTRAL_SIZE = 46
_EOCD_SIZE = 22
_MAX_COMMENT = 0xFFFF


def is_zip(path: Path) -> bool:
    """True when the file starts like a zip archive (a local header, or an empty archive)."""
    with path.open("rb") as file:
        return file.read(4) in (b"PK\x03\x04", _EOCD)


def open_zip(path: Path, *, what: str, max_entries: int, max_unpacked: int) -> zipfile.ZipFile:
    """The archive at `path`, its entries checked (see the module's docstring). `what` names
    the file in messages. DatasetError for a broken or unsafe archive, DatasetTooLarge past
    the limits."""
    count = count_entries(path, what=what)
    if count > max_entries:
        raise DatasetTooLarge(
            f"{what} has {count:,} entries; the limit is {max_entries:,} "
            "(TAPEFIT_MAX_DATASET_ENTRIES)"
        )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{what} is not a readable zip archive: {exc}") from None
    try:
        check_entries(archive, what=what, max_unpacked=max_unpacked)
    except BaseException:
        archive.close()
        raise
    return archive


def check_entries(archive: zipfile.ZipFile, *, what: str, max_unpacked: int) -> None:
    """Refuse unsafe names, symlinks, encrypted entries, and declared sizes past the limit."""
    total = 0
    for info in archive.infolist():
        name = info.filename
        if not safe_name(name):
            raise DatasetError(
                f"{what} holds an entry whose name leaves its folder: {name[:200]!r}"
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(f"{what} holds a symbolic link: {name[:200]!r}")
        if info.flag_bits & 0x1:
            raise DatasetError(f"{what} holds an encrypted entry: {name[:200]!r}")
        total += info.file_size
        if total > max_unpacked:
            raise DatasetTooLarge(
                f"{what} unpacks to more than {max_unpacked:,} bytes "
                "(TAPEFIT_MAX_DATASET_UNPACKED_BYTES)"
            )


def safe_name(name: str) -> bool:
    """True for a relative name that stays inside the archive's folder."""
    if not name or "\\" in name or "\0" in name or name.startswith("/"):
        return False
    path = PurePosixPath(name)
    first = path.parts[0] if path.parts else ""
    if len(first) >= 2 and first[1] == ":":  # a Windows drive: C:foo
        return False
    return ".." not in path.parts


def count_entries(path: Path, *, what: str) -> int:
    """The number of records in the zip's central directory, walked from the file one record
    at a time (nothing is kept). DatasetError when there is no directory to walk."""
    with path.open("rb") as file:
        file.seek(0, 2)
        size = file.tell()
        tail_start = max(0, size - _EOCD_SIZE - _MAX_COMMENT)
        file.seek(tail_start)
        tail = file.read()
        at = tail.rfind(_EOCD)
        if at < 0 or len(tail) - at < _EOCD_SIZE:
            raise DatasetError(f"{what} is not a zip archive (no end of central directory)")
        eocd_offset = tail_start + at
        directory_size, directory_offset = struct.unpack("<II", tail[at + 12 : at + 20])
        end = eocd_offset
        if directory_size == 0xFFFFFFFF or directory_offset == 0xFFFFFFFF:
            directory_size, end = _zip64_directory(file, eocd_offset, what)
        # As zipfile does: the directory ends where its end record starts, whatever the
        # offsets say (data may have been prepended to the archive).
        start = end - directory_size
        if start < 0:
            raise DatasetError(f"{what} is not a readable zip archive (bad directory size)")
        file.seek(start)
        count = 0
        while file.tell() < end:
            record = file.read(_CENTRAL_SIZE)
            if len(record) < _CENTRAL_SIZE or record[:4] != _CENTRAL:
                raise DatasetError(f"{what} is not a readable zip archive (bad directory)")
            name, extra, comment = struct.unpack("<HHH", record[28:34])
            file.seek(name + extra + comment, 1)
            count += 1
        return count


def _zip64_directory(file, eocd_offset: int, what: str) -> tuple[int, int]:  # noqa: ANN001
    """(directory size, where the directory ends) from a ZIP64 end record."""
    locator_offset = eocd_offset - 20
    if locator_offset < 0:
        raise DatasetError(f"{what} is not a readable zip archive (no ZIP64 locator)")
    file.seek(locator_offset)
    locator = file.read(20)
    if locator[:4] != _EOCD64_LOCATOR:
        raise DatasetError(f"{what} is not a readable zip archive (no ZIP64 locator)")
    record_offset = locator_offset - 56
    if record_offset < 0:
        raise DatasetError(f"{what} is not a readable zip archive (no ZIP64 end record)")
    file.seek(record_offset)
    record = file.read(56)
    if record[:4] != _EOCD64:
        raise DatasetError(f"{what} is not a readable zip archive (no ZIP64 end record)")
    (directory_size,) = struct.unpack("<Q", record[40:48])
    return directory_size, record_offset
