"""The app in a real browser: headless Debian Chromium driven by Playwright for Python.

Opens the page, uploads a photo, types a prompt, clicks Run, waits for the overlays and the
plots, and saves a screenshot (pytest's tmp dir, copied to tests/artifacts/ for a look).
Skips only where /usr/bin/chromium (or Playwright) is missing.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
PHOTO = ROOT / "assets" / "coffee.jpg"
RUN_TIMEOUT_MS = 240_000

if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: the browser test needs Debian's chromium package",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")


def test_upload_prompt_run_shows_overlays_and_plots(app_url, tmp_path):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(app_url, wait_until="networkidle")
            page.locator("#photo input[type=file]").set_input_files(str(PHOTO))
            page.locator("#photo img").first.wait_for(state="visible", timeout=30_000)
            page.locator("#prompt textarea, #prompt input").first.fill("a cup of coffee")
            page.locator("#run").click()
            for element in ("overlay-gradcam", "overlay-ig", "overlay-region", "deletion-plot", "insertion-plot"):
                page.locator(f"#{element} img").first.wait_for(state="visible", timeout=RUN_TIMEOUT_MS)
            page.locator("#auc-table").get_by_text("Random order").first.wait_for(timeout=30_000)
            page.wait_for_timeout(1000)  # let the last images finish painting
            for element in ("overlay-gradcam", "overlay-region", "deletion-plot"):
                width = page.locator(f"#{element} img").first.evaluate("img => img.naturalWidth")
                assert width > 100, f"#{element} has no picture"
            assert "deletion AUC" in page.locator("#caption-gradcam").inner_text()
            assert "Score of" in page.locator("#score").inner_text()
            shot = tmp_path / "saliency-lab.png"
            page.screenshot(path=str(shot), full_page=True)
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(shot, ARTIFACTS / "saliency-lab.png")
        finally:
            browser.close()
