"""End to end: the `tapefit` client commands with an API key in TAPEFIT_API_TOKEN, against a
real `tapefit serve` that has an admin token. They work as with the admin token, on the
key's own jobs; a read-only key is refused what it may not do, in one line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.helpers.processes import TAPEFIT, run_server

ADMIN_TOKEN = "an-admin-token-for-the-cli-test"


def tapefit(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TAPEFIT_URL": url, "TAPEFIT_API_TOKEN": token}
    return subprocess.run([TAPEFIT, *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_cli_works_with_a_key_on_its_own_jobs(tmp_path: Path) -> None:
    with run_server(tmp_path, workers=0, env={"TAPEFIT_API_TOKEN": ADMIN_TOKEN}) as client:
        url = str(client.base_url)
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        alice = client.post("/keys", json={"name": "alice"}, headers=admin).json()["token"]
        reader = client.post("/keys", json={"name": "r", "scopes": ["read"]},
                             headers=admin).json()["token"]
        others = client.post("/jobs", json={}, headers=admin).json()["id"]

        submitted = tapefit(url, alice, "submit", "--epochs", "1", "--priority", "7")
        assert submitted.returncode == 0, submitted.stderr
        job_id = int(submitted.stdout.split()[1])
        listed = json.loads(tapefit(url, alice, "jobs", "--json").stdout)
        assert [job["id"] for job in listed["items"]] == [job_id]
        assert listed["items"][0]["spec"]["priority"] == 7
        assert listed["items"][0]["owner_name"] == "alice"

        hidden = tapefit(url, alice, "status", str(others))
        assert hidden.returncode == 1 and f"job {others} not found" in hidden.stderr

        refused = tapefit(url, reader, "submit")
        assert refused.returncode == 1
        assert refused.stderr.strip().endswith(
            "POST /jobs needs the 'train' scope; key 'r' has: read")

        busy = tapefit(url, alice, "delete", str(job_id))
        assert busy.returncode == 1 and "cancel it first" in busy.stderr
        assert tapefit(url, alice, "cancel", str(job_id)).returncode == 0
        deleted = tapefit(url, alice, "delete", str(job_id))
        assert deleted.returncode == 0 and deleted.stdout.strip() == f"job {job_id} deleted"
        assert client.get(f"/jobs/{job_id}", headers=admin).status_code == 404
