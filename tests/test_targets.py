"""Targets the model owns: the prompt target's summary, the probability and the score's meaning in
result.json, target parameters (text and parsed), declared gradients, and the model kind registry."""

from __future__ import annotations

import math

import pytest
from conftest import ASSETS
from toys import linear

from explainers import explain
from explainers.api import candidate_targets, split_options, target_params
from explainers.errors import UserError
from explainers.models import MODEL_KINDS, MODEL_MODULES, model_kind
from explainers.params import Param
from explainers.types import Target


def test_a_prompt_target_says_what_it_is():
    target = Target("a cat", ("a dog",))
    assert target.kind == "prompt"
    assert target.summary() == {"kind": "prompt", "prompt": "a cat", "contrast": ["a dog"]}
    assert target.describe() == "“a cat”"


def test_the_model_kinds_declare_their_target_parameters_once():
    assert {"vlm", "detector"} <= set(MODEL_KINDS)
    assert model_kind("vlm:org/name").name == "vlm" and model_kind("detector:./x").name == "detector"
    assert model_kind("bundled").params == () and model_kind("clip:openai/x").params == ()
    assert MODEL_MODULES[-2:] == ("vlm", "detector")  # one line per kind in the registry
    assert list(target_params("vlm:org/name")) == ["answer", "answer_token", "max_new_tokens", "answer_ids"]
    assert list(target_params("detector:org/name")) == ["box", "box_threshold"]
    assert target_params("bundled") == {}
    names = [p.name for kind in MODEL_KINDS.values() for p in kind.params]
    assert len(names) == len(set(names))  # one flag per name across kinds
    assert split_options("vlm:a/b", {"answer": "x", "curve_steps": 3, "box": None}) == (
        {"answer": "x"},
        {"curve_steps": 3},
    )


def test_text_parameters():
    spec = Param("answer", None, "the answer", kind=str, high=5)
    assert spec.check("  a cat ") == "a cat"
    assert spec.describe() == "text of at most 5 characters"
    with pytest.raises(UserError, match="answer must be text of at most 5 characters, not 6 characters"):
        spec.check("abcdef")
    with pytest.raises(UserError, match="--answer must be text"):
        spec.check(3, "--answer")


def test_result_json_says_the_target_its_probability_and_what_the_score_is(bundled, tiny_clip):
    result = explain(ASSETS / "chelsea.jpg", "a cat", model=bundled, methods=["gradcam"], curve_steps=2, n_random=1)
    summary = result.summary()
    assert summary["target"] == {"kind": "prompt", "prompt": "a cat", "contrast": []}
    assert summary["score_meaning"]["name"] == "log-probability"
    assert summary["probability"] == pytest.approx(math.exp(summary["score"]), rel=1e-6)
    clip = explain(ASSETS / "chelsea.jpg", "a cat", model=tiny_clip, methods=["gradcam"], curve_steps=2, n_random=1)
    assert 0 <= clip.summary()["probability"] <= 1 and clip.summary()["score_meaning"]["name"] == "logit"
    versus = explain(
        ASSETS / "chelsea.jpg", "a cat", ["a dog"], model=tiny_clip, methods=["gradcam"], curve_steps=2, n_random=1
    )
    assert versus.probability == pytest.approx(versus.score) and versus.score_meaning.name == "probability"


def test_a_prompt_model_offers_its_prompt(tiny_clip):
    assert candidate_targets(ASSETS / "chelsea.jpg", " a  cat ", model=tiny_clip) == [Target("a cat")]


def test_gradient_methods_are_refused_where_the_model_gives_no_gradients():
    import numpy as np

    adapter = linear(np.ones((8, 8)))
    adapter.gradients = False
    with pytest.raises(UserError, match=r"Grad-CAM and Integrated gradients need the model's gradients") as caught:
        explain(np.zeros((8, 8, 3), np.uint8), "x", model=adapter, methods=["gradcam", "ig", "rise"])
    assert "choose methods that only ask for scores (region, rise)" in str(caught.value)
