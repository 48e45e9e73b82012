"""The words of a result (explainers/report.py), on small hand-made Results: no model, no app."""

from __future__ import annotations

import ast
import math

import numpy as np
import pytest
from conftest import ROOT

from explainers import report
from explainers.methods import METHODS
from explainers.models.base import CONTRAST_MEANING
from explainers.models.classifier import LOG_PROBABILITY_MEANING
from explainers.models.clip import LOGIT_MEANING
from explainers.types import Curve, Curves, MethodResult, RandomReference, Result, SaliencyMap, Target


def curve(kind: str, normalized) -> Curve:
    values = np.asarray(normalized, dtype=np.float64)
    fractions = np.linspace(0.0, 1.0, len(values))
    return Curve(kind, fractions, values.copy(), values, float(np.trapezoid(values, fractions)), 1.0, 0.0)


def curves(deletion, insertion) -> Curves:
    return Curves(curve("deletion", deletion), curve("insertion", insertion))


FAITHFUL = curves([1.0, 0.2, 0.0], [0.0, 0.8, 1.0])  # AUCs 0.35 and 0.65: SRG 0.3
RANDOM = curves([1.0, 0.5, 0.0], [0.0, 0.5, 1.0])  # SRG 0


def path(n: int, scored: int) -> list[dict]:
    """A region search's path over n regions whose first ``scored`` steps were scored."""
    return [
        {
            "region": (3 * k) % n,
            "gain": 0.1 * (n - k),
            "kept": (k + 1) / n if k < scored else None,
            "removed": 1 - (k + 1) / n if k < scored else None,
        }
        for k in range(n)
    ]


def make_result(
    methods=None,
    model="bundled",
    score=math.log(0.8),
    contrast=(),
    random_srgs=(0.0, 0.05, -0.02),
    random_curves=RANDOM,
    steps=2,
    probability=None,
) -> Result:
    """A result as the model ``model`` would give it: its score's meaning and probability as that
    adapter declares them (bundled: a log-probability, its exp; CLIP: a logit, with ``probability``
    its softmax against the vocabulary; with contrast prompts: the probability among them)."""
    methods = methods if methods is not None else {"gradcam": FAITHFUL}
    built = {}
    for name, method_curves in methods.items():
        meta = {"order": [0, 3, 1, 2], "path": path(4, 2), "search": "fast", "n_regions": 4} if name == "region" else {}
        built[name] = MethodResult(
            SaliencyMap(name, np.zeros((4, 4)), seconds=1.25, forward_passes=7, meta=meta), method_curves
        )
    return Result(
        model=model,
        target=Target("a cat", tuple(contrast)),
        score=score,
        prompt_probabilities={"a cat": score, **{c: (1 - score) / len(contrast) for c in contrast}}
        if contrast
        else None,
        image=np.zeros((4, 4, 3), np.uint8),
        methods=built,
        random=RandomReference(random_curves, tuple(random_srgs), "pixels", 0),
        params={"curve_steps": steps, "substrate": "black", "seed": 0},
        seconds=3.5,
        probability=score if contrast else probability if model.startswith("clip") else math.exp(score),
        score_meaning=CONTRAST_MEANING
        if contrast
        else LOGIT_MEANING
        if model.startswith("clip")
        else LOG_PROBABILITY_MEANING,
    )


def test_verdict_says_more_faithful_only_above_every_random_ordering():
    result = make_result({"gradcam": FAITHFUL, "ig": curves([1.0, 0.5, 0.0], [0.0, 0.56, 1.0])})
    assert report.verdict(result, "gradcam").startswith("SRG 0.300: **more faithful than random order**")
    assert "at most 0.050" in report.verdict(result, "gradcam")
    # SRG 0.03 is above the random reference's mean (0) but within its spread (one ordering reaches 0.05).
    ig = report.verdict(result, "ig")
    assert "**not more faithful than random order**" in ig and "0.050" in ig and "SRG 0.030" in ig


def test_caption_has_cost_verdict_and_both_aucs():
    text = report.caption(make_result(), "gradcam")
    for fragment in (
        "**Grad-CAM**",
        "1.2 s",
        "7 forward passes",
        "more faithful than random order",
        "insertion AUC **0.650**",
        "deletion AUC **0.350**",
    ):
        assert fragment in text, text


def test_prompt_probability_by_kind_of_score():
    assert report.prompt_probability(make_result(score=math.log(0.25))) == pytest.approx(0.25)
    assert report.prompt_probability(make_result(score=0.7, contrast=("a dog",))) == pytest.approx(0.7)
    clip = "clip:openai/clip-vit-base-patch32"
    assert report.prompt_probability(make_result(model=clip, score=25.0, probability=0.3)) == pytest.approx(0.3)
    assert report.prompt_probability(make_result(model=clip, score=25.0)) is None  # none given: none said


