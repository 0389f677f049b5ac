"""The log format of every tapefit process: `text` (one readable line) or `json` (one JSON
object per line, for a log collector), chosen by TAPEFIT_LOG_FORMAT.

A worker runs its jobs inside `job_context(job_id)`: every line logged meanwhile, by tapefit,
TensorFlow or a library, carries that `job_id` (its heartbeat thread runs in a copy of the
context, so its lines do too). A line about one job logged outside it (the sweeper moving a
job) passes `extra={"job_id": ...}`.

Only the standard library here: the worker imports this module and nothing else of the room.
"""

from __future__ import annotations

import atexit
import contextvars
import faulthandler
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(name)s %(message)s"

_job_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("tapefit_job_id", default=None)

# uvicorn's access line: (client address, method, path, HTTP version, status).
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


@contextmanager
def job_context(job_id: int) -> Iterator[None]:
    """Tag every log line of this context (and of threads started in a copy of it) with
    `job_id`."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


class JobIdFilter(logging.Filter):
    """Sets `record.job_id` from the job context, unless the call passed one in `extra`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = _job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, pid, and
    job_id when the line concerns a job; the traceback of an exception as `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            line["job_id"] = job_id
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(
            record.args
        ) == len(_ACCESS_FIELDS):
            line.update(zip(_ACCESS_FIELDS, record.args, strict=True))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a message argument that JSON cannot hold is written as its str().
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(log_format: LogFormat, level: int = logging.INFO) -> None:
    """Log every logger's records to stderr in `log_format`, replacing any handler the root
    logger had. uvicorn's loggers follow when the server is started with log_config=None.

    In `json`, whatever else reaches stderr becomes JSON too: see `_stderr_as_records`."""
    if log_format == "json":
        handler = logging.StreamHandler(_stderr_as_records())
        handler.setFormatter(JsonFormatter())
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(JobIdFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if log_format == "json":
        logging.captureWarnings(True)  # Python's warnings as records too, not bare text
        sys.excepthook = _log_uncaught
        threading.excepthook = lambda args: _log_uncaught(
            args.exc_type, args.exc_value, args.exc_traceback  # type: ignore[arg-type]
        )


# Native code's log lines: glog's "I0000 00:00:..." (TensorFlow, LiteRT) or "LEVEL: ...".
_NATIVE_LEVEL = re.compile(r"^(?:([IWEF])\d{4} |(INFO|WARNING|ERROR|FATAL): )")
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL,
           "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
           "FATAL": logging.CRITICAL}


def _stderr_as_records() -> TextIO:
    """Make every line written to this process's stderr a JSON line, and return the stream
    the log handler writes to (the real stderr).

    TensorFlow's and LiteRT's native runtimes write to file descriptor 2 themselves, past
    Python's logging (TensorFlow's notice at import, LiteRT's XNNPACK line at the first
    model), and so would a print to sys.stderr. Descriptor 2 becomes a pipe; a thread reads
    it and logs each line as a record of the `stderr` logger, at the level its prefix gives.
    A line that is already a JSON object (a worker process started by `tapefit serve`
    inherits the pipe, and writes its own JSON lines) passes unchanged. At exit the pipe is
    drained and descriptor 2 restored. A fatal error's traceback (faulthandler) goes straight
    to the real stderr, as text: the thread would die with the process before reading it."""
    sys.stderr.flush()
    real = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    faulthandler.enable(file=real)
    log = logging.getLogger("stderr")

    def pump() -> None:
        with os.fdopen(read_end, encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if line.startswith("{") and _is_json_object(line):
                    real.write(line + "\n")
                    continue
                prefix = _NATIVE_LEVEL.match(line)
                level = _LEVELS[prefix.group(1) or prefix.group(2)] if prefix else logging.INFO
                log.log(level, "%s", line)

    thread = threading.Thread(target=pump, name="stderr-to-json", daemon=True)
    thread.start()

    def drain() -> None:
        sys.stderr.flush()
        os.dup2(real.fileno(), 2)  # closes the pipe's last write end: the thread reads EOF
        thread.join(timeout=2)

    atexit.register(drain)
    return real


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """An uncaught exception as one JSON record with its traceback, not bare lines."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("tapefit").critical("uncaught %s: %s", exc_type.__name__, exc,
                                          exc_info=(exc_type, exc, tb))
