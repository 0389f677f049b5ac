"""The dashboard's datasets, in a real browser (Debian's headless Chromium, driven by
Playwright, under the page's Content-Security-Policy) against a real `tapefit serve` and
worker: upload a zip of image folders with its progress bar, see it listed with its shape,
classes, counts and a strip of samples, train on it from the job form, and try the model with
an image upload. Screenshots land in the test's temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright import sync_api  # a dev extra

from tests.helpers.datasets import mnist_png_zip, mnist_sample, png
from tests.helpers.processes import run_server

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package, never a browser Playwright downloads
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_upload_list_train_and_try_a_dataset(browser: object, tmp_path: Path) -> None:
    archive = tmp_path / "digits.zip"
    archive.write_bytes(mnist_png_zip(40, classes=(0, 1, 7), names={0: "zero", 1: "one",
                                                                    7: "seven"}))
    sample = mnist_sample()
    seven = tmp_path / "seven.png"
    seven.write_bytes(png(np.kron(sample["x_test"][sample["y_test"] == 7][0],
                                  np.ones((2, 2), np.uint8))))
    with run_server(tmp_path, workers=1) as client:
        base = str(client.base_url)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        try:
            page.goto(base + "/#/datasets")
            page.wait_for_selector("tr.dataset-row[data-id=mnist]")
            form = page.locator("form.upload-form")
            form.locator("input[type=file]").set_input_files(str(archive))
            form.locator("input[name=name]").fill("three digits")
            form.get_by_role("button", name="Upload").click()
            page.wait_for_selector(".upload-status:has-text('stored')", timeout=60_000)
            assert page.locator(".upload-meter > div").evaluate("e => e.style.width") == "100%"
            row = page.locator("tr.dataset-row[data-id='1']")
            row.wait_for()
            assert "three digits" in row.inner_text()
            assert "28 × 28 × 1" in row.inner_text()
            assert "3 classes: one, seven, zero" in row.inner_text()
            assert "96 / 24" in row.inner_text()  # train / test: 20% of each class held out
            page.wait_for_selector(".sample-strip figure canvas")
            assert page.locator(".sample-strip figure").count() >= 3
            page.wait_for_timeout(300)
            page.screenshot(path=str(tmp_path / "tapefit-datasets.png"), full_page=True)

            page.goto(base + "/#/")
            job_form = page.locator("form.job-form")
            job_form.locator("select[name=dataset]").select_option("1")
            # One output unit per class: the form set the last layer to 3.
            assert job_form.locator("input[name=layers]").input_value().endswith("3")
            job_form.locator("input[name=layers]").fill("64, 3")
            job_form.locator("input[name=epochs]").fill("4")
            job_form.locator("input[name=batch_size]").fill("16")
            job_form.get_by_role("button", name="Start training").click()
            page.wait_for_url("**/#/jobs/1")
            page.wait_for_selector(".state-box .badge.succeeded", timeout=120_000)

            tryit = page.locator(".dataset-predictor")
            tryit.locator("input[type=file]").set_input_files(str(seven))
            page.wait_for_selector(".dataset-predictor[data-label]")
            assert tryit.get_attribute("data-label") in ("zero", "one", "seven")
            assert page.locator(".dataset-bar").count() == 3
            page.screenshot(path=str(tmp_path / "tapefit-dataset-job.png"), full_page=True)
        finally:
            page.close()
        assert problems == []
