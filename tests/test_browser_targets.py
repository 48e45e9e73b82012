"""A detector's box in a real browser (headless Debian Chromium, Playwright): type a detector's
folder into the model box, show its boxes, pick the second one, Run; the page says that box
before and after its maps and draws them. A tiny random OWLv2 of real architecture, saved to a
temporary folder (SALIENCY_LAB_ALLOW_LOCAL_MODELS=1, no hub): its boxes mean nothing.

Screenshots go to tests/artifacts/ (git-ignored). Skips only where Chromium or Playwright is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from explainers.models.clip import ALLOW_LOCAL_ENV

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
PHOTO = ROOT / "assets" / "chelsea.jpg"
TIMEOUT_MS = 180_000

if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: the browser test needs Debian's chromium package", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")


@pytest.fixture(scope="module")
def detector_page(tmp_path_factory):
    from explainers.testing import AppServer, save_tiny_owlv2

    folder = tmp_path_factory.mktemp("browser-targets")
    model = f"detector:{save_tiny_owlv2(folder / 'owl')}"
    with AppServer(folder / "app", env={ALLOW_LOCAL_ENV: "1", "SALIENCY_EXAMPLES_CACHE": "off"}) as server:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                ],
            )
            try:
                page = browser.new_page(viewport={"width": 1366, "height": 768})
                page.goto(server.url, wait_until="networkidle")
                yield page, model
            finally:
                browser.close()


def test_the_detectors_boxes_are_shown_one_is_picked_and_its_maps_say_it(detector_page):
    page, model = detector_page
    page.locator("#photo input[type=file]").set_input_files(str(PHOTO))
    page.locator("#photo img").first.wait_for(state="visible", timeout=30_000)
    page.locator("#prompt textarea, #prompt input").first.fill("a cat")
    typed = page.locator("#model input").first
    typed.fill(model)
    typed.press("Enter")
    page.locator("#methods").get_by_label("Integrated gradients").uncheck()  # the run stays short
    page.locator("#methods").get_by_label("Region search").uncheck()

    page.locator("#offer").click()
    page.locator("#offer-picture img").first.wait_for(state="visible", timeout=TIMEOUT_MS)
    page.locator("#offer-text").get_by_text(re.compile(r"The model offers \d+ targets")).wait_for(timeout=TIMEOUT_MS)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "detector-boxes-1366x768.png"))

    page.locator("#target input").first.click()
    second = page.get_by_role("option", name=re.compile(r"^2\. the box"))
    label = second.inner_text()
    second.click()
    box = re.search(r"the box (\[[^\]]*\])", label).group(1)
    assert page.locator("#target input").first.input_value().startswith("2. the box")

    page.locator("#run").click()
    page.locator("#score").get_by_text(f"Probability of the box {box}").wait_for(timeout=TIMEOUT_MS)
    picture = page.locator("#overlay-gradcam img").first
    picture.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert picture.evaluate("img => img.naturalWidth") > 100
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "detector-run-1366x768.png"), full_page=True)
