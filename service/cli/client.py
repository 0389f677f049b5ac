"""A small HTTP client of the tapefit API, for the `tapefit` command (and scripts).

It talks to `TAPEFIT_URL` (default http://127.0.0.1:8000) and sends `Authorization: Bearer
$TAPEFIT_API_TOKEN` when that is set. Every failure is an `ApiError` with a one-line message:
the server's own (its 422 `message`, its `detail`), or what kept the request from arriving.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from service.schemas import FINAL_STATES

DEFAULT_URL = "http://127.0.0.1:8000"
# The server sends a comment at least every 15 s; a stream silent for longer is dead.
STREAM_READ_TIMEOUT_S = 45.0
# How long `events` keeps reconnecting to a stream that broke before the job ended.
RECONNECT_FOR_S = 30.0
# How long an upload waits for its answer once sent: the server parses and checks it first.
UPLOAD_READ_TIMEOUT_S = 600.0


class ApiError(Exception):
    """The server refused a request (`status` is its HTTP status) or could not be reached
    (`status` is None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: its type, its JSON data, and its id (None when it has none)."""

    type: str
    data: Any
    id: str | None


def parse_sse(lines: Iterable[str]) -> Iterator[Event]:
    """Events from the lines of a text/event-stream (comments and `retry:` are skipped)."""
    kind, data, event_id = "message", [], None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield Event(kind, json.loads("\n".join(data)), event_id)
            kind, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            kind = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


class Client:
    """The API's routes as methods; use it as a context manager so its connections close."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("TAPEFIT_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("TAPEFIT_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )
        self.has_token = bool(token)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the routes --------------------------------------------------------------------

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        """POST /jobs: the queued job."""
        return self._call("POST", "/jobs", json=spec)

    def jobs(self, *, state: str | None = None, limit: int = 50) -> dict[str, Any]:
        """GET /jobs: a page of jobs, newest first, with `total`."""
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        return self._call("GET", "/jobs", params=params)

    def job(self, job_id: str | int) -> dict[str, Any]:
        """GET /jobs/{id}."""
        return self._call("GET", f"/jobs/{job_id}")

    def epochs(self, job_id: str | int) -> list[dict[str, Any]]:
        """GET /jobs/{id}/epochs."""
        return self._call("GET", f"/jobs/{job_id}/epochs")

    def cancel(self, job_id: str | int) -> dict[str, Any]:
        """POST /jobs/{id}/cancel: the job, cancelled or asked to stop."""
        return self._call("POST", f"/jobs/{job_id}/cancel")

    def delete(self, job_id: str | int) -> None:
        """DELETE /jobs/{id}: a finished job, with all it owns."""
        self._call("DELETE", f"/jobs/{job_id}")

    def predict_image(self, name: str, path: Path) -> dict[str, Any]:
        """POST /jobs/{name}/predict with the image as the multipart field `file`: the
        first prediction, {digit, probabilities}."""
        content = path.read_bytes()
        files = {"file": (path.name, content, _image_type(path))}
        return self._call("POST", f"/jobs/{name}/predict", files=files)["predictions"][0]

    def datasets(self, *, limit: int = 100) -> dict[str, Any]:
        """GET /datasets: the built-in mnist, then the uploaded datasets, newest first."""
        return self._call("GET", "/datasets", params={"limit": limit})

    def upload_dataset(self, path: Path, fields: dict[str, str]) -> dict[str, Any]:
        """POST /datasets with the file as the multipart field `file`, read from disk as it
        is sent (never whole in memory): the stored dataset."""
        with path.open("rb") as file:
            files = {"file": (path.name, file, "application/octet-stream")}
            # The server checks and splits the dataset before it answers.
            timeout = httpx.Timeout(30.0, read=UPLOAD_READ_TIMEOUT_S)
            return self._call("POST", "/datasets", files=files, data=fields, timeout=timeout)

    def delete_dataset(self, dataset_id: str | int) -> None:
        """DELETE /datasets/{id}."""
        self._call("DELETE", f"/datasets/{dataset_id}")

    def events(self, job_id: str | int, *, last_event_id: str | None = None) -> Iterator[Event]:
        """GET /jobs/{id}/events until the job's final state, reconnecting with the last
        event id when the stream breaks (the server resumes exactly there)."""
        broke_at: float | None = None
        while True:
            try:
                for event in self._stream(job_id, last_event_id):
                    broke_at = None
                    last_event_id = event.id or last_event_id
                    yield event
                    if event.type == "state" and event.data["state"] in FINAL_STATES:
                        return
            except ApiError as exc:
                if exc.status is not None:
                    raise
                broke_at = broke_at or time.monotonic()
                if time.monotonic() - broke_at > RECONNECT_FOR_S:
                    raise
            # The stream ended (or broke) before a final state: the server restarted.
            broke_at = broke_at or time.monotonic()
            time.sleep(1.0)

    def _stream(self, job_id: str | int, last_event_id: str | None) -> Iterator[Event]:
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT_S)
        try:
            with self._http.stream(
                "GET", f"/jobs/{job_id}/events", headers=headers, timeout=timeout
            ) as response:
                if response.is_error:
                    response.read()
                    raise ApiError(_message(response), response.status_code)
                yield from parse_sse(response.iter_lines())
        except httpx.HTTPError as exc:
            raise ApiError(self._unreachable(exc)) from None

    def create_study(self, spec: dict[str, Any]) -> dict[str, Any]:
        """POST /studies: the study, with its first trials queued."""
        return self._call("POST", "/studies", json=spec)

    def study(self, study_id: str | int) -> dict[str, Any]:
        """GET /studies/{id}: its trials and best."""
        return self._call("GET", f"/studies/{study_id}")

    def cancel_study(self, study_id: str | int) -> dict[str, Any]:
        """POST /studies/{id}/cancel."""
        return self._call("POST", f"/studies/{study_id}/cancel")

    # -- plumbing ----------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(self._unreachable(exc)) from None
        if response.is_error:
            raise ApiError(self._refusal(response), response.status_code)
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(f"{self.url} did not answer as the tapefit API does") from None

    def _refusal(self, response: httpx.Response) -> str:
        if response.status_code == 401:
            if self.has_token:
                return "the server refused the token in TAPEFIT_API_TOKEN"
            return "the server needs a token: set TAPEFIT_API_TOKEN"
        return _message(response)

    def _unreachable(self, exc: httpx.HTTPError) -> str:
        if isinstance(exc, httpx.TimeoutException):
            return f"{self.url} did not answer in time"
        if isinstance(exc, httpx.ConnectError):
            return f"cannot reach the server at {self.url} (is `tapefit serve` running? " \
                   "set TAPEFIT_URL to use another)"
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return f"TAPEFIT_URL is not an http(s) URL: {self.url}"
        return f"the connection to {self.url} broke: {exc or type(exc).__name__}"


def _message(response: httpx.Response) -> str:
    """The server's one-line reason for refusing a request."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            if isinstance(body.get(key), str):
                return body[key]
    return f"HTTP {response.status_code} {response.reason_phrase}"


def _image_type(path: Path) -> str:
    suffix = path.suffix.lower()
    return "image/jpeg" if suffix in (".jpg", ".jpeg") else "image/png"
