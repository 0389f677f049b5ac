"""The worker supervisor with real child processes (small Python commands in place of workers)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.cli.supervisor import Supervisor, describe_exit

pytestmark = pytest.mark.slow  # real processes or a long generated run

# Stands in for a worker: runs until SIGTERM, then exits 0 as a worker does after handing
# back its job. It leaves a file named by its pid once it handles SIGTERM.
LONG_RUNNING = ("import os, pathlib, signal, sys, time\n"
                "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
                "(pathlib.Path(sys.argv[1]) / str(os.getpid())).touch()\n"
                "while True: time.sleep(1)")
CRASHING = [sys.executable, "-c", "import sys; sys.exit(1)"]


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(") ", 1)[1][0] == "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def long_running(tmp_path: Path) -> list[str]:
    return [sys.executable, "-c", LONG_RUNNING, str(tmp_path)]


def running(supervisor: Supervisor, count: int, tmp_path: Path) -> list[int]:
    """Wait for `count` workers that handle SIGTERM; their pids."""
    def ready() -> bool:
        pids = supervisor.pids()
        return len(pids) == count and all((tmp_path / str(pid)).exists() for pid in pids)

    wait_for(ready, f"{count} workers")
    return supervisor.pids()


@pytest.fixture
def supervise() -> Iterator[Callable[..., Supervisor]]:
    started: list[Supervisor] = []

    def make(command: list[str], count: int = 1, **options: float) -> Supervisor:
        supervisor = Supervisor(command, count, poll_interval=0.02, backoff=0.01, **options)
        started.append(supervisor)
        supervisor.start()
        return supervisor

    yield make
    for supervisor in started:
        supervisor.stop()


def test_a_killed_worker_is_reaped_and_restarted(
    supervise: Callable[..., Supervisor], long_running: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "tapefit.supervisor")
    supervisor = supervise(long_running, 2)
    wait_for(lambda: len(supervisor.pids()) == 2, "two workers")
    killed, other = supervisor.pids()
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: len(supervisor.pids()) == 2 and killed not in supervisor.pids(),
             "a new worker in place of the killed one")
    assert other in supervisor.pids()  # the other was left alone
    assert supervisor.starts == 3
    assert not is_zombie(killed)
    assert "was killed by SIGKILL" in caplog.text and "restarting it in" in caplog.text


def test_repeated_immediate_crashes_make_it_give_up_with_a_clear_line(
    supervise: Callable[..., Supervisor], caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = supervise(CRASHING, max_fast_crashes=5)
    wait_for(lambda: "giving up" in caplog.text, "the supervisor to give up")
    assert supervisor.starts == 5
    gave_up = [r for r in caplog.records if "giving up" in r.getMessage()]
    assert len(gave_up) == 1 and gave_up[0].levelno == logging.ERROR
    assert "exited with status 1" in gave_up[0].getMessage()
    assert "5 crashes in a row" in gave_up[0].getMessage()
    # And it stays given up: no more starts, nothing running.
    for _ in range(20):
        supervisor.check()
    assert supervisor.starts == 5 and supervisor.pids() == []


def test_crashes_after_a_longer_run_do_not_count_towards_giving_up(
    supervise: Callable[..., Supervisor], caplog: pytest.LogCaptureFixture
) -> None:
    # Every run counts as long here: the worker is restarted however often it dies.
    supervisor = supervise(CRASHING, fast_crash_s=0, max_fast_crashes=2)
    wait_for(lambda: supervisor.starts >= 6, "six starts")
    assert "giving up" not in caplog.text


def test_a_worker_that_exits_0_was_told_to_stop_and_stays_stopped(
    supervise: Callable[..., Supervisor], long_running: list[str], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "tapefit.supervisor")
    supervisor = supervise(long_running)
    (pid,) = running(supervisor, 1, tmp_path)
    os.kill(pid, signal.SIGTERM)  # as Ctrl-C in a terminal reaches the whole group
    wait_for(lambda: "stopped on its own" in caplog.text, "the exit to be seen")
    for _ in range(20):
        supervisor.check()
    assert supervisor.starts == 1 and supervisor.pids() == []


def test_stop_terminates_the_workers_gracefully_and_restarts_none(
    supervise: Callable[..., Supervisor], long_running: list[str], tmp_path: Path,
) -> None:
    supervisor = supervise(long_running, 2)
    running(supervisor, 2, tmp_path)
    processes = [slot.process for slot in supervisor.slots]
    supervisor.stop()
    assert [p.returncode for p in processes if p is not None] == [0, 0]  # SIGTERM, not kill
    supervisor.check()
    assert supervisor.starts == 2


def test_exit_descriptions() -> None:
    assert describe_exit(1) == "exited with status 1"
    assert describe_exit(-9) == "was killed by SIGKILL"
