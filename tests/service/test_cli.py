"""The `tapefit` command's own checks, run as a real process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from service.cli.main import is_loopback
from tests.helpers.processes import TAPEFIT


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.8.8", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.org", False)],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serve_refuses_an_open_address_without_a_token(tmp_path: Path) -> None:
    env = {**os.environ, "TAPEFIT_DATA_DIR": str(tmp_path)}
    env.pop("TAPEFIT_API_TOKEN", None)
    result = subprocess.run(
        [TAPEFIT, "serve", "--host", "0.0.0.0", "--workers", "0"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "without a token" in result.stderr and "TAPEFIT_API_TOKEN" in result.stderr
    assert not (tmp_path / "tapefit.db").exists()  # refused before touching anything
