"""The registries finished: a model name's prefix picks its kind (no if-chain), abilities are
declared on the adapter (no probing), per-prompt caches are bounded, and the methods draw their
randomness from their own seeded generators (the global torch generator is never touched)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from toys import FunctionAdapter, RandomizableConv

from explainers import api, metrics
from explainers.errors import ModelLoadError
from explainers.methods import METHODS
from explainers.methods.region_search import smdl_objective
from explainers.models import MODEL_KINDS, MODEL_MODULES, ModelAdapter, ModelKind, load_model, model_choices
from explainers.models import base as models_base
from explainers.normalize import MIN_SPAN, score_span
from explainers.regions import grid, label_masks
from explainers.types import Target

# --- the model registry ----------------------------------------------------------------------


def test_every_model_module_declares_its_kind_and_the_app_choices_come_from_them():
    assert list(MODEL_KINDS) == list(MODEL_MODULES)  # one module, one kind, in order
    for kind in MODEL_KINDS.values():
        assert isinstance(kind, ModelKind) and kind.description and kind.usage
        for _, name in kind.choices:
            assert kind.source(name) is not None, name
    assert [name for _, name in model_choices()][0] == "bundled"


@pytest.mark.parametrize(
    "name,kind,source",
    [
        ("bundled", "bundled", ""),
        ("clip:openai/clip-vit-base-patch32", "clip", "openai/clip-vit-base-patch32"),
        ("clip:", None, None),
        ("bundled:x", None, None),
        ("clipper", None, None),
    ],
)
def test_a_name_is_matched_to_its_kind_by_its_prefix(name, kind, source):
    from explainers.models import model_kind

    if kind is None:
        with pytest.raises(ModelLoadError, match="unknown model"):
            model_kind(name)
    else:
        found = model_kind(name)
        assert found.name == kind and found.source(name) == source


def test_a_new_kind_is_one_registry_entry(monkeypatch):
    loaded = []

    def load(source: str) -> ModelAdapter:
        loaded.append(source)
        return FunctionAdapter(lambda x: x.mean(dim=(1, 2, 3)), name=f"toy:{source}")

    toy = ModelKind("toy", "toy:", load, choices=(("a toy", "toy:one"),), description="a toy", usage="'toy:<x>'")
    monkeypatch.setitem(MODEL_KINDS, "toy", toy)
    load_model.cache_clear()
    try:
        adapter = load_model("toy:one")
        assert adapter.name == "toy:one" and loaded == ["one"]
        assert ("a toy", "toy:one") in model_choices()
        with pytest.raises(ModelLoadError) as caught:
            load_model("nothing")
        assert "'toy:<x>'" in str(caught.value) and "'bundled'" in str(caught.value)
    finally:
        load_model.cache_clear()


# --- declared abilities ----------------------------------------------------------------------


def test_abilities_have_defaults_on_the_base_adapter():
    plain = FunctionAdapter(lambda x: x.mean(dim=(1, 2, 3)))
    assert plain.gradients and not plain.classifies and plain.max_prompt_tokens is None
    assert plain.prompt_tokens("a cat") is None and plain.prompt_unknown("🙂") is False
    assert plain.matched_classes("a cat") is None and api.describe_prompt(plain, "a cat") is None
    with pytest.raises(NotImplementedError):
        plain.top_class(torch.zeros(1, 3, 8, 8))


def test_the_bundled_model_declares_what_it_can_do(bundled):
    assert bundled.classifies and bundled.max_prompt_tokens == 256
    pixels = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert bundled.top_class(pixels) == int(bundled.logits(pixels).argmax())
    assert bundled.matched_classes("a tabby cat")[0][0] == "tabby"
    assert bundled.prompt_tokens("a cat") == 4


def test_the_engine_probes_no_attribute():
    import ast

    from conftest import ROOT

    for path in [ROOT / "explainers" / "api.py", ROOT / "explainers" / "evaluate" / "worker.py"]:
        calls = [
            node
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr")
        ]
        assert not calls, f"{path.name} probes attributes at lines {[c.lineno for c in calls]}"
    source = (ROOT / "explainers" / "methods" / "region_search.py").read_text()
    assert "getattr(" not in source


def test_a_variant_changes_a_setting_without_touching_the_cached_adapter(bundled):
    small = bundled.variant(max_batch=2, cam_layer_name="blocks.10")
    assert (small.max_batch, small.cam_layer_name) == (2, "blocks.10")
    assert (bundled.max_batch, bundled.cam_layer_name) == (8, "head")
    assert small.network is bundled.network and small.cam_layer().module is bundled.network.blocks[10]
    with pytest.raises(AttributeError):
        bundled.variant(no_such_setting=1)
    with pytest.raises(AttributeError):
        bundled.variant(score=None)  # a method, not a setting


# --- bounded caches --------------------------------------------------------------------------


def test_prompt_cache_keeps_the_most_recently_used():
    cache = models_base.PromptCache(3)
    for key in "abc":
        cache.put(key, key.upper())
    assert cache.get("a") == "A"  # a is now the most recent
    cache.put("d", "D")
    assert "b" not in cache and [k for k in "acd" if k in cache] == ["a", "c", "d"] and len(cache) == 3
    assert cache.get_or_make("e", lambda: "E") == "E" and "c" not in cache
    made = []
    assert cache.get_or_make("e", lambda: made.append(1) or "X") == "E" and not made
    clone = cache.copy()
    clone.put("z", "Z")
    assert "z" not in cache


def test_prompt_cache_deep_copies_with_its_own_lock_and_items():
    """copy.deepcopy of an adapter copies its caches (a lock cannot be pickled or deep-copied)."""
    import copy

    cache = models_base.PromptCache(3)
    cache.put("a", [1])
    clone = copy.deepcopy(cache)
    clone.get("a").append(2)
    clone.put("b", [3])
    assert cache.get("a") == [1] and "b" not in cache and clone.get("a") == [1, 2] and clone.maxsize == 3


def test_prompt_cache_stays_bounded_and_consistent_under_threads():
    cache = models_base.PromptCache(16)
    errors = []

    def hammer(offset: int) -> None:
        try:
            for i in range(2000):
                key = (offset * 7 + i) % 50
                value = cache.get_or_make(key, lambda key=key: key * 10)
                assert value == key * 10
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cache) <= 16


def test_the_adapters_per_prompt_caches_are_bounded(bundled, tiny_clip):
    from explainers.models import classifier, clip

    assert isinstance(bundled._class_weights, models_base.PromptCache)
    assert bundled._class_weights.maxsize == classifier.PROMPTS_CACHED
    assert isinstance(tiny_clip._text_features, models_base.PromptCache)
    assert tiny_clip._text_features.maxsize == clip.PROMPTS_CACHED


def test_clip_text_features_come_back_right_when_the_cache_is_smaller_than_the_prompts(tiny_clip):
    prompts = ("a cat", "a dog", "a bus", "a tree")
    expected = tiny_clip.text_features(prompts)
    small = tiny_clip.variant()
    small._text_features = models_base.PromptCache(2)
    torch.testing.assert_close(small.text_features(prompts), expected)
    assert len(small._text_features) == 2


# --- one normalisation span ------------------------------------------------------------------


@pytest.mark.parametrize("gap", [-5e-7, 0.0, 5e-7, -0.5, 0.5])
def test_curves_and_region_search_normalise_with_the_same_span(gap):
    """The photo scores ``gap`` above the black image: both divide by the same span, same sign."""
    side = 8
    full = 1.0 + gap
    adapter = FunctionAdapter(lambda x: 1.0 + gap * (x.mean(dim=(1, 2, 3)) > 0).double(), input_size=(side, side))
    pixels = torch.full((1, 3, side, side), 0.5)
    objective, photo, removed = smdl_objective(adapter, pixels, Target("x"), label_masks(grid(side, side, 4)))
    assert (photo, removed) == pytest.approx((full, 1.0), abs=1e-12)
    assert objective.span == score_span(full, 1.0)
    expected_sign = -1.0 if gap < 0 else 1.0
    assert np.sign(objective.span) == expected_sign and abs(objective.span) >= MIN_SPAN
    normalised = metrics._normalise(np.array([full]), full, 1.0)
    assert normalised[0] == pytest.approx((full - 1.0) / objective.span)


# --- no global seed --------------------------------------------------------------------------


def test_maps_draw_from_their_own_generators_not_the_global_one():
    weights = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    adapter = FunctionAdapter(lambda x: torch.tanh((x * weights).sum(dim=(1, 2, 3)) / 50), input_size=(16, 16))
    pixels = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    target = Target("x")
    prepared = api.Prepared(adapter, pixels, target, float(adapter.score(pixels, target)[0]), None)
    params = api.validate_params(
        {"seed": 7, "rise_masks": 16, "n_regions": 9, "region_kind": "grid", "ig_steps": 4, "substrate": "road"}
    )
    names = [n for n in METHODS if n != "gradcam"]  # the toy has no layer for Grad-CAM
    torch.manual_seed(1)  # not the run's seed (7), which run_methods used to set globally itself
    before = torch.get_rng_state()
    first = api.run_methods(prepared, names, params)
    assert torch.equal(torch.get_rng_state(), before), "run_methods touched the global torch generator"
    torch.manual_seed(12345)
    torch.rand(100)
    second = api.run_methods(prepared, names, params)
    for name in names:
        np.testing.assert_array_equal(first[name].values, second[name].values, err_msg=name)


def test_the_sanity_check_leaves_the_global_generator_alone():
    from conftest import ASSETS

    toy = RandomizableConv()
    request = api.validate("x", None, ["rise"], rise_masks=8, rise_cells=2, seed=5)
    prepared = api.prepare(ASSETS / "chelsea.jpg", request.target, toy)
    maps = api.run_methods(prepared, ["rise"], request.params)
    checks = []
    for global_seed in (1, 999):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        checks.append(sanity_cascade(toy, prepared, maps, request.params, toy.randomization_stages()))
        assert torch.equal(torch.get_rng_state(), before), "the sanity check touched the global torch generator"
    for a, b in zip(checks[0].methods["rise"], checks[1].methods["rise"]):
        np.testing.assert_array_equal(a.values, b.values)


def sanity_cascade(adapter, prepared, maps, params, stages):
    from explainers.sanity import cascading_randomization

    return cascading_randomization(
        adapter,
        prepared.pixels,
        prepared.target,
        {n: m.values for n, m in maps.items()},
        {n: api.method_kwargs(n, params) for n in maps},
        seed=params["seed"],
        stages=stages,
    )
