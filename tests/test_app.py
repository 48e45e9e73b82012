"""The Gradio app through its API (gradio_client), against ``app.py`` launched on 127.0.0.1.

Outputs are found by their label in the API's description of /explain, never by position.
Order matters a little: the error cases run first and the example afterwards, which also shows
that the app keeps serving after errors.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from explainers.api import PARAMS
from explainers.methods import METHODS, default_methods

gradio_client = pytest.importorskip("gradio_client")
from conftest import forward_passes  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

pytestmark = pytest.mark.slow  # the fast tier (-m 'not slow') leaves this module out

ROOT = Path(__file__).resolve().parents[1]
CHELSEA = ROOT / "assets" / "chelsea.jpg"
DEFAULT_METHODS = tuple(default_methods())


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def outputs(client):
    """Output label -> a function reading that output of an /explain result."""
    returns = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/explain"]["returns"]
    labels = [r["label"] for r in returns]
    assert len(labels) == len(set(labels)), f"outputs need unique labels: {labels}"
    index = {label: i for i, label in enumerate(labels)}

    def read(out, label: str):
        return out[index[label]]

    return read


def value(output):
    """An output's value, whether it came back plain or as a component update."""
    if isinstance(output, dict) and output.get("__type__") == "update":
        return output.get("value")
    return output


def visible(output) -> bool:
    return not (isinstance(output, dict) and output.get("__type__") == "update" and output.get("visible") is False)


def assert_plain_error(error: Exception, *fragments: str) -> None:
    message = str(error)
    assert "Traceback" not in message and 'File "' not in message, message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message


def test_api_has_explain_with_image_and_prompt_first(client):
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/explain"]
    names = [p["parameter_name"] for p in endpoint["parameters"]]
    assert names[:2] == ["image", "prompt"]
    assert all(p["parameter_has_default"] for p in endpoint["parameters"][2:]), endpoint["parameters"]
    assert set(PARAMS) | {"contrast", "model", "methods", "sanity"} <= set(names)


def test_empty_prompt_is_a_plain_error(client):
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(CHELSEA)), "   ", api_name="/explain")
    assert_plain_error(caught.value, "prompt is empty")


def test_a_file_that_is_not_an_image_is_a_plain_error(client, tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_text("this is text, not a picture")
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(fake)), "a cat", api_name="/explain")
    assert_plain_error(caught.value, "holiday.png")


def test_no_method_is_a_plain_error(client):
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(CHELSEA)), "a cat", methods=[], api_name="/explain")
    assert_plain_error(caught.value, "at least one method")


def test_a_parameter_out_of_range_is_a_plain_error(client):
    # Gradio's own widgets refuse these before the app sees them, in a plain sentence too.
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(CHELSEA)), "a cat", curve_steps=1, api_name="/explain")
    assert_plain_error(caught.value, "minimum value 2")
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(CHELSEA)), "a cat", colour_map="rainbow", api_name="/explain")
    assert_plain_error(caught.value, "rainbow")


def test_clip_offline_is_a_plain_error(client):
    started = time.monotonic()
    with pytest.raises(AppError) as caught:
        client.predict(
            handle_file(str(CHELSEA)), "a cat", model="clip:openai/clip-vit-base-patch32", api_name="/explain"
        )
    assert_plain_error(caught.value, "could not load CLIP", "offline")
    assert time.monotonic() - started < 60


@pytest.fixture(scope="module")
def chelsea_run(client):
    started = time.monotonic()
    out = client.predict(handle_file(str(CHELSEA)), "a cat", api_name="/explain")
    print(f"chelsea.jpg 'a cat', uncached, default settings: {time.monotonic() - started:.1f} s")
    return out