def test_unsure_model_is_warned_before_the_curves():
    unsure = report.warnings(make_result(score=math.log(0.05)))
    assert len(unsure) == 1 and "unsure" in unsure[0] and "5.0%" in unsure[0] and "20%" in unsure[0]
    assert report.warnings(make_result(score=math.log(0.5))) == []
    # CLIP's probability is against a fixed vocabulary (other names of the same thing share it): no warning.
    assert report.warnings(make_result(model="clip:x", score=-3.0, probability=0.01)) == []
    beaten = report.warnings(make_result(score=0.1, contrast=("a tiger", "a lynx")))
    assert "less likely than the other prompts" in beaten[0]
    assert report.warnings_markdown(make_result(score=math.log(0.05))).startswith("**Careful.**")


def test_curves_leaving_the_band_are_warned():
    wild = make_result({"gradcam": curves([1.0, 1.6, 0.0], [0.0, 0.8, 1.0])})
    found = report.warnings(wild)
    assert len(found) == 1 and "Grad-CAM" in found[0] and "band from 0 to 1" in found[0]


def test_score_sentence_for_each_kind_of_model():
    assert "probability 80.0%" in report.score_markdown(make_result(), [("Egyptian cat", 0.8), ("lynx", 0.001)])
    text = report.score_markdown(make_result(), [("Egyptian cat", 0.8), ("lynx", 0.001)])
    assert "Egyptian cat (80%)" in text and "lynx" not in text  # classes under 1 % are left out
    assert "rather than “a dog”: 70.0%" in report.score_markdown(make_result(score=0.7, contrast=("a dog",)))
    clip = report.score_markdown(make_result(model="clip:x", score=25.0, probability=0.42))
    assert "CLIP's logit" in clip and "probability 42.0%" in clip and "1000 class names" in clip
    assert "log of the probability" in report.score_markdown(make_result())  # the model's own words


def test_how_to_read_takes_every_note_from_the_registry():
    text = report.how_to_read()
    for method in METHODS.values():
        assert method.note in text
    for fragment in (
        "SRG = insertion AUC − deletion AUC",
        "salt noise",
        "perceptually uniform",
        "step-through",
        "plain greedy",
        "99th percentile",
    ):
        assert fragment in text, fragment
    run = report.how_to_read(result=make_result(score=math.log(0.05)))
    assert METHODS["gradcam"].note in run and METHODS["ig"].note not in run  # only the run's methods
    assert "#### This run" in run and "Grad-CAM: SRG 0.300" in run and "**Careful.**" in run


def test_scrubber_text_reads_the_curves_at_the_step():
    result = make_result({"gradcam": FAITHFUL})
    text = report.scrub_markdown(result, 1)
    assert "**50% of the pixels** (step 1 of 2)" in text
    assert "top 50% deleted → 0.20; top 50% revealed → 0.80" in text
    assert "Random order**: top 50% deleted → 0.50" in text
    assert "step 2 of 2" in report.scrub_markdown(result, 99)  # clamped to the last step


def test_step_text_shows_gain_scores_and_estimated_steps():
    result = make_result({"region": FAITHFUL})
    assert "Step 0 of 4" in report.step_markdown(result, "region", 0)
    second = report.step_markdown(result, "region", 2)
    assert "Step 2 of 4" in second and "region 3 added" in second and "gain in F +0.300" in second
    assert "score **0.50**" in second and "(estimated)" not in second
    fourth = report.step_markdown(result, "region", 4)
    assert "not scored" in fourth and "(estimated)" in fourth and "did not ask the model" in fourth
    assert "was not part of this run" in report.step_markdown(make_result(), "region", 3)


def test_colour_bar_holds_every_stop_in_order():
    html = report.colour_bar_html(["#000000", "#ff0000", "#ffffff"], "low", "high")
    assert "linear-gradient(to right, #000000, #ff0000, #ffffff)" in html
    assert html.index("<span>low") < html.index("linear-gradient") < html.index("<span>high")


def test_sentence():
    assert report.sentence("  the prompt   is empty ") == "The prompt is empty."
    assert report.sentence("Done!") == "Done!"
    assert report.sentence("") == "Something went wrong."


def test_report_imports_neither_gradio_nor_torch_of_its_own():
    tree = ast.parse((ROOT / "explainers" / "report.py").read_text())
    names = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    names |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and not node.level
    }
    assert not names & {"gradio", "torch"}, names


def test_a_peak_above_the_photo_gets_its_own_sentence_and_the_srg_stays_clipped():
    # The left half alone scores 1.5 times the photo: the caption says so; the verdict's SRG is the
    # clipped one (the curve counts up to 1 in the AUC).
    over = curves([1.0, 0.2, 0.0], [0.0, 1.5, 1.0])
    over = Curves(
        over.deletion,
        Curve("insertion", over.insertion.fractions, over.insertion.scores, over.insertion.normalized, 0.5, 1.0, 0.0),
    )
    result = make_result({"gradcam": over})
    caption = report.caption(result, "gradcam")
    assert "The best 50% of the pixels alone scores higher than the whole photo (peak 1.50" in caption
    assert over.insertion.auc_unclipped == pytest.approx(1.0) and over.insertion.overshoot_area == pytest.approx(0.25)
    assert report.peak_sentence(make_result(), "gradcam") == ""  # FAITHFUL peaks at the photo itself
