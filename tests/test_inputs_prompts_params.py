"""Prompts and parameters: cleaned or refused with one sentence naming what is wrong.

Most tests call the validators directly (no model). The ``test_explain_*`` tests at the end run the
bundled model (loaded once per session) through ``explain`` with the cheapest settings.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explainers.api import (
    DEFAULT_METHODS,
    DEFAULTS,
    MAX_CONTRAST,
    MAX_PROMPT_CHARS,
    PARAMS,
    _token_notes,
    clean_methods,
    clean_model,
    clean_prompts,
    validate_params,
)
from explainers.errors import UserError
from explainers.methods import METHODS
from explainers.models import ModelAdapter
from explainers.types import Target

CHEAP = {"methods": ["gradcam"], "curve_steps": 4, "n_random": 1}
# From the registry: every whole-number parameter, and every parameter with choices.
NUMERIC = {name: p for name, p in PARAMS.items() if not p.choices and p.kind is int}
CHOICES = {name: p.choices for name, p in PARAMS.items() if p.choices and not p.many}
LISTS = {name: p for name, p in PARAMS.items() if p.many}


def one_sentence(error: UserError) -> str:
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message and len(message) < 400, message
    return message


# ------------------------------------------------------------------------------------------
# Prompts


@pytest.mark.parametrize("prompt", ["", " ", "\t\n ", "\x00\x01", "\u3000", None])
def test_empty_or_blank_prompt(prompt):
    with pytest.raises(UserError) as caught:
        clean_prompts(prompt, None)
    assert "prompt is empty" in one_sentence(caught.value)


@pytest.mark.parametrize("prompt,kind", [(5, "int"), (["a cat"], "list"), (b"a cat", "bytes")])
def test_prompt_that_is_not_text(prompt, kind):
    with pytest.raises(UserError) as caught:
        clean_prompts(prompt, None)
    assert f"must be text, not {kind}" in one_sentence(caught.value)


@pytest.mark.parametrize(
    "prompt",
    [
        "a cat 🐱",
        "🐈‍⬛",
        "👩🏽‍🚀",
        "一只猫",
        "猫がいる",
        "고양이",
        "قطة على الأريكة",
        "חתול",
        "\u202bقطة\u202c",
        "a ca\u0301t",  # combining accent: NFC-composed
    ],
)
def test_unicode_prompts_are_kept(prompt):
    target, notes = clean_prompts(prompt, None)
    assert target.prompt == " ".join(prompt.split()).replace("a\u0301", "á") and notes == []


def test_whitespace_and_control_characters_are_tidied():
    target, _ = clean_prompts("  a\tbig\n\ncat\x00\x07 \ud800on a mat  ", None)
    assert target.prompt == "a big cat on a mat"


def test_long_prompt_is_cut_with_a_note():
    target, notes = clean_prompts("a cat " * 1000, None)
    assert len(target.prompt) <= MAX_PROMPT_CHARS
    assert any(f"first {MAX_PROMPT_CHARS} characters" in n for n in notes)


def test_contrast_prompts_duplicates_and_equal_to_the_prompt():
    target, notes = clean_prompts("a cat", ["a dog", "A  Dog", "a cat", " A CAT ", "", "  ", None, "a tiger"])
    assert target == Target("a cat", ("a dog", "a tiger"))
    assert sum("duplicate" in n for n in notes) == 1
    assert sum("equals the prompt" in n for n in notes) == 2


def test_contrast_prompts_as_one_string_and_limits():
    assert clean_prompts("a cat", "a dog")[0].contrast == ("a dog",)
    assert clean_prompts("a cat", [])[0].contrast == ()
    assert clean_prompts("a cat", ("a dog",))[0].contrast == ("a dog",)
    clean_prompts("a cat", [f"thing {i}" for i in range(MAX_CONTRAST)])
    with pytest.raises(UserError) as caught:
        clean_prompts("a cat", [f"thing {i}" for i in range(MAX_CONTRAST + 1)])
    assert f"at most {MAX_CONTRAST}" in one_sentence(caught.value)
    long_contrast = clean_prompts("a cat", ["a dog " * 500])
    assert len(long_contrast[0].contrast[0]) <= MAX_PROMPT_CHARS and "cut" in long_contrast[1][0]


@pytest.mark.parametrize("contrast,kind", [(5, "int"), ([5], "int"), ({"a": 1}, "dict"), ([["a dog"]], "list")])
def test_contrast_that_is_not_text(contrast, kind):
    with pytest.raises(UserError) as caught:
        clean_prompts("a cat", contrast)
    assert kind in one_sentence(caught.value)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=1500), st.none()), st.lists(st.one_of(st.text(max_size=50), st.none()), max_size=20))
def test_any_text_is_cleaned_or_refused(prompt, contrast):
    try:
        target, notes = clean_prompts(prompt, contrast)
    except UserError as error:
        one_sentence(error)
        return
    assert target.prompt and target.prompt == target.prompt.strip() and len(target.prompt) <= MAX_PROMPT_CHARS
    assert target.prompt.casefold() not in [c.casefold() for c in target.contrast]
    assert len({c.casefold() for c in target.contrast}) == len(target.contrast) <= MAX_CONTRAST
    assert all(isinstance(n, str) and "\n" not in n for n in notes)


class FakeAdapter(ModelAdapter):
    """Counts one token per word plus two, like a BERT tokenizer on plain words."""

    max_prompt_tokens = 10

    def prompt_tokens(self, prompt: str) -> int:
        return len(prompt.split()) + 2


def test_token_notes_name_the_limit():
    notes = _token_notes(FakeAdapter(), Target("one two three", ("a b c d e f g h i",)))
    assert notes == [
        "the contrast prompt 'a b c d e f g h i' is longer than the model's limit of 10 tokens; "
        "only its first 10 tokens were used"
    ]
    assert _token_notes(FakeAdapter(), Target("w " * 8)) == []  # exactly at the limit
    assert len(_token_notes(FakeAdapter(), Target("w " * 9))) == 1

    class NoCount(ModelAdapter):
        max_prompt_tokens = None

    assert _token_notes(NoCount(), Target("w " * 500)) == []


def test_token_notes_for_clip(tiny_clip):
    assert _token_notes(tiny_clip, Target("a photo of a cat")) == []
    notes = _token_notes(tiny_clip, Target("a photo of a cat " * 30))
    assert len(notes) == 1 and f"limit of {tiny_clip.max_prompt_tokens} tokens" in notes[0]


# ------------------------------------------------------------------------------------------
# Parameters


@pytest.mark.parametrize("name", sorted(NUMERIC))
@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        -(2**40),
        10**30,
        10**400,
        float("nan"),
        float("inf"),
        -float("inf"),
        2.5,
        1e300,
        "abc",
        "5",
        True,
        False,
        [3],
        {"a": 1},
        b"5",
        np.array([5]),
        3 + 0j,
    ],
)
def test_bad_numbers_name_the_parameter_and_its_range(name, value):
    spec = NUMERIC[name]
    if isinstance(value, int) and not isinstance(value, bool) and spec.low <= value <= spec.high:
        pytest.skip("in range for this parameter")
    with pytest.raises(UserError) as caught:
        validate_params({name: value})
    message = one_sentence(caught.value)
    assert message.startswith(f"{name} must be a whole number from {spec.low} to {spec.high}, not "), message


@pytest.mark.parametrize("name", sorted(NUMERIC))
def test_edges_of_every_numeric_range(name):
    spec = NUMERIC[name]
    assert validate_params({name: spec.low})[name] == spec.low
    assert validate_params({name: spec.high})[name] == spec.high
    assert validate_params({name: float(spec.low)})[name] == spec.low  # 20.0 from a slider is fine
    assert validate_params({name: np.int64(spec.high)})[name] == spec.high
    for outside in (spec.low - 1, spec.high + 1):
        with pytest.raises(UserError):
            validate_params({name: outside})


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(NUMERIC)),
    st.one_of(
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=2),
    ),
)
def test_any_numeric_value_is_accepted_in_range_or_refused_by_name(name, value):
    spec = NUMERIC[name]
    try:
        out = validate_params({name: value})
    except UserError as error:
        assert one_sentence(error).startswith(f"{name} must be a whole number from {spec.low} to {spec.high}")
        return
    assert type(out[name]) is int and spec.low <= out[name] <= spec.high
    if value is None:
        assert out[name] == DEFAULTS[name]
    else:
        assert out[name] == value and not isinstance(value, bool)


@pytest.mark.parametrize("name", sorted(CHOICES))
@pytest.mark.parametrize("value", ["", "foo", 5, ["black"], 1.5, True])
def test_bad_choices_name_the_parameter_and_the_choices(name, value):
    with pytest.raises(UserError) as caught:
        validate_params({name: value})
    assert one_sentence(caught.value).startswith(f"{name} must be one of {', '.join(CHOICES[name])}, not ")


@pytest.mark.parametrize("name", sorted(LISTS))
@pytest.mark.parametrize("value", ["foo", "black,foo", 5, ["black", 5], 1.5, True, {"black": 1}])
def test_bad_lists_name_the_parameter_and_the_choices(name, value):
    with pytest.raises(UserError) as caught:
        validate_params({name: value})
    choices = ", ".join(LISTS[name].choices)
    assert one_sentence(caught.value).startswith(f"{name} must be a comma-separated list from {choices}, not ")


def test_lists_keep_the_order_given_drop_repeats_and_blanks_and_empty_means_the_default():
    assert validate_params({"score_substrates": " Blur, black ,blur,"})["score_substrates"] == ("blur", "black")
    assert validate_params({"score_substrates": ["road", "BLACK"]})["score_substrates"] == ("road", "black")
    assert validate_params({"score_substrates": ""})["score_substrates"] == ()
    assert validate_params({"score_substrates": []})["score_substrates"] == ()


def test_choices_are_forgiving_about_case_and_spaces():
    assert validate_params({"substrate": " Blur "})["substrate"] == "blur"


def test_unknown_parameters_are_named():
    with pytest.raises(UserError) as caught:
        validate_params({"steps": 5, "colour": "red"})
    assert "unknown parameter(s): colour, steps" in one_sentence(caught.value)


def test_defaults_pass_and_none_means_default():
    assert validate_params({}) == DEFAULTS
    assert validate_params(dict.fromkeys(DEFAULTS)) == DEFAULTS


@pytest.mark.parametrize(
    "methods,expected",
    [
        ("gradcam", ["gradcam"]),
        ("gradcam, IG ,gradcam", ["gradcam", "ig"]),
        (["region", "ig"], ["region", "ig"]),
        (("gradcam",), ["gradcam"]),
        (None, list(DEFAULT_METHODS)),
    ],
)
def test_methods_accepted(methods, expected):
    assert clean_methods(methods) == expected


@pytest.mark.parametrize(
    "methods,words",
    [
        ("foo", ["unknown method 'foo'", ", ".join(METHODS)]),
        (["gradcam", "lime"], ["unknown method 'lime'"]),
        ("", ["at least one method"]),
        ([], ["at least one method"]),
        (" , ", ["at least one method"]),
        (5, ["methods must be", "not 5"]),
        ([None], ["not None"]),
        ({"gradcam": 1}, ["methods must be"]),
    ],
)
def test_methods_refused(methods, words):
    with pytest.raises(UserError) as caught:
        clean_methods(methods)
    message = one_sentence(caught.value)
    for word in words:
        assert word in message


def test_model_names_that_are_not_text():
    assert clean_model(None) == "bundled" and clean_model(" bundled ") == "bundled"
    for bad in (5, ["bundled"], {"x": 1}):
        with pytest.raises(UserError) as caught:
            clean_model(bad)
        assert "model must be a name" in one_sentence(caught.value)


# ------------------------------------------------------------------------------------------
# End to end through explain(): validation happens before any model work


def test_explain_refuses_before_loading_anything(monkeypatch):
    import explainers.api as api

    def no_loading(name):
        raise AssertionError("the model must not load for bad input")

    monkeypatch.setattr(api, "load_model", no_loading)
    cases = [
        ({"curve_steps": 0}, "curve_steps must be a whole number from 2 to 200"),
        ({"ig_steps": float("nan")}, "ig_steps must be a whole number"),
        ({"n_regions": "abc"}, "n_regions must be a whole number from 4 to 196"),
        ({"methods": "foo"}, "unknown method 'foo'"),
        ({"model": ["bundled"]}, "model must be a name"),
        ({"prompt": "  "}, "prompt is empty"),
        ({"image": b""}, "empty (0 bytes)"),
        ({"image": "/no/such.png"}, "no image file"),
        ({"contrast": 7}, "contrast prompts must be"),
    ]
    for change, words in cases:
        arguments = {"image": "assets/chelsea.jpg", "prompt": "a cat", **change}
        with pytest.raises(UserError) as caught:
            api.explain(arguments.pop("image"), arguments.pop("prompt"), **arguments)
        assert words in one_sentence(caught.value)


@pytest.mark.parametrize("prompt", ["🐱", "一只猫", "قطة على الأريكة"])
def test_explain_unicode_prompts(prompt):
    from explainers import explain

    result = explain("assets/chelsea.jpg", prompt, contrast=["a dog", "a dog", prompt], **CHEAP)
    assert result.target.prompt == prompt and result.target.contrast == ("a dog",)
    assert math.isfinite(result.score)
    assert any("duplicate" in n for n in result.notes) and any("equals the prompt" in n for n in result.notes)
    if prompt == "🐱":  # MiniLM reads emoji as [UNK]: the user is told
        assert any("knows none of the words" in n for n in result.notes)


def test_explain_long_prompt_notes_the_token_limit(bundled):
    from explainers import explain

    assert bundled.prompt_tokens("a cat") == 4  # [CLS] a cat [SEP]
    result = explain("assets/chelsea.jpg", "a cat " * 400, **CHEAP)
    assert any(f"first {MAX_PROMPT_CHARS} characters" in n for n in result.notes)
    assert any(f"limit of {bundled.max_prompt_tokens} tokens" in n for n in result.notes)
    assert math.isfinite(result.score)
