"""The dashboard with API keys, in a real browser (Debian's Chromium) against a real
`tapefit serve`: an admin sees every key's jobs with their owners, a key only its own, and
a finished job is deleted from the list."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_dashboard import ARGS, CHROMIUM, browser  # noqa: F401 (the fixture)
from tests.helpers.processes import run_server

ADMIN_TOKEN = "an-admin-token-for-the-dashboard"


def test_owners_for_admins_own_jobs_for_keys_and_delete(browser: object,  # noqa: F811
                                                         tmp_path: Path) -> None:
    env = {"TAPEFIT_API_TOKEN": ADMIN_TOKEN}
    with run_server(tmp_path, workers=0, env=env) as client:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        token = client.post("/keys", json={"name": "alice"}, headers=admin).json()["token"]
        alice = {"Authorization": f"Bearer {token}"}
        alices = client.post("/jobs", json={}, headers=alice).json()["id"]
        admins = client.post("/jobs", json={}, headers=admin).json()["id"]
        client.post(f"/jobs/{alices}/cancel", headers=alice)
        base = str(client.base_url)
        problems: list[str] = []

        def open_as(password: str) -> object:
            # The browser's Basic credentials, as a person typing the token at the prompt.
            context = browser.new_context(http_credentials={"username": "me",
                                                            "password": password})
            page = context.new_page()
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.goto(base + "/")
            page.wait_for_selector("table.jobs tbody tr")
            return page

        page = open_as(ADMIN_TOKEN)
        page.wait_for_selector("th:has-text('Owner')", state="visible")
        owners = dict(zip(page.locator("table.jobs tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.id)"),
            page.locator("table.jobs tbody td.owner").all_inner_texts(), strict=True))
        assert owners == {str(alices): "alice", str(admins): "admin"}

        page = open_as(token)
        page.wait_for_selector(f"tr[data-id='{alices}'] button:has-text('Delete')")
        assert page.locator("table.jobs tbody tr").count() == 1
        assert page.locator("th:has-text('Owner')").is_hidden()
        page.on("dialog", lambda dialog: dialog.accept())
        page.locator(f"tr[data-id='{alices}'] button:has-text('Delete')").click()
        page.wait_for_selector("text=No jobs yet")
        assert client.get(f"/jobs/{alices}", headers=alice).status_code == 404
        assert client.get(f"/jobs/{admins}", headers=admin).status_code == 200
        assert problems == []
