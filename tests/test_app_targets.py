"""The app's VLM and detector targets (issue 21), driven through the page's own functions in
process (no server): "Show the model's answer or boxes" lists what the model offers, Run explains
the pick, says the resolved answer or box before the maps and outlines a box on every map, and
bad input is one plain sentence while the page keeps serving.

The fast tests build targets by hand; the slow ones use tiny random models of real architecture
(explainers.testing) saved to a temporary folder and loaded back as a user's folder is
(SALIENCY_LAB_ALLOW_LOCAL_MODELS=1, no hub). Their answers and boxes mean nothing; what is tested
is that the page passes the model's own targets through unchanged.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explainers import app_runtime, render, report
from explainers.errors import UserError
from explainers.models.clip import ALLOW_LOCAL_ENV
from explainers.models.detector import BoxTarget, parse_box
from explainers.models.vlm import AnswerTarget, parse_token_ids
from explainers.types import SaliencyMap, Target

ROOT = Path(__file__).resolve().parents[1]
CHELSEA = str(ROOT / "assets" / "chelsea.jpg")
QUESTION = "what is in the image?"
CYAN = np.array(render.OUTLINE_COLOUR)


def answer() -> AnswerTarget:
    return AnswerTarget(QUESTION, answer="a cat", tokens=("a", " cat"), token_ids=(5, 77))


def box() -> BoxTarget:
    return BoxTarget("a cat", box=(10.0, 20.0, 30.5, 40.0), photo_size=(100, 50), label_probability=0.8, detected=True)


# --- fast: the targets' own words for the page -----------------------------------------------


def test_a_pick_names_its_target_exactly_and_parses_back():
    whole = answer()
    assert whole.pinned() == {"answer_ids": "5,77"}
    assert parse_token_ids(whole.pinned()["answer_ids"]) == whole.token_ids
    tokens = whole.parts()
    assert [t.token_index for t in tokens] == [0, 1] and tokens[1].pinned() == {"answer_ids": "5,77", "answer_token": 1}
    assert tokens[1].parts() == []  # a token has no narrower parts
    assert "“ cat”" in tokens[1].choice_label() and "2 tokens" in whole.choice_label()
    target = box()
    assert parse_box(target.pinned()["box"]) == target.box  # exact, not rounded to pixels
    assert target.outline() == pytest.approx((0.1, 0.4, 0.305, 0.8))
    assert "80%" in target.choice_label()
    plain = Target("a cat")
    assert plain.pinned() == {} and plain.parts() == [] and plain.outline() is None


def test_a_choice_value_reads_back_and_anything_else_is_one_sentence():
    assert app_runtime.target_options("") == {} and app_runtime.target_options(None) == {}
    assert app_runtime.target_options(app_runtime.target_choice(box())) == {"box": "10,20,30.5,40"}
    assert app_runtime.target_choice(Target("a cat")) == ""
    for bad in ("a cat", "[1, 2]", '{"box": ', 7):
        with pytest.raises(UserError, match="the target to explain must be one the model offered") as caught:
            app_runtime.target_options(bad)
        assert "\n" not in str(caught.value)


def test_the_box_is_framed_where_it_is_and_nowhere_else():
    picture = Image.new("RGB", (200, 100))
    framed = np.asarray(render.outlined(picture, (0.25, 0.2, 0.75, 0.8)))
    x0, y0, x1 = round(0.25 * 199), round(0.2 * 99), round(0.75 * 199)
    assert (framed[50, x0] == CYAN).all() and (framed[50, x1] == CYAN).all() and (framed[y0, 100] == CYAN).all()
    assert (framed[50, 100] == 0).all() and (framed[5, 5] == 0).all()  # inside and outside untouched
    saliency = SaliencyMap("gradcam", np.random.default_rng(0).random((10, 20)))
    image = np.zeros((10, 20, 3), np.uint8)
    plain = np.asarray(render.map_picture(image, saliency, size=(200, 100)))
    boxed = np.asarray(render.map_picture(image, saliency, size=(200, 100), outline=(0.25, 0.2, 0.75, 0.8)))
    assert (boxed[50, x0] == CYAN).all() and not (plain[50, x0] == CYAN).all()
    assert (boxed[50, 100] == plain[50, 100]).all()


def test_the_boxes_are_drawn_numbered_and_a_prompt_has_no_picture():
    photo = Image.new("RGB", (100, 50))
    assert render.targets_picture(photo, [Target("a cat")]) is None
    drawn = np.asarray(
        render.targets_picture(photo, [box(), BoxTarget("a cat", box=(60, 5, 90, 45), photo_size=(100, 50))])
    )
    assert drawn.shape == (50, 100, 3)
    assert (drawn[30, 10] == render.BOX_COLOURS[0]).all() and (drawn[25, 60] == render.BOX_COLOURS[1]).all()


def test_the_offer_says_what_to_pick():
    words = report.offer_markdown(QUESTION, [answer()])
    assert "offers 1 target" in words and "token 1 of the answer: “ cat”" in words and "press Run" in words
    assert "nothing to pick" in report.offer_markdown("a cat", [Target("a cat")])


def test_a_prompt_model_offers_nothing_to_pick(bundled):
    offer = app_runtime.offer_targets(Image.open(CHELSEA), "a cat", bundled, "cpu", {})
    assert offer.choices == [app_runtime.MODEL_DECIDES] and offer.picture is None
    assert "nothing to pick" in offer.markdown


def test_only_the_models_own_kind_parameters_are_passed():
    given = {"max_new_tokens": 8, "box_threshold": 0.3, "seed": 1}
    assert app_runtime.kind_options("vlm:org/name", given) == {"max_new_tokens": 8}
    assert app_runtime.kind_options("detector:org/name", given) == {"box_threshold": 0.3}
    assert app_runtime.kind_options("bundled", given) == {}
    assert {p.name for p in app_runtime.page_target_params()} == {"max_new_tokens", "box_threshold"}


# --- slow: the page with tiny random models ---------------------------------------------------


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """app.py's functions with fresh result components, and the tiny models' folders."""
    from explainers.testing import save_tiny_llava, save_tiny_owlv2

    folder = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SALIENCY_EXAMPLES_CACHE", "off")
        patch.setenv("GRADIO_TEMP_DIR", str(folder / "gradio"))
        import app

        c = app.result_components()
        yield {
            "app": app,
            "c": c,
            "handlers": app.make_handlers(c),
            "vlm": f"vlm:{save_tiny_llava(folder / 'llava')}",
            "detector": f"detector:{save_tiny_owlv2(folder / 'owl')}",
        }


@pytest.fixture(autouse=True)
def local_models(monkeypatch):
    monkeypatch.setenv(ALLOW_LOCAL_ENV, "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


FAST = {"curve_steps": 4, "n_random": 1, "rise_masks": 40}


def run(page, **given) -> list[dict]:
    """Every update the Run button's handler yields for these inputs (the page's defaults otherwise)."""
    app = page["app"]
    values = {**app.input_defaults(), "image": CHELSEA, **FAST, **given}

    async def collect() -> list[dict]:
        return [out async for out in page["handlers"]["run_explain"](*[values[n] for n in app.input_names()])]

    return asyncio.run(collect())


def picture(update) -> np.ndarray:
    """The pixels of an image update as the page got them (Gradio's file of it)."""
    return np.asarray(Image.open(update.value["path"]).convert("RGB")).astype(int)


def assert_one_sentence(error: BaseException, *fragments: str) -> None:
    message = getattr(error, "message", str(error))
    assert "Traceback" not in message and 'File "' not in message and "\n" not in message, message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message


@pytest.mark.slow
def test_the_page_shows_a_vlms_answer_and_its_tokens_then_explains_the_token_picked(page):
    app, c = page["app"], page["c"]
    target, shown, words = app.offer(CHELSEA, QUESTION, page["vlm"], 4, 0.1)
    choices = target.choices
    offered = json.loads(choices[0][1])["answer_ids"].split(",")
    assert target.value == choices[0][1] and not shown.visible  # the whole answer first; no picture
    assert len(offered) >= 2 and len(choices) == 1 + len(offered)  # the answer, then each token
    assert "offers 1 target" in words and "token 1 of the answer" in words
    picked = json.loads(choices[2][1])
    assert picked == {"answer_ids": ",".join(offered), "answer_token": 1}

    updates = run(page, prompt=QUESTION, model=page["vlm"], target=choices[2][1], methods=["gradcam", "rise"])
    said = next(i for i, u in enumerate(updates) if "Explaining token 1 of the answer" in str(u.get(c["score"], "")))
    first_map = next(
        i
        for i, u in enumerate(updates)
        if any(getattr(u.get(c[f"overlay-{m}"]), "value", None) for m in ("gradcam", "rise"))
    )
    assert said < first_map  # the answer is on the page before its maps
    assert "Probability of token 1 of the answer" in updates[-1][c["score"]]
    result, _ = app_runtime.load_download(updates[-1][c["download"]])
    summary = result.target.summary()  # read back from the bundle (SavedTarget)
    assert summary["kind"] == "answer" and summary["token_index"] == 1
    assert [str(i) for i in summary["token_ids"]] == offered  # exactly the tokens the model offered
    assert result.target.pinned() == picked and 0 <= result.probability <= 1
    refined = app_runtime.refine(result, "region", model=page["vlm"])  # Refine: the same token, no new answer
    full = refined.methods["region"].curves.deletion.scores[0]  # the whole photo: the refined map's target
    assert full == pytest.approx(result.score, rel=1e-4) and refined.target.summary() == summary


@pytest.mark.slow
def test_the_page_draws_a_detectors_boxes_then_outlines_the_box_picked_on_every_map(page):
    app, c = page["app"], page["c"]
    target, shown, words = app.offer(CHELSEA, "a cat", page["detector"], 16, 0.0)
    boxes = [choice for choice in target.choices if "box" in json.loads(choice[1])]
    assert len(boxes) >= 2 and shown.visible and words.count("the box") == len(boxes)
    assert target.choices[1][0].startswith("2. the box")
    drawn = picture(shown)
    width, height = Image.open(CHELSEA).size
    assert drawn.shape[:2] == app_runtime.fit((width, height), app.DISPLAY_SIDE)[::-1]
    chosen = parse_box(json.loads(boxes[1][1])["box"])

    updates = run(page, prompt="a cat", model=page["detector"], target=boxes[1][1], methods=["gradcam", "rise"])
    assert "Explaining the box" in "".join(str(u.get(c["score"], "")) for u in updates)
    final = updates[-1]
    assert f"the box {[round(v) for v in chosen]}" in final[c["score"]]
    result, size = app_runtime.load_download(final[c["download"]])
    assert result.target.summary()["box"] == pytest.approx(list(chosen))
    show = app_runtime.fit(size, app.DISPLAY_SIDE)
    x0 = round(chosen[0] / width * (show[0] - 1))
    row = round((chosen[1] + chosen[3]) / 2 / height * (show[1] - 1))
    for method in ("gradcam", "rise"):
        on_page = picture(final[c[f"overlay-{method}"]])  # webp: the frame's cyan within a margin
        assert abs(on_page[row, x0 + 1] - CYAN).max() < 60, method
        redrawn = np.asarray(render.method_picture(result, method, size=show))  # replays from the bundle
        assert (redrawn[row, x0 + 1] == CYAN).all(), method
    assert result.photo_size == (width, height)
    refined = app_runtime.refine(result, "region", model=page["detector"])  # Refine: the picked box, not the best
    full = refined.methods["region"].curves.deletion.scores[0]  # the whole photo: the refined map's target
    assert full == pytest.approx(result.score, rel=1e-4) and refined.target.summary() == result.target.summary()


@pytest.mark.slow
def test_bad_input_is_one_sentence_and_the_page_keeps_serving(page):
    import gradio as gr

    app = page["app"]
    cases = [
        (lambda: app.offer(CHELSEA, "a cat", page["detector"], 16, 1.0), ("finds no box", "lower the box threshold")),
        (lambda: app.offer(CHELSEA, "a cat", "vlm:/no/such/folder", 16, 0.1), ("/no/such/folder",)),
        (lambda: app.offer(None, "a cat", page["detector"], 16, 0.1), ("add a photo first",)),
        (lambda: app.offer(CHELSEA, "  ", page["vlm"], 4, 0.1), ("the prompt is empty",)),
        (lambda: app.offer(CHELSEA, "a cat", "owl:thing", 4, 0.1), ("unknown model",)),
        (
            lambda: run(page, prompt="a cat", model=page["detector"], target='{"box": "0,0,90000,90000"}'),
            ("box",),
        ),
        (
            lambda: run(page, prompt="a cat", model="bundled", target='{"box": "1,2,30,40"}', methods=["gradcam"]),
            ("box is a parameter of detector:",),
        ),
        (lambda: run(page, prompt="a cat", model=page["vlm"], target="a cat"), ("must be one the model offered",)),
        (
            lambda: run(page, prompt=QUESTION, model=page["vlm"], target='{"answer_ids": "1,2", "answer": "x"}'),
            ("not both",),
        ),
    ]
    for call, fragments in cases:
        with pytest.raises(gr.Error) as caught:
            call()
        assert_one_sentence(caught.value, *fragments)
    target, _, _ = app.offer(CHELSEA, QUESTION, page["vlm"], 4, 0.1)  # still serving
    assert json.loads(target.value)["answer_ids"]


@pytest.mark.slow
def test_a_new_photo_prompt_or_model_forgets_the_last_offer(page):
    target, shown, words = page["app"].forget_offer()
    assert target.choices == [app_runtime.MODEL_DECIDES] and target.value == ""
    assert not shown.visible and words == ""