def test_example_comes_back_with_overlays_verdicts_curves_and_table(chelsea_run, outputs):
    out = chelsea_run
    assert "Score of “a cat”" in value(outputs(out, "Score")) and "Egyptian cat" in value(outputs(out, "Score"))
    assert not visible(outputs(out, "Probability of each prompt"))
    assert value(outputs(out, "Status")).startswith("Done")

    photo = Image.open(CHELSEA)
    for name, method in METHODS.items():
        picture, caption = outputs(out, method.title), outputs(out, f"{method.title} caption")
        if name not in DEFAULT_METHODS:
            assert not visible(picture) and not visible(caption)
            continue
        assert visible(picture) and visible(caption)
        with Image.open(value(picture)) as overlay:
            assert overlay.format == "PNG" and max(overlay.size) == 512
            assert abs(overlay.width / overlay.height - photo.width / photo.height) < 0.01
        text = value(caption)
        for fragment in (" s ·", "forward pass", "SRG ", "faithful than random order", "deletion AUC", "insertion AUC"):
            assert fragment in text, text

    for label in ("Deletion curve", "Insertion curve"):
        with Image.open(value(outputs(out, label))) as plot:
            assert plot.width > 400 and plot.height > 300

    table = value(outputs(out, "Area under the curves (AUC) and SRG"))
    assert table["headers"][:3] == ["Method", "SRG (higher is better)", "More faithful than random order?"]
    assert [row[0] for row in table["data"]] == [*(METHODS[m].title for m in DEFAULT_METHODS), "Random order"]
    for row in table["data"][:-1]:
        assert isinstance(row[1], (int, float)) and row[2] in ("yes", "no")

    how = value(outputs(out, "How to read this"))
    assert "Deletion curve" in how and "This run" in how and "SRG = insertion AUC − deletion AUC" in how

    with zipfile.ZipFile(
        value(outputs(out, "Download everything: overlays (PNG), maps (NPZ), curves (CSV + PNG), result.json"))
    ) as bundle:
        names = set(bundle.namelist())
        assert {*(f"{m}.png" for m in DEFAULT_METHODS), "curves.csv", "curves.png", "result.json", "maps.npz"} <= names
        summary = json.loads(bundle.read("result.json"))
        csv_text = bundle.read("curves.csv").decode()
    assert summary["prompt"] == "a cat" and summary["model"] == "bundled"
    assert summary["params"]["seed"] == 0 and summary["params"]["ig_steps"] == 32
    assert summary["params"]["methods"] == list(DEFAULT_METHODS)
    assert summary["render"]["colour_map"] == "inferno"
    assert csv_text.splitlines()[0] == "method,curve,fraction,score,normalized,substrate,probability"
    assert {*DEFAULT_METHODS, "random"} <= {line.split(",")[0] for line in csv_text.splitlines()[1:]}


def test_scrubber_and_step_through_come_ready_and_redraw_without_the_model(chelsea_run, outputs, client, app_url):
    out = chelsea_run
    steps = PARAMS["curve_steps"].default
    scrubber = outputs(out, "Curve scrubber: step of the curves (the fraction of pixels removed or revealed)")
    assert (scrubber["maximum"], scrubber["value"]) == (steps, round(0.3 * steps))
    assert "**30% of the pixels**" in value(outputs(out, "Scores at this step"))
    step = outputs(out, "Region search step-through: regions chosen so far")
    assert step["visible"] and step["value"] == 5 and step["maximum"] >= 20
    assert "Step 5 of" in value(outputs(out, "This step of the search"))

    bundle = handle_file(
        value(outputs(out, "Download everything: overlays (PNG), maps (NPZ), curves (CSV + PNG), result.json"))
    )
    before = forward_passes(app_url)
    pictures, texts = [], []
    for k in (0, 10, steps):
        picture, text, deletion, insertion = client.predict(bundle, k, api_name="/scrub")
        pictures.append(Image.open(picture).tobytes())
        texts.append(text)
    assert len(set(pictures)) == 3 and f"step 10 of {steps}" in texts[1]
    first, first_text = client.predict(bundle, 1, api_name="/step_through")
    last, last_text = client.predict(bundle, 12, api_name="/step_through")
    assert Image.open(value(first)).tobytes() != Image.open(value(last)).tobytes()
    assert "Step 1 of" in first_text and "Step 12 of" in last_text
    client.predict(bundle, 0.8, "viridis", "smoothed", api_name="/restyle")
    assert forward_passes(app_url) == before, "a replay asked the model"


