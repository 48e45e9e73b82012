"""Every registered method on every adapter (generated from the registries), plus CLIP's
Grad-CAM layer on a ViT-B/32-shaped model and IG completeness on the bundled model."""

import numpy as np
import pytest
import torch
from conftest import ASSETS, vit_b32_clip_adapter

from explainers.images import open_image
from explainers.methods import METHODS, run_method
from explainers.types import Target


def cheapest(method: str) -> dict:
    """Every numeric parameter of the method at the low end of its declared range (its cost knobs)."""
    return {p.keyword: p.low for p in METHODS[method].params if not p.choices}


@pytest.mark.parametrize("adapter_name", ["bundled", "tiny_clip"])
@pytest.mark.parametrize("method", list(METHODS))
def test_method_gives_finite_deterministic_map_of_image_size(adapters, adapter_name, method):
    adapter = adapters[adapter_name]
    pixels = adapter.load_image(open_image(ASSETS / "chelsea.jpg"))
    target = Target("a cat")
    first = run_method(method, adapter, pixels, target, **cheapest(method))
    second = run_method(method, adapter, pixels, target, **cheapest(method))
    assert first.values.shape == tuple(pixels.shape[2:])
    assert np.isfinite(first.values).all()
    assert first.values.max() > first.values.min(), "a constant map carries no information"
    np.testing.assert_array_equal(first.values, second.values)
    assert first.forward_passes > 0


def test_contrast_target_is_a_probability(bundled):
    pixels = bundled.load_image(open_image(ASSETS / "chelsea.jpg"))
    target = Target("a cat", ("a dog", "a school bus"))
    score = float(bundled.score(pixels, target)[0])
    probabilities = bundled.prompt_probabilities(pixels, target)
    assert 0 < score < 1 and score == pytest.approx(probabilities["a cat"], rel=1e-5)
    assert sum(probabilities.values()) == pytest.approx(1.0, rel=1e-5)


def test_bundled_model_reads_real_photos(bundled):
    """A cat photo scores 'a cat' far above 'a school bus'; top-1 classes are right."""
    pixels = bundled.load_image(open_image(ASSETS / "chelsea.jpg"))
    with torch.no_grad():
        cat = float(bundled.score(pixels, Target("a cat"))[0])
        bus = float(bundled.score(pixels, Target("a school bus"))[0])
    assert cat > bus + 5  # log-probabilities: > e^5 times more likely
    expected_top1 = {"chelsea.jpg": "cat", "coffee.jpg": "espresso", "grace_hopper.jpg": "military uniform"}
    for photo, word in expected_top1.items():
        logits = bundled.logits(bundled.load_image(open_image(ASSETS / photo)))
        assert word in bundled.class_names[int(logits.argmax())]


@pytest.mark.slow
@pytest.mark.parametrize(
    "photo,prompt",
    [
        ("chelsea.jpg", "a cat"),
        ("coffee.jpg", "a cup of espresso"),
        ("rocket.jpg", "a rocket"),
        ("grace_hopper.jpg", "a military uniform"),
    ],
)
def test_ig_completeness_within_5_percent_at_default_steps(bundled, photo, prompt):
    pixels = bundled.load_image(open_image(ASSETS / photo))
    result = run_method("ig", bundled, pixels, Target(prompt))
    assert result.meta["completeness_error"] <= 0.05
    assert result.meta["attribution_sum"] == pytest.approx(result.meta["score_difference"], rel=0.05)


def test_ig_completeness_error_is_measured_not_assumed(bundled):
    """With a tiny budget and no refinement the error is large: the check can fail."""
    pixels = bundled.load_image(open_image(ASSETS / "chelsea.jpg"))
    result = run_method("ig", bundled, pixels, Target("a cat"), steps=2, max_steps=2)
    assert result.meta["completeness_error"] > 0.05 and not result.meta["converged"]


def test_vit_gradcam_reads_the_patch_grid_from_the_config():
    adapter = vit_b32_clip_adapter()
    pixels = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    result = run_method("gradcam", adapter, pixels, Target("a cat"))
    assert adapter.patch_grid == (7, 7)
    assert result.meta["grid"] == [1, 50, 768]  # CLS + 7x7 patches, ViT-B width
    assert result.values.shape == (224, 224) and np.isfinite(result.values).all()
    assert result.values.max() > 0, "the hooked layer must receive gradient"


def test_clip_text_features_are_cached(tiny_clip):
    tiny_clip.text_features(("a cat",))
    cached = tiny_clip._text_features["a cat"]
    tiny_clip.text_features(("a cat", "a dog"))
    assert tiny_clip._text_features["a cat"] is cached
