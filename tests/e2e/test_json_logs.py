"""TAPEFIT_LOG_FORMAT=json: a real `tapefit serve` and its worker process write one JSON object
per line (uvicorn's lines included), and every worker line about a job carries its id."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from benchmarks.server import start_serve
from service.observability.logs import JobIdFilter, JsonFormatter, job_context
from tests.helpers.processes import wait_until
from tests.helpers.settings import SAMPLE

QUICK = {"epochs": 1, "batch_size": 64, "dataset": {"train_limit": 256, "test_limit": 128}}
FIELDS = {"time", "level", "logger", "message", "pid"}


def test_serve_and_its_worker_log_json_lines_with_the_job_id(tmp_path: Path) -> None:
    env = {**os.environ, "TAPEFIT_DATA_DIR": str(tmp_path / "data"),
           "TAPEFIT_MNIST_PATH": str(SAMPLE), "TAPEFIT_LOG_FORMAT": "json"}
    env.pop("TAPEFIT_DATABASE_URL", None)
    log_path = tmp_path / "serve.log"
    process, url = start_serve("--workers", "1", env=env, log_path=log_path)
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            job_id = client.post("/jobs", json=QUICK).json()["id"]

            def final() -> bool:
                return client.get(f"/jobs/{job_id}").json()["state"] not in {"queued",
                                                                               "running"}

            wait_until(final, 120, f"job {job_id} to end")
            assert client.get(f"/jobs/{job_id}").json()["state"] == "succeeded"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=40) == 0, log_path.read_text()

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    for line in lines:
        assert FIELDS <= set(line), line
        assert line["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}

    # The API's own lines, uvicorn's among them: its start and an access line, with fields.
    api_pid = process.pid
    assert any(line["logger"] == "uvicorn.error" and "Uvicorn running on" in line["message"]
               for line in lines)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert any(line["method"] == "POST" and line["path"] == "/jobs" and line["status"] == 201
               for line in access), access
    assert all(line["pid"] == api_pid for line in access)

    # The worker's: every line that names the job carries its id, and some name it.
    worker = [line for line in lines if line["logger"] == "tapefit.worker"]
    about_the_job = [line for line in worker
                     if re.search(rf"\bjob {job_id}\b", line["message"])]
    assert len(about_the_job) >= 2, worker  # claimed, succeeded
    assert all(line.get("job_id") == job_id for line in about_the_job), about_the_job
    assert any(line["pid"] != api_pid for line in about_the_job)  # its own process
    # Lines about no job (the worker starting) carry none.
    assert all("job_id" not in line for line in worker if "ready" in line["message"])


def test_the_job_id_reaches_threads_started_in_the_job_and_exceptions_stay_one_line() -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Collect()
    handler.addFilter(JobIdFilter())
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("tapefit.test.json")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        with job_context(41):
            log.info("in the job")
            thread = threading.Thread(target=contextvars.copy_context().run,
                                      args=(log.info, "from its thread"))
            thread.start()
            thread.join()
        log.info("after it")
        log.warning("told by extra", extra={"job_id": 7})
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            log.exception("failed with %s", {"a": 1})
    finally:
        log.removeHandler(handler)
    parsed = [json.loads(record) for record in records]
    assert all("\n" not in record for record in records)
    assert [line.get("job_id") for line in parsed] == [41, 41, None, 7, None]
    assert parsed[-1]["message"] == "failed with {'a': 1}"
    assert "ValueError: boom" in parsed[-1]["exception"]
    assert parsed[0]["pid"] == os.getpid() and parsed[0]["logger"] == "tapefit.test.json"


NATIVE = """
import os, sys
from service.observability.logs import configure_logging
configure_logging("json")
os.write(2, b"I0000 00:00:1.5   42 port.cc:153] a native runtime's notice\\n")
os.write(2, b"WARNING: All log messages before absl::InitializeLog() are on STDERR\\n")
os.write(2, b'{"already": "json"}\\n')
print("a bare print to stderr", file=sys.stderr)
raise RuntimeError("not caught")
"""


def test_whatever_reaches_stderr_becomes_json_lines(tmp_path: Path) -> None:
    # Native code writes to descriptor 2 past Python's logging, as TensorFlow and LiteRT do.
    result = subprocess.run([sys.executable, "-c", NATIVE], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    # The pipe's lines come through a thread: their order against direct records may vary.
    by_message = {line.get("message"): line for line in lines}
    assert len(lines) == 5, lines
    notice = by_message["I0000 00:00:1.5   42 port.cc:153] a native runtime's notice"]
    assert (notice["level"], notice["logger"]) == ("INFO", "stderr")
    absl = by_message["WARNING: All log messages before absl::InitializeLog() are on STDERR"]
    assert (absl["level"], absl["logger"]) == ("WARNING", "stderr")
    assert {"already": "json"} in lines  # a child's JSON line passes unchanged
    assert by_message["a bare print to stderr"]["logger"] == "stderr"
    uncaught = by_message["uncaught RuntimeError: not caught"]
    assert uncaught["level"] == "CRITICAL" and "RuntimeError: not caught" in uncaught[
        "exception"]
