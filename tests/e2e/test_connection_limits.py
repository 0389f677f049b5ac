"""The real `tapefit serve` closes connections whose request head does not arrive within
TAPEFIT_HEADER_TIMEOUT (a "slowloris"), and goes on answering everyone else meanwhile."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from benchmarks.server import start_serve

HEADER_TIMEOUT_S = 1.0
# Generous: the server closes them after HEADER_TIMEOUT_S; this only stops a broken test.
GIVE_UP_S = 30.0
HALF_SENT = 300


@contextmanager
def serve(tmp_path: Path, **settings: str) -> Iterator[str]:
    """`tapefit serve --workers 0` with these TAPEFIT_ settings; its URL."""
    env = {**os.environ, "TAPEFIT_DATA_DIR": str(tmp_path / "data"),
           **{f"TAPEFIT_{name.upper()}": value for name, value in settings.items()}}
    env.pop("TAPEFIT_DATABASE_URL", None)
    env.pop("TAPEFIT_API_TOKEN", None)
    process, url = start_serve("--workers", "0", env=env, log_path=tmp_path / "serve.log")
    try:
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    with serve(tmp_path, header_timeout=str(HEADER_TIMEOUT_S)) as url:
        yield url


def connect(url: str) -> socket.socket:
    host, port = httpx.URL(url).host, httpx.URL(url).port
    assert port is not None
    sock = socket.create_connection((host, port), timeout=GIVE_UP_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails the test)."""
    received = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def test_half_sent_requests_are_answered_408_and_closed(served: str) -> None:
    started = time.monotonic()
    half_sent = []
    for n in range(HALF_SENT):
        sock = connect(served)
        # A request line and some headers, never the blank line that ends them.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + str(n).encode())
        half_sent.append(sock)
    silent = connect(served)  # connects and sends nothing at all

    # Meanwhile the API answers others as usual.
    with httpx.Client(base_url=served, timeout=10) as client:
        assert client.get("/healthz").status_code == 200

    for sock in [*half_sent, silent]:
        with sock:
            assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")
    print(f"{HALF_SENT + 1} connections closed by the server after "
          f"{time.monotonic() - started:.1f} s (header timeout {HEADER_TIMEOUT_S} s)")


def test_a_head_sent_a_byte_at_a_time_is_closed_too(served: str) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 10_000
    with connect(served) as sock:
        sock.settimeout(0.05)  # each byte keeps the connection busy: no idle timeout can fire
        closed = False
        deadline = time.monotonic() + GIVE_UP_S
        for byte in request:
            assert time.monotonic() < deadline, "the server never closed the connection"
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "the whole slow head was accepted"


def test_each_request_on_a_kept_alive_connection_has_its_own_deadline(served: str) -> None:
    with connect(served) as sock:
        for _ in range(3):  # complete requests are unaffected
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            response = b""
            while not response.endswith(b'{"status":"ok"}'):
                response += sock.recv(4096)
            assert response.startswith(b"HTTP/1.1 200 "), response
        # The next head starts, and never ends: the deadline runs from the last response.
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_an_unfinished_request_head_over_16_kib_is_400_at_once(tmp_path: Path) -> None:
    with serve(tmp_path, header_timeout="60") as url, connect(url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 400 ")


def test_past_max_connections_new_requests_get_503_until_some_close(tmp_path: Path) -> None:
    with serve(tmp_path, max_connections="10", header_timeout="60") as url:
        idle = [connect(url) for _ in range(10)]
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/healthz").status_code == 503
            for sock in idle:
                sock.close()
            deadline = time.monotonic() + GIVE_UP_S
            while client.get("/healthz").status_code != 200:  # the server sees them go
                assert time.monotonic() < deadline
                time.sleep(0.05)


def test_a_body_that_stalls_half_way_is_closed(served: str) -> None:
    with connect(served) as sock:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"epochs\": ")
        assert read_until_closed(sock) == b""  # the app saw the client go: nothing to answer
    with httpx.Client(base_url=served, timeout=10) as client:
        assert client.get("/jobs").json()["total"] == 0


def test_a_body_sent_steadily_is_not_cut(served: str) -> None:
    body = b'{"epochs": 1, "seed": 7}'
    with connect(served) as sock:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        for byte in body:  # in small pieces, each well within the deadline of the last
            sock.sendall(bytes([byte]))
            time.sleep(HEADER_TIMEOUT_S / 10)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 201 ")
