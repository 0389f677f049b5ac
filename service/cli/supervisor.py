"""Keep `tapefit serve`'s worker processes running.

A thread polls each worker: one that dies (killed, out of memory, a fatal error) is reaped and
started again after a backoff; one that exits 0 was told to stop (Ctrl-C reaches the whole
process group) and stays stopped. A worker that keeps crashing within seconds of its start (a
broken install, a database it cannot open) is given up on after a few tries, with one clear
log line, rather than restarted forever: the API goes on, and /readyz says no worker is alive.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("tapefit.supervisor")


@dataclass
class _Slot:
    """One worker the supervisor keeps: its current process and its record of crashes."""

    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    fast_crashes: int = 0  # in a row, each within fast_crash_s of its start
    restart_at: float | None = None
    done: bool = False  # stopped on its own, or given up on


def describe_exit(returncode: int) -> str:
    """'exited with status 1', 'was killed by SIGKILL'."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Supervisor:
    """Starts `count` processes running `command` and restarts those that die.

    Backoff before a restart: `backoff` seconds, doubled for each crash in a row that came
    within `fast_crash_s` of the process's start, up to `max_backoff`; after `max_fast_crashes`
    such crashes in a row the slot is given up. A crash after a longer run starts the count over.
    """

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        *,
        poll_interval: float = 0.5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        fast_crash_s: float = 15.0,
        max_fast_crashes: int = 5,
        stop_timeout: float = 30.0,
    ) -> None:
        self.command = list(command)
        self.poll_interval, self.stop_timeout = poll_interval, stop_timeout
        self.backoff, self.max_backoff = backoff, max_backoff
        self.fast_crash_s, self.max_fast_crashes = fast_crash_s, max_fast_crashes
        self.slots = [_Slot(number) for number in range(1, count + 1)]
        self.starts = 0  # processes started in all, restarts included
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the thread and stop() never act on a slot at once
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def start(self) -> None:
        """Start every worker, then the thread that watches them."""
        with self._lock:
            for slot in self.slots:
                self._spawn(slot)
        self._thread.start()

    def pids(self) -> list[int]:
        """The pids of the workers currently running."""
        with self._lock:
            return [s.process.pid for s in self.slots
                    if s.process is not None and s.process.poll() is None]

    def stop(self) -> None:
        """Stop watching, then SIGTERM every worker (each hands its job back and exits 0) and
        wait for them; one still running after stop_timeout is killed."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            running = [s.process for s in self.slots
                       if s.process is not None and s.process.poll() is None]
            for process in running:
                process.terminate()
            for process in running:
                try:
                    process.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    log.warning("worker pid %s did not stop within %g s; killing it",
                                process.pid, self.stop_timeout)
                    process.kill()
                    process.wait()

    def check(self) -> None:
        """One look at every worker: reap the dead, schedule or make the restarts."""
        now = time.monotonic()
        with self._lock:
            if self._stopping.is_set():
                return
            for slot in self.slots:
                if slot.done:
                    continue
                if slot.restart_at is not None:
                    if now >= slot.restart_at:
                        self._spawn(slot)
                    continue
                assert slot.process is not None
                returncode = slot.process.poll()  # reaps it: no zombie is left
                if returncode is not None:
                    self._exited(slot, returncode, now)

    def _exited(self, slot: _Slot, returncode: int, now: float) -> None:
        pid, lived = slot.process.pid if slot.process else None, now - slot.started
        if returncode == 0:
            log.info("worker %s (pid %s) stopped on its own; not restarting it", slot.number, pid)
            slot.done = True
            return
        if lived < self.fast_crash_s:
            slot.fast_crashes += 1
        else:
            slot.fast_crashes = 0
        if slot.fast_crashes >= self.max_fast_crashes:
            log.error(
                "worker %s (pid %s) %s; giving up on it after %s crashes in a row, each within "
                "%g s of its start (see its output above). The API goes on without it: "
                "/readyz answers 503 while no worker is alive.",
                slot.number, pid, describe_exit(returncode), slot.fast_crashes,
                self.fast_crash_s,
            )
            slot.done = True
            return
        delay = min(self.backoff * 2 ** max(slot.fast_crashes - 1, 0), self.max_backoff)
        log.warning("worker %s (pid %s) %s after %.1f s; restarting it in %g s",
                    slot.number, pid, describe_exit(returncode), lived, delay)
        slot.restart_at = now + delay

    def _spawn(self, slot: _Slot) -> None:
        slot.process = subprocess.Popen(self.command)
        slot.started, slot.restart_at = time.monotonic(), None
        self.starts += 1
        log.info("worker %s started (pid %s)", slot.number, slot.process.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(self.poll_interval):
            try:
                self.check()
            except OSError as exc:  # out of processes or memory: try again at the next look
                log.error("could not restart a worker: %s", exc)