def test_contrast_prompts_give_probabilities_and_only_chosen_methods(client, outputs):
    out = client.predict(
        handle_file(str(CHELSEA)),
        "a cat",
        contrast="a tiger, a lynx",
        methods=["gradcam"],
        curve_steps=5,
        api_name="/explain",
    )
    probabilities = outputs(out, "Probability of each prompt")
    assert visible(probabilities)
    labels = {c["label"]: c["confidence"] for c in value(probabilities)["confidences"]}
    assert set(labels) == {"a cat", "a tiger", "a lynx"}
    assert abs(sum(labels.values()) - 1) < 1e-3 and labels["a cat"] > 0.5
    assert "rather than" in value(outputs(out, "Score"))
    assert visible(outputs(out, "Grad-CAM"))
    for name, method in METHODS.items():
        if name != "gradcam":
            assert not visible(outputs(out, method.title))
    assert [row[0] for row in value(outputs(out, "Area under the curves (AUC) and SRG"))["data"]] == [
        "Grad-CAM",
        "Random order",
    ]
    assert not visible(outputs(out, "Region search step-through: regions chosen so far"))


def test_sanity_check_shows_a_strip_and_its_words(client, outputs):
    out = client.predict(
        handle_file(str(CHELSEA)), "a cat", methods=["gradcam"], curve_steps=4, sanity=True, api_name="/explain"
    )
    strip = outputs(out, "Sanity check: the maps as the model is destroyed")
    assert visible(strip)
    with Image.open(value(strip)) as picture:
        assert picture.width > 600  # the trained model's map and one per stage
    text = value(outputs(out, "Sanity check"))
    assert "not a ranking" in text and "**Grad-CAM**: rank correlation with the original map" in text
    with zipfile.ZipFile(
        value(outputs(out, "Download everything: overlays (PNG), maps (NPZ), curves (CSV + PNG), result.json"))
    ) as bundle:
        summary = json.loads(bundle.read("result.json"))
    assert [s["stage"] for s in summary["sanity"]["gradcam"]][0] == "fc"  # the top layer first


def test_refine_reruns_region_search_alone_with_plain_greedy(client, outputs, app_url):
    out = client.predict(
        handle_file(str(CHELSEA)),
        "a cat",
        methods=["gradcam", "region"],
        n_regions=9,
        region_kind="grid",
        curve_steps=4,
        api_name="/explain",
    )
    download = "Download everything: overlays (PNG), maps (NPZ), curves (CSV + PNG), result.json"
    gradcam_before = value(outputs(out, "Grad-CAM caption"))
    before = forward_passes(app_url)
    refined = client.predict(
        handle_file(value(outputs(out, download))), 0.5, "inferno", "raw", api_name="/refine_region"
    )
    # Plain greedy over 9 regions scores each distinct set once: far more than the fast search's 47.
    assert forward_passes(app_url) - before >= 9 * 10 // 2
    assert "refined with plain greedy" in value(outputs(refined, "Status"))
    assert "(plain greedy)" in value(outputs(refined, "This step of the search"))
    assert value(outputs(refined, "Grad-CAM caption")) == gradcam_before  # the other methods are kept
    with zipfile.ZipFile(value(outputs(refined, download))) as bundle:
        summary = json.loads(bundle.read("result.json"))
    assert summary["params"]["region_search"] == "greedy"
    assert summary["methods"]["region"]["meta"]["search"] == "greedy"
    assert list(summary["methods"]) == ["gradcam", "region"]


def test_refine_before_any_run_is_a_plain_error(client):
    with pytest.raises(AppError) as caught:
        client.predict(None, 0.5, "inferno", "raw", api_name="/refine_region")
    assert_plain_error(caught.value, "run an explanation first")


def test_cancel_stops_the_run_and_frees_the_model(client, outputs):
    slow = client.submit(
        handle_file(str(CHELSEA)),
        "a cat",
        methods=["region"],
        region_search="greedy",
        n_regions=196,
        curve_steps=200,
        api_name="/explain",
    )
    deadline = time.monotonic() + 60
    while slow.status().code.name not in ("PROCESSING", "PROGRESS", "ITERATING"):
        assert time.monotonic() < deadline, f"the run never started: {slow.status()}"
        time.sleep(0.2)
    time.sleep(3)  # well inside the greedy search
    assert not slow.done()
    slow.cancel()
    started = time.monotonic()
    out = client.predict(handle_file(str(CHELSEA)), "a cat", methods=["gradcam"], curve_steps=5, api_name="/explain")
    # The greedy search over 196 regions alone takes minutes; a quick run right after shows it stopped.
    assert time.monotonic() - started < 45
    assert visible(outputs(out, "Grad-CAM"))
