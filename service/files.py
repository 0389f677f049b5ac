"""Files the service writes: whole or not at all; and scratch folders that a killed process
cannot leak for good."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# The errors of a write that found no room: the disk is full, or the user's quota is.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """A file could not be written because its disk (or quota) is full."""


def write_atomically(path: Path, content: bytes) -> None:
    """Write `content` to `path` so that a reader (or a crash) never sees half of it:
    a temporary file in the same folder, flushed to disk, then renamed over `path`.
    Raises DiskFull, with nothing left behind, when the disk has no room for it."""
    try:
        _write_atomically(path, content)
    except OSError as exc:
        if exc.errno in NO_SPACE and not isinstance(exc, DiskFull):
            raise DiskFull(exc.errno, f"no space left to write {path.name}") from exc
        raise


def _write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            # mkstemp makes the file private; the API may run as another user of the group.
            os.fchmod(file.fileno(), 0o644)
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    # The rename is durable only once the directory entry is on disk.
    directory_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


# An owned folder's lock file. It is locked under a temporary name and then renamed, so a
# sweeper that finds `.lock` finds it locked for as long as its process lives.
_LOCK, _NEW_LOCK = ".lock", ".lock.new"
# How long a folder without a lock yet (made a moment ago, or by a process killed at once)
# is left alone.
UNLOCKED_GRACE_S = 60.0


@contextlib.contextmanager
def owned_folder(parent: Path, *, prefix: str) -> Iterator[Path]:
    """A new folder under `parent` for this process's temporary files, removed when the block
    ends, however it ends. It is locked while the block runs, so `sweep_abandoned` run by
    any process sharing `parent` leaves it alone; a process killed inside the block leaves
    the folder behind, unlocked, for the next sweep."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    fd = None
    try:
        fd = os.open(folder / _NEW_LOCK, os.O_CREAT | os.O_WRONLY, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel when the process dies
        os.rename(folder / _NEW_LOCK, folder / _LOCK)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # still locked: no sweeper races this
        if fd is not None:
            os.close(fd)


def sweep_abandoned(parent: Path, *, prefix: str) -> list[Path]:
    """Remove the folders named `prefix…` under `parent` that `owned_folder` made for a
    process that is gone: their lock is free. Folders of live processes, on this machine or
    another sharing the disk, are locked and kept. Returns the folders removed."""
    removed: list[Path] = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(prefix)]
    except FileNotFoundError:
        return removed
    for folder in candidates:
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:
            fd = os.open(folder / _LOCK, os.O_RDONLY)
        except FileNotFoundError:
            # Never locked: its process died right after making it, or is locking it now.
            with contextlib.suppress(FileNotFoundError):
                if time.time() - folder.stat().st_mtime >= UNLOCKED_GRACE_S:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
            continue
        except OSError:
            continue  # unreadable: not ours to judge
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # held: its process is alive (or locks are unsupported here)
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)  # holding the lock, as its owner would
            removed.append(folder)
        finally:
            os.close(fd)
    return removed
