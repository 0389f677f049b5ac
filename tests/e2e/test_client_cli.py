"""End to end: the real `tapefit` client commands against a real `tapefit serve` and worker."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from benchmarks.server import start_serve
from tests.helpers import processes
from tests.helpers.processes import TAPEFIT, run_server, wait_until
from tests.helpers.settings import SAMPLE

SMALL = ["--epochs", "2", "--batch-size", "50", "--layers", "64,10", "--train-limit", "1000",
         "--test-limit", "300"]


def tapefit(url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the `tapefit` command against `url`; its output is not a terminal."""
    env = {**os.environ, "TAPEFIT_URL": url}
    return subprocess.run(
        [TAPEFIT, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) <= 1, result.stderr


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_server(tmp_path_factory.mktemp("cli"), workers=1) as client:
        yield str(client.base_url)


def test_submit_and_follow_to_success_then_the_other_commands(url: str, tmp_path: Path) -> None:
    result = tapefit(url, "submit", *SMALL, "--follow")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    job_id = re.match(r"job (\d+) ", lines[0]).group(1)
    assert [line[:9] for line in lines if line.startswith("epoch")] == ["epoch 1/2", "epoch 2/2"]
    accuracy = re.fullmatch(rf"job {job_id} succeeded: test accuracy (\d+\.\d\d)%", lines[-1])
    assert accuracy and float(accuracy.group(1)) > 60, lines[-1]

    listed = tapefit(url, "jobs")
    assert listed.returncode == 0
    assert re.search(rf"^{job_id}\s+succeeded\s+100%", listed.stdout, re.M), listed.stdout

    status = tapefit(url, "status", job_id)
    assert status.returncode == 0 and status.stdout.startswith(f"job {job_id} succeeded")
    assert "keras 64-10 · rmsprop lr 0.001 · 2 epochs of batch 50 · 1,000 images" in status.stdout

    # Following a finished job replays its epochs and its end.
    again = tapefit(url, "follow", job_id)
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == lines[-1]

    sample = np.load(SAMPLE)
    images = []
    for i in range(3):
        images.append(tmp_path / f"digit{i}.png")
        Image.fromarray(sample["x_test"][i]).save(images[-1])
    predicted = tapefit(url, "predict", "best", *map(str, images))
    assert predicted.returncode == 0, predicted.stderr
    printed = predicted.stdout.splitlines()
    rows = [re.fullmatch(r"(.+): (\d)  \((\d+\.\d)%\)", line) for line in printed]
    assert [row.group(1) for row in rows] == [str(path) for path in images]
    digits = [int(row.group(2)) for row in rows]
    assert sum(d == y for d, y in zip(digits, sample["y_test"][:3], strict=True)) >= 2

    refused = tapefit(url, "cancel", job_id)
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"tapefit: job {job_id} is already succeeded"


def test_a_cancelled_job_ends_follow_with_a_non_zero_exit(url: str) -> None:
    env = {**os.environ, "TAPEFIT_URL": url}
    long = ["--epochs", "100", "--batch-size", "10", "--layers", "64,10"]
    with subprocess.Popen([TAPEFIT, "submit", *long, "--follow"], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as follower:
        first = follower.stdout.readline()
        job_id = re.match(r"job (\d+) ", first).group(1)
        # Wait for the first epoch line: the job is training and followed live.
        while not follower.stdout.readline().startswith("epoch 1/100"):
            assert follower.poll() is None
        cancelled = tapefit(url, "cancel", job_id)
        assert cancelled.returncode == 0
        assert cancelled.stdout.strip() in (
            f"job {job_id}: cancel requested; it stops within a second", f"job {job_id} cancelled"
        )
        out, err = follower.communicate(timeout=60)
    assert follower.returncode == 1
    assert err.strip() == f"tapefit: job {job_id} was cancelled"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [(["status", "999"], 1, "tapefit: job 999 not found"),
     (["submit", "--epochs", "0"], 1,
      "tapefit: epochs: Input should be greater than or equal to 1"),
     (["submit", "--layers", "32,11"], 1,
      "tapefit: model.layers: Value error, the last layer must be dense with 10 units (one per "
      "class), got 11 units"),
     (["submit", "--layers", "32,conv:8:3,10"], 1,
      "tapefit: model.layers: Value error, layers[1] (conv2d): needs an image input (height, "
      "width, channels), got the flat (32,)"),
     (["submit", "--epochs", "two"], 2,
      "tapefit submit: argument --epochs: invalid int value: 'two' (see tapefit submit --help)"),
     (["predict", "best", "missing.png"], 2, "tapefit: no such file: missing.png"),
     (["follow"], 2, "tapefit follow: the following arguments are required: ID "
                     "(see tapefit follow --help)")],
)
def test_wrong_arguments_are_one_clear_line(
    url: str, args: list[str], code: int, message: str
) -> None:
    result = tapefit(url, *args, timeout=30)
    assert (result.returncode, result.stderr.strip()) == (code, message)
    no_traceback(result)


def test_an_unreachable_server_is_one_line() -> None:
    # A port held by a socket that does not listen: nothing can answer on it.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{held.getsockname()[1]}"
        result = tapefit(closed, "jobs", timeout=30)
    assert result.returncode == 3
    assert result.stderr.startswith(f"tapefit: cannot reach the server at {closed}")
    no_traceback(result)


def test_a_failing_job_gives_a_non_zero_exit_and_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-mnist.npz"
    monkeypatch.setattr(processes, "SAMPLE", missing)  # run_server points the worker at it
    with run_server(tmp_path, workers=1) as client:
        result = tapefit(str(client.base_url), "submit", "--epochs", "1", "--follow")
    assert result.returncode == 1
    assert re.fullmatch(r"tapefit: job 1 failed: MNIST file not found: .*no-mnist\.npz",
                        result.stderr.strip()), result.stderr
    no_traceback(result)


def test_ctrl_c_does_not_wait_for_open_event_streams(tmp_path: Path) -> None:
    env = {**os.environ, "TAPEFIT_DATA_DIR": str(tmp_path / "data")}
    env.pop("TAPEFIT_DATABASE_URL", None)
    env.pop("TAPEFIT_API_TOKEN", None)
    server, url = start_serve("--workers", "0", env=env, log_path=tmp_path / "serve.log")
    env["TAPEFIT_URL"] = url
    with server, httpx.Client(base_url=url) as client:
        wait_until(lambda: _answers(client), 30, "the API to answer")
        job_id = client.post("/jobs", json={}).json()["id"]  # no worker: it stays queued
        with subprocess.Popen([TAPEFIT, "follow", str(job_id)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as follower:
            assert follower.stdout.readline().startswith(f"job {job_id} is queued")
            server.send_signal(signal.SIGINT)
            # The open stream holds Ctrl-C up for the grace period, not until its job ends
            # (it never ends: no worker runs).
            assert server.wait(timeout=30) == 0
            follower.kill()
    assert "timeout graceful shutdown exceeded" in (tmp_path / "serve.log").read_text()


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False
