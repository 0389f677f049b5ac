"""End to end in a real browser: Debian's headless Chromium, driven by Playwright, against a
real `tapefit serve` and worker. Screenshots land in the test's temp dir."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright import sync_api  # a dev extra

from tests.helpers.processes import run_server

# Debian's chromium package (.ci/run installs it); never a browser Playwright downloads.
CHROMIUM = Path("/usr/bin/chromium")

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


def shot(page: object, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"tapefit-{name}.png"
    page.wait_for_timeout(400)  # let the bars' and meters' transitions settle
    page.screenshot(path=str(path), full_page=True)


def draw_a_seven(page: object) -> None:
    box = page.locator("canvas.pad").bounding_box()
    page.mouse.move(box["x"] + 85, box["y"] + 70)
    page.mouse.down()
    for x, y in [(140, 66), (195, 64), (178, 112), (158, 160), (142, 210), (132, 238)]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=6)
    page.mouse.up()


def test_submit_watch_and_draw(browser: object, tmp_path: Path) -> None:
    with run_server(tmp_path, workers=1) as client:
        base = str(client.base_url)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        # Offline: the page asks nothing of any other host.
        page.on("request", lambda r: r.url.startswith(base) or problems.append(f"asked {r.url}"))
        try:
            page.goto(base + "/")
            page.wait_for_selector("text=No jobs yet")
            form = page.locator("form.job-form")
            form.locator("input[name=layers]").fill("64, 10")
            form.locator("input[name=epochs]").fill("3")
            form.locator("input[name=batch_size]").fill("20")
            form.locator("input[name=train_limit]").fill("1000")
            form.get_by_role("button", name="Start training").click()

            page.wait_for_url("**/#/jobs/1")
            # Functions, not bare expressions: the page's CSP forbids eval.
            page.wait_for_function(
                "() => Number(document.querySelector('canvas.chart')?.dataset.points) > 0",
                timeout=90_000,
            )
            shot(page, tmp_path, "job-live")
            page.wait_for_selector(".state-box .badge.succeeded", timeout=90_000)
            # 3 epochs of 50 batches: the whole curve, and the three epochs in the table.
            page.wait_for_function(
                "() => Number(document.querySelector('canvas.chart')?.dataset.points) === 150"
            )
            assert page.locator("table.epochs tbody tr").count() == 3
            # Epochs of this tiny job take hundredths of a second: shown, not rounded to 0.
            times = page.locator("table.epochs tbody td:last-child").all_inner_texts()
            assert all(re.fullmatch(r"\d+\.\d+ s", t) and t != "0.0 s" for t in times), times
            accuracy = page.locator(".tile", has_text="Test accuracy").locator(".tile-value")
            assert accuracy.inner_text().endswith("%")

            draw_a_seven(page)
            page.wait_for_selector(".predictor[data-digit]")
            digit = page.locator(".guess-digit").inner_text()
            assert digit in "0123456789" and len(digit) == 1
            assert page.locator(".guess-text").inner_text().endswith("% sure")
            assert page.locator(".bar").count() == 10
            shot(page, tmp_path, "job-done")

            page.goto(base + "/#/draw")
            page.wait_for_selector("select.model-select option[value=best]", state="attached")
            draw_a_seven(page)
            page.wait_for_selector(".predictor[data-digit]")
            shot(page, tmp_path, "draw")

            page.goto(base + "/#/")
            page.wait_for_selector("tr.job-row[data-state=succeeded]")
            shot(page, tmp_path, "jobs")
        finally:
            page.close()  # closes the event streams before the server stops
        assert problems == []


def test_the_convnet_preset_trains_a_convnet_that_reads_the_pad(
    browser: object, tmp_path: Path
) -> None:
    with run_server(tmp_path, workers=1) as client:
        base = str(client.base_url)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        try:
            page.goto(base + "/")
            form = page.locator("form.job-form")
            form.locator("select[name=preset]").select_option("convnet")
            assert form.locator("input[name=layers]").input_value() == (
                "conv:32:3, pool:2, conv:64:3, pool:2, conv:128:3, flatten, 10")
            assert form.locator("input[name=batch_size]").input_value() == "64"
            form.locator("input[name=epochs]").fill("1")
            form.locator("input[name=train_limit]").fill("1000")
            form.get_by_role("button", name="Start training").click()

            page.wait_for_url("**/#/jobs/1")
            page.wait_for_selector(".state-box .badge.succeeded", timeout=120_000)
            assert "keras conv32x3–maxpool2–conv64x3–maxpool2–conv128x3–flatten–10" in (
                page.locator("body").inner_text())
            job = client.get("/jobs/1").json()
            assert [layer["type"] for layer in job["spec"]["model"]["layers"]] == [
                "conv2d", "max_pool2d", "conv2d", "max_pool2d", "conv2d", "flatten", "dense"]
            draw_a_seven(page)  # the pad's PNG, read by the convnet
            page.wait_for_selector(".predictor[data-digit]")
            assert page.locator(".guess-text").inner_text().endswith("% sure")
            shot(page, tmp_path, "convnet")

            # Editing the layers makes the form custom again.
            page.goto(base + "/#/")
            form = page.locator("form.job-form")
            form.locator("select[name=preset]").select_option("convnet")
            form.locator("input[name=layers]").fill("conv:8:3, flatten, 10")
            assert form.locator("select[name=preset]").input_value() == ""
        finally:
            page.close()
        assert problems == []
