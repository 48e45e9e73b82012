"""The app in a real browser: headless Debian Chromium driven by Playwright for Python, on a
laptop's 1366 x 768 screen.

1. Upload a photo, type a prompt, click Run: the Grad-CAM map is on the page before the run ends
   (results as they come), and the maps are in view when the run ends (no scrolling past the
   examples).
2. Move the curve scrubber and the region search's step-through, play the search, and switch the
   IG display:
   the pictures change, and the model scores nothing meanwhile (the server counts every image any
   model scores: explainers.testing.AppServer).
3. Click the contrast example ("why a cat and not a tiger?"): it runs once, then comes from the cache.

Screenshots (tests/artifacts/, git-ignored) are taken at each stage to look at.
Skips only where /usr/bin/chromium (or Playwright) is missing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import forward_passes

pytestmark = pytest.mark.slow  # the fast tier (-m 'not slow') leaves this module out

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
PHOTO = ROOT / "assets" / "coffee.jpg"
RUN_TIMEOUT_MS = 300_000
LAPTOP = {"width": 1366, "height": 768}

if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: the browser test needs Debian's chromium package", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")


@pytest.fixture(scope="module")
def page(app_url):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport=LAPTOP)
            page.goto(app_url, wait_until="networkidle")
            yield page
        finally:
            browser.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def source(page, element: str) -> str:
    return page.locator(f"#{element} img").first.get_attribute("src") or ""


def wait_for_new_picture(page, element: str, old: str) -> str:
    page.wait_for_function(
        "([id, old]) => { const img = document.querySelector(`#${id} img`);"
        " return img && img.getAttribute('src') !== old && img.complete && img.naturalWidth > 100; }",
        arg=[element, old],
        timeout=60_000,
    )
    return source(page, element)


def move_slider(page, element: str, presses: int) -> None:
    """Move a Gradio slider with the keyboard, as a user would (each press is one step)."""
    handle = page.locator(f"#{element} input[type=range]").first
    handle.focus()
    for _ in range(presses):
        handle.press("ArrowRight")


def test_run_shows_the_maps_in_view_on_a_laptop_screen(page):
    page.locator("#photo input[type=file]").set_input_files(str(PHOTO))
    page.locator("#photo img").first.wait_for(state="visible", timeout=30_000)
    page.locator("#prompt textarea, #prompt input").first.fill("a cup of coffee")  # not an example: uncached
    started = time.monotonic()
    page.locator("#run").click()
    # Results as they come: Grad-CAM's map (its method takes a fraction of a second) is drawn while
    # the other methods and the curves still run: no download yet, no verdict in its caption.
    state = page.wait_for_function(
        """() => {
            const img = document.querySelector('#overlay-gradcam img');
            if (!img || !img.complete || img.naturalWidth <= 100) return false;
            return {
                download: (document.querySelector('#download')?.innerText || '').includes('saliency-lab-result'),
                caption: document.querySelector('#caption-gradcam')?.innerText || '',
                curves: !!document.querySelector('#deletion-plot img'),
            };
        }""",
        timeout=RUN_TIMEOUT_MS,
        polling="raf",
    ).json_value()
    first_map_s = time.monotonic() - started
    shot(page, "gradcam-first-1366x768.png")
    assert not state["download"] and not state["curves"], f"the Grad-CAM map came only with the end of the run: {state}"
    assert "forward pass" in state["caption"] and "faithful than random" not in state["caption"], state
    for element in ("overlay-gradcam", "overlay-ig", "overlay-region", "deletion-plot", "insertion-plot"):
        page.locator(f"#{element} img").first.wait_for(state="visible", timeout=RUN_TIMEOUT_MS)
    page.locator("#auc-table").get_by_text("Random order", exact=True).first.wait_for(timeout=RUN_TIMEOUT_MS)
    page.wait_for_function(
        "() => document.querySelector('#download')?.innerText.includes('saliency-lab-result')", timeout=RUN_TIMEOUT_MS
    )  # the download comes with the last update
    print(f"Run to the Grad-CAM map {first_map_s:.1f} s, to the download {time.monotonic() - started:.1f} s")
    page.wait_for_timeout(1000)  # let the last images finish painting
    for element in ("overlay-gradcam", "overlay-ig", "overlay-region"):
        picture = page.locator(f"#{element} img").first
        assert picture.evaluate("img => img.naturalWidth") > 100, f"#{element} has no picture"
        box = picture.bounding_box()
        assert box and box["y"] >= 0 and box["y"] + box["height"] <= LAPTOP["height"], (
            f"#{element} is out of view after Run: {box}"
        )
    assert "more faithful than random order" in page.locator("#caption-gradcam").inner_text()
    assert "Score of" in page.locator("#score").inner_text()
    shot(page, "run-1366x768.png")
    page.screenshot(path=str(ARTIFACTS / "run-full-page.png"), full_page=True)


def test_scrubber_step_through_and_display_redraw_without_the_model(page, app_url):
    before = forward_passes(app_url)

    page.locator("#deletion-plot").scroll_into_view_if_needed()
    page.evaluate("() => document.getElementById('deletion-plot').scrollIntoView({block: 'start'})")
    old = {e: source(page, e) for e in ("scrub-picture", "deletion-plot", "insertion-plot")}
    move_slider(page, "scrubber", 6)  # from 30 % to 60 % of the pixels
    for element, was in old.items():
        wait_for_new_picture(page, element, was)
    page.locator("#scrub-text").get_by_text("60% of the pixels").wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    shot(page, "scrubber-1366x768.png")

    page.evaluate("() => document.getElementById('step-through').scrollIntoView({block: 'start'})")
    old_step = source(page, "step-picture")
    move_slider(page, "step-through", 3)  # from 5 to 8 regions
    wait_for_new_picture(page, "step-picture", old_step)
    page.locator("#step-text").get_by_text("Step 8 of").wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    shot(page, "step-through-1366x768.png")
    page.locator("#play").click()  # plays the search on from step 8, one region at a time
    page.locator("#step-text").get_by_text("Step 10 of").wait_for(timeout=60_000)
    page.locator("#cancel").click()

    page.locator("#display").get_by_text("Display").first.click()
    old_ig = source(page, "overlay-ig")
    page.locator("#ig-display").get_by_text("smoothed").click()
    wait_for_new_picture(page, "overlay-ig", old_ig)

    assert forward_passes(app_url) == before, "moving a slider or a display setting asked the model"


def test_contrast_example_runs_once_then_comes_from_the_cache(page, app_url):
    page.evaluate("() => window.scrollTo(0, 0)")
    example = page.get_by_text("Why a cat and not a tiger or a lynx?")
    example.click()  # lazily cached: the first click runs the model
    page.locator("#probabilities").get_by_text("a tiger").first.wait_for(timeout=RUN_TIMEOUT_MS)
    assert page.locator("#contrast textarea, #contrast input").first.input_value() == "a tiger, a lynx"
    page.wait_for_timeout(1000)
    shot(page, "contrast-example-1366x768.png")

    cached = forward_passes(app_url)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.locator("#examples img").first.click()  # the cat photo alone: not cached yet, runs the model
    page.locator("#probabilities").wait_for(state="hidden", timeout=RUN_TIMEOUT_MS)  # no contrast prompts now
    assert page.locator("#contrast textarea, #contrast input").first.input_value() == ""
    chelsea = forward_passes(app_url)
    assert chelsea > cached
    example.click()  # cached now: no model
    page.locator("#probabilities").get_by_text("a tiger").first.wait_for(timeout=60_000)
    page.wait_for_timeout(2000)
    assert forward_passes(app_url) == chelsea, "a cached example asked the model"
