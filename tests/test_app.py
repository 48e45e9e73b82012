"""The Gradio app through its API (gradio_client), against ``app.py`` launched on 127.0.0.1.

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


gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHELSEA = ROOT / "assets" / "chelsea.jpg"
METHODS = ("gradcam", "ig", "region")
# Output positions of /explain (see app.build_demo).
SCORE, PROBS, OVERLAY0, DELETION, INSERTION, TABLE, HOW_TO_READ, DOWNLOAD, STATUS = 0, 1, 2, 8, 9, 10, 11, 12, 13


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def value(output):
    """An output's value, whether it came back plain or as a component update."""
    if isinstance(output, dict) and output.get("__type__") == "update":
        return output.get("value")
    return output


def visible(output) -> bool:
    return not (isinstance(output, dict) and output.get("__type__") == "update" and output.get("visible") is False)


def assert_plain_error(error: Exception, *fragments: str) -> None:
    message = str(error)
    assert "Traceback" not in message and "File \"" not in message, message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message


def test_api_has_explain_with_image_and_prompt_first(client):
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/explain"]
    names = [p["parameter_name"] for p in endpoint["parameters"]]
    assert names[:2] == ["image", "prompt"]
    assert all(p["parameter_has_default"] for p in endpoint["parameters"][2:]), endpoint["parameters"]


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


def test_clip_offline_is_a_plain_error(client):
    started = time.monotonic()
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(CHELSEA)), "a cat", model="clip:openai/clip-vit-base-patch32",
                       api_name="/explain")
    assert_plain_error(caught.value, "could not load CLIP", "offline")
    assert time.monotonic() - started < 60


def test_example_comes_back_with_overlays_curves_and_table(client, tmp_path):
    started = time.monotonic()
    out = client.predict(handle_file(str(CHELSEA)), "a cat", api_name="/explain")
    seconds = time.monotonic() - started
    print(f"chelsea.jpg 'a cat', uncached, default settings: {seconds:.1f} s")
    assert "Score of “a cat”" in value(out[SCORE]) and "Egyptian cat" in value(out[SCORE])
    assert not visible(out[PROBS])

    photo = Image.open(CHELSEA)
    for i, name in enumerate(METHODS):
        picture, caption = out[OVERLAY0 + 2 * i], out[OVERLAY0 + 2 * i + 1]
        assert visible(picture) and visible(caption)
        with Image.open(value(picture)) as overlay:
            assert overlay.format == "PNG"
            assert max(overlay.size) == 512
            assert abs(overlay.width / overlay.height - photo.width / photo.height) < 0.01
        text = value(caption)
        for fragment in (" s ·", "forward pass", "deletion AUC", "insertion AUC"):
            assert fragment in text, text

    for position in (DELETION, INSERTION):
        with Image.open(value(out[position])) as plot:
            assert plot.width > 400 and plot.height > 300

    table = value(out[TABLE])
    assert table["headers"][:3] == ["Method", "Insertion AUC (higher is better)", "Deletion AUC (lower is better)"]
    assert [row[0] for row in table["data"]] == ["Grad-CAM", "Integrated gradients", "Region search", "Random order"]
    for row in table["data"]:
        assert all(isinstance(x, (int, float)) for x in row[1:3])

    assert value(out[STATUS]).startswith("Done")
    assert "Deletion curve" in value(out[HOW_TO_READ]) and "This run" in value(out[HOW_TO_READ])

    with zipfile.ZipFile(value(out[DOWNLOAD])) as bundle:
        names = set(bundle.namelist())
        assert {"gradcam.png", "ig.png", "region.png", "curves.csv", "curves.png", "result.json"} <= names
        summary = json.loads(bundle.read("result.json"))
        csv_text = bundle.read("curves.csv").decode()
    assert summary["prompt"] == "a cat" and summary["model"] == "bundled"
    assert summary["params"]["seed"] == 0 and summary["params"]["ig_steps"] == 32
    assert summary["params"]["methods"] == list(METHODS)
    assert summary["render"]["colour_map"] == "jet"
    assert csv_text.splitlines()[0] == "method,curve,fraction,score,normalized"
    assert {"gradcam", "ig", "region", "random"} <= {line.split(",")[0] for line in csv_text.splitlines()[1:]}


def test_contrast_prompts_give_probabilities_and_only_chosen_methods(client):
    out = client.predict(handle_file(str(CHELSEA)), "a cat", contrast="a tiger, a lynx", methods=["gradcam"],
                         curve_steps=5, api_name="/explain")
    probabilities = value(out[PROBS])
    assert visible(out[PROBS])
    labels = {c["label"]: c["confidence"] for c in probabilities["confidences"]}
    assert set(labels) == {"a cat", "a tiger", "a lynx"}
    assert abs(sum(labels.values()) - 1) < 1e-3 and labels["a cat"] > 0.5
    assert "rather than" in value(out[SCORE])
    assert visible(out[OVERLAY0]) and not visible(out[OVERLAY0 + 2]) and not visible(out[OVERLAY0 + 4])
    assert [row[0] for row in value(out[TABLE])["data"]] == ["Grad-CAM", "Random order"]


def test_cancel_stops_the_run_and_frees_the_model(client):
    slow = client.submit(handle_file(str(CHELSEA)), "a cat", methods=["region"], region_search="greedy",
                         n_regions=196, curve_steps=200, api_name="/explain")
    deadline = time.monotonic() + 60
    while slow.status().code.name not in ("PROCESSING", "PROGRESS", "ITERATING"):
        assert time.monotonic() < deadline, f"the run never started: {slow.status()}"
        time.sleep(0.2)
    time.sleep(3)  # well inside the greedy search
    assert not slow.done()
    slow.cancel()
    started = time.monotonic()
    out = client.predict(handle_file(str(CHELSEA)), "a cat", methods=["gradcam"], curve_steps=5,
                         api_name="/explain")
    # The greedy search over 196 regions alone takes minutes; a quick run right after shows it stopped.
    assert time.monotonic() - started < 45
    assert visible(out[OVERLAY0])
