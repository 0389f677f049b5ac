"""The architecture's rules: the rooms of service/ and their layers, the client's independence
from the server, the API without TensorFlow, the worker without the API (import-linter
contracts in pyproject.toml), and the style check."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
    assert len(contracts) >= 4
    assert f"{len(contracts)} kept, 0 broken" in result.stdout
    layers = next(c for c in contracts if c["type"] == "layers")
    assert layers["layers"][:3] == ["cli", "api", "observability"]
    assert any(layer.startswith("queue | serving") for layer in layers["layers"])


def test_the_api_process_loads_no_tensorflow() -> None:
    # Importing the whole app must not pull TensorFlow in, even indirectly.
    code = (
        "import sys; import service.api.app, service.cli.main; "
        "bad = [m for m in ('tensorflow', 'keras', 'worker') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_code_passes_the_style_check() -> None:
    # The rules are in pyproject.toml ([tool.ruff]): pyflakes, pycodestyle, import order.
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run(
        [str(ruff), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
