"""`tapefit bench` runs and prints its table (on the committed sample: the figures themselves
are the benchmark's business, measured on the full MNIST, never asserted in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import SAMPLE

TAPEFIT = str(Path(sys.executable).parent / "tapefit")


def test_bench_prints_the_training_table() -> None:
    result = subprocess.run(
        [TAPEFIT, "bench", "--mnist", str(SAMPLE), "--epochs", "2", "--rounds", "1",
         "--skip-serving"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert table[0] == "| figure | measured | target | met |"
    figures = " ".join(table)
    for row in ("service loop / model.fit", "cost of the metric writes", "compiled / eager"):
        assert row in figures


def test_bench_without_data_says_what_to_set(tmp_path: Path) -> None:
    result = subprocess.run([TAPEFIT, "bench", "--mnist", str(tmp_path / "none.npz")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "none.npz" in result.stderr and "Traceback" not in result.stderr
