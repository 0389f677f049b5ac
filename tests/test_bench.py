"""`tapefit bench` runs and prints its table (on the committed sample: the figures themselves
are the benchmark's business, measured on the full MNIST, never asserted in tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks.service import bench_service
from tests.helpers.processes import TAPEFIT
from tests.helpers.settings import SAMPLE

pytestmark = pytest.mark.slow  # real processes or a long generated run

ROOT = Path(__file__).resolve().parent.parent


def test_bench_prints_the_training_table() -> None:
    result = subprocess.run(
        [TAPEFIT, "bench", "--mnist", str(SAMPLE), "--epochs", "2", "--rounds", "1",
         "--skip-serving", "--skip-queue"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert table[0] == "| figure | measured | target | met |"
    figures = " ".join(table)
    for row in ("service loop / model.fit", "cost of the metric writes", "compiled / eager",
                "convnet: service loop / model.fit"):
        assert row in figures


def test_bench_without_data_says_what_to_set(tmp_path: Path) -> None:
    result = subprocess.run([TAPEFIT, "bench", "--mnist", str(tmp_path / "none.npz")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "none.npz" in result.stderr and "Traceback" not in result.stderr


def test_the_service_figures_come_from_a_real_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relative --mnist, as a user types it: the server and its worker must find it too.
    monkeypatch.chdir(ROOT)
    figures = bench_service(SAMPLE.relative_to(ROOT), tmp_path / "data", requests=50)
    assert figures.trained_job == 1
    assert 0 < figures.first_row_warm_s and 0 < figures.first_row_cold_s
    assert 0 < figures.status_p50_ms <= figures.status_p99_ms
    assert figures.status_requests == 50


def test_the_small_jobs_run_through_a_real_server_and_report_their_phases(
    tmp_path: Path,
) -> None:
    from benchmarks.small_jobs import bench_small_jobs

    figures = bench_small_jobs(SAMPLE, tmp_path / "data", jobs=4, workers=1)
    assert figures.jobs == 4 and figures.workers == 1
    assert 0 < figures.wall_p50_s <= figures.wall_p90_s < figures.burst_s
    # Every phase the worker logs at a job's end, read from its JSON log lines.
    assert set(figures.phases_p50_s) == {"data", "build", "fit", "export", "persist"}
    assert all(seconds >= 0 for seconds in figures.phases_p50_s.values())
