"""Schemathesis against the real `tapefit serve` over HTTP: fresh examples every run.

tests/service/test_openapi_fuzz.py draws the same examples in process each time, so it
catches regressions; this one draws new ones (no seed, no example database) for a fixed time
budget, through uvicorn, its HTTP parser and every middleware, so each run can find what the
fixed examples cannot. A failure prints schemathesis's report: the request as a curl command
and the seed that drew it. No worker runs, so the jobs it submits never train.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from benchmarks.server import start_serve
from tests.helpers.fuzz import EXCLUDED_CHECKS
from tests.helpers.settings import SAMPLE

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
# The whole run's budget, in seconds: the generated phases repeat until it is spent.
BUDGET = 60


def config(path: Path) -> Path:
    """A schemathesis.toml: every check, but those that cannot hold for an operation."""
    lines = ['[generation]', 'database = "none"', ""]
    for label, checks in EXCLUDED_CHECKS.items():
        method, operation_path = label.split(" ", 1)
        lines += ["[[operations]]", f'include-method = "{method}"',
                  f'include-path = "{operation_path}"']
        lines += [f"checks.{check}.enabled = false" for check in checks]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def test_a_live_server_keeps_its_schema_under_fresh_examples(tmp_path: Path) -> None:
    env = {**os.environ, "TAPEFIT_DATA_DIR": str(tmp_path / "data"),
           "TAPEFIT_MNIST_PATH": str(SAMPLE)}
    env.pop("TAPEFIT_DATABASE_URL", None)
    env.pop("TAPEFIT_API_TOKEN", None)
    log = tmp_path / "serve.log"
    server, url = start_serve("--workers", "0", env=env, log_path=log)
    try:
        run = subprocess.run(
            [SCHEMATHESIS, "--config-file", str(config(tmp_path / "schemathesis.toml")),
             "--no-color", "run", f"{url}/openapi.json", "--max-time", str(BUDGET),
             "--workers", "1", "--request-timeout", "30"],
            capture_output=True, text=True, timeout=BUDGET * 5, cwd=tmp_path,
        )
        report = run.stdout[-25_000:] + run.stderr[-5_000:]
        assert run.returncode == 0, report
        counted = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
        assert counted and counted[1] == counted[2] and int(counted[1]) > 100, report
        assert httpx.get(f"{url}/healthz").status_code == 200  # and it still answers
    finally:
        server.send_signal(signal.SIGINT)
        exit_code = server.wait(timeout=40)
    assert exit_code == 0, log.read_text()[-5_000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-10_000:]
