"""The study page and the jobs page's comparison in Debian's headless Chromium (Playwright),
under the dashboard's Content-Security-Policy, against a real `tapefit serve` and worker."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_dashboard import browser, shot  # noqa: F401 (the fixture)
from tests.helpers.processes import run_server, wait_until
from tests.helpers.settings import TINY_SPEC

STUDY = {
    "name": "page",
    "base": {**TINY_SPEC, "epochs": 2, "validation_split": 0.2},
    "space": {"optimizer.learning_rate": {"low": 1e-4, "high": 0.05, "log": True},
              "model.layers.0.units": {"choices": [16, 32]}},
    "sampler": "random", "pruner": "none", "trials": 3, "parallel": 1, "seed": 0,
}


def test_the_study_page_and_comparing_runs(browser: object, tmp_path: Path) -> None:  # noqa: F811
    with run_server(tmp_path, workers=1) as client:
        base = str(client.base_url)
        study_id = client.post("/studies", json=STUDY).json()["id"]
        wait_until(lambda: client.get(f"/studies/{study_id}").json()["state"] == "succeeded",
                   180, "the study to end")
        page = browser.new_page(viewport={"width": 1360, "height": 1000})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        page.on("request", lambda r: r.url.startswith(base) or problems.append(f"asked {r.url}"))
        try:
            page.goto(base + "/#/studies")
            page.wait_for_selector(f"tr.job-row[data-id='{study_id}']")
            page.click(f"tr.job-row[data-id='{study_id}']")
            page.wait_for_url(f"**/#/studies/{study_id}")
            page.wait_for_selector("tr.trial-row.best")
            assert page.locator("tr.trial-row").count() == 3
            assert page.locator("tr.trial-row[data-state=succeeded]").count() == 3
            # Functions, not bare expressions: the page's CSP forbids eval.
            page.wait_for_function(
                "() => Number(document.querySelector('#curves-chart')?.dataset.series) === 3")
            page.wait_for_function(
                "() => Number(document.querySelector('#parallel-chart')?.dataset.lines) === 3")
            page.wait_for_function(
                "() => Number(document.querySelector('#best-chart')?.dataset.points) >= 3")
            assert page.locator(".legend-item").count() == 3
            shot(page, tmp_path, "study")

            # The jobs page: tick two trials' jobs and overlay their loss curves.
            page.goto(base + "/#/")
            page.wait_for_selector("tr.job-row[data-state=succeeded]")
            page.locator("input.pick").nth(0).check()
            page.locator("input.pick").nth(1).check()
            page.get_by_role("button", name="Compare loss curves").click()
            page.wait_for_function(
                "() => Number(document.querySelector('canvas.compare-chart')?.dataset.series)"
                " === 2")
            assert page.locator(".compare .legend-item").count() == 2
            shot(page, tmp_path, "compare")

            # The form's training controls: a validation split and early stopping.
            form = page.locator("form.job-form")
            form.locator("input[name=layers]").fill("16, 10")
            form.locator("input[name=epochs]").fill("2")
            form.locator("input[name=batch_size]").fill("50")
            form.locator("input[name=train_limit]").fill("500")
            form.locator("input[name=validation_split]").fill("0.2")
            form.locator("input[name=patience]").fill("2")
            form.get_by_role("button", name="Start training").click()
            page.wait_for_url("**/#/jobs/4")
            page.wait_for_selector(".state-box .badge.succeeded", timeout=90_000)
            page.wait_for_function(
                "() => document.querySelectorAll('table.epochs tbody tr').length === 2")
            headings = page.locator("table.epochs th").all_inner_texts()
            assert [t.lower() for t in headings[3:5]] == ["val loss", "val acc."], headings
            val_acc = page.locator("table.epochs tbody tr td:nth-child(5)").all_inner_texts()
            assert all(cell.endswith("%") for cell in val_acc), val_acc
            job = client.get("/jobs/4").json()
            assert job["spec"]["validation_split"] == 0.2
            assert job["spec"]["early_stopping"]["monitor"] == "val_loss"
        finally:
            page.close()
        assert problems == []
