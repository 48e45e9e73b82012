"""The model-parameter randomisation test (Adebayo et al., NeurIPS 2018; explainers/sanity.py):
Grad-CAM stops resembling itself once the bundled model is randomised, the cached model and the
original map are untouched, the stages come in the adapter's order, the randomisation is seeded,
and the CLIP path runs (on a randomly initialised tiny CLIP: no CLIP result is claimed)."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from conftest import ASSETS
from PIL import Image
from toys import evidence

from explainers import explain
from explainers.errors import UserError
from explainers.methods import run_method
from explainers.sanity import SANITY_NOTE, cascading_randomization, compare_maps, is_blank, randomize
from explainers.types import Target

CAT = ASSETS / "chelsea.jpg"


def checksum(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def bundled_run(bundled):
    """Grad-CAM on the cat, without and with the sanity check, and the cached network's checksum
    before and after."""
    before = checksum(bundled.network)
    plain = explain(CAT, "a cat", model=bundled, methods=["gradcam"], curve_steps=2, n_random=1)
    checked = explain(CAT, "a cat", model=bundled, methods=["gradcam"], curve_steps=2, n_random=1, sanity=True)
    return plain, checked, before, checksum(bundled.network)


def test_gradcam_stops_resembling_itself_once_the_bundled_model_is_randomised(bundled_run):
    _, checked, _, _ = bundled_run
    stages = checked.sanity.methods["gradcam"]
    # Either the fully randomised model's map is blank (said so, not scored as a low correlation) or
    # it no longer resembles the original.
    last = stages[-1]
    assert (last.blank and math.isnan(last.spearman)) or (last.spearman < 0.5 and last.ssim < 0.5)
    # Randomising only the classifier layer already changes the map, and no stage leaves it as it was.
    assert all(s.blank or s.spearman < 0.9 for s in stages)
    assert all(s.blank == is_blank(s.values) for s in stages)


def test_the_cached_model_and_the_original_map_are_unchanged(bundled, bundled_run):
    plain, checked, before, after = bundled_run
    assert after == before
    original = plain.methods["gradcam"].saliency.values
    np.testing.assert_array_equal(checked.methods["gradcam"].saliency.values, original)
    again = run_method(
        "gradcam", bundled, torch.from_numpy(plain.image).permute(2, 0, 1)[None].float() / 255, Target("a cat")
    )
    np.testing.assert_allclose(again.values, original, atol=1e-6)
    assert not np.allclose(checked.sanity.methods["gradcam"][0].values, original, atol=1e-3)


def test_stages_come_in_the_adapters_order_and_reach_every_parameter(bundled, bundled_run):
    _, checked, _, _ = bundled_run
    declared = bundled.randomization_stages()
    assert [label for label, _ in declared] == [
        "fc",
        "head.0",
        "blocks.11-15",
        "blocks.7-10",
        "blocks.3-6",
        "stem.0, blocks.0-2",
    ]
    assert [s.stage for s in checked.sanity.methods["gradcam"]] == [label for label, _ in declared]
    assert [label for label, _ in checked.sanity.stages] == [label for label, _ in declared]
    # The cascade ends fully randomised: every parameter of the copy is re-drawn.
    copy, network = bundled.randomizable_copy()
    for _, names in declared:
        randomize(network, names, seed=0)
    for (name, new), old in zip(network.named_parameters(), bundled.network.parameters()):
        assert not torch.equal(new, old), f"{name} was not randomised"
    assert copy.embedder is bundled.embedder  # MiniLM is shared, never copied


def test_result_json_keeps_stage_spearman_and_ssim_only(bundled_run):
    _, checked, _, _ = bundled_run
    summary = json.loads(json.dumps(checked.summary()))
    entries = summary["sanity"]["gradcam"]
    assert [set(e) for e in entries] == [{"stage", "spearman", "ssim", "blank"}] * 6
    assert [e["stage"] for e in entries][0] == "fc"
    assert set(summary["sanity_references"]["gradcam"]) == {"centre", "edges"}
    assert "sanity" not in bundled_run[0].summary()
    cost = checked.sanity
    assert cost.forward_passes == 6 and cost.backward_passes == 6  # Grad-CAM: one of each per stage
    assert len(cost.randomize_seconds) == 6 and cost.seconds > 0


def test_the_randomisation_is_seeded(bundled):
    names = bundled.randomization_stages()[0][1]
    first, second, other = (bundled.randomizable_copy()[1] for _ in range(3))
    randomize(first, names, seed=3)
    randomize(second, names, seed=3)
    randomize(other, names, seed=4)
    assert checksum(first) == checksum(second) != checksum(other) != checksum(bundled.network)
    # The same stage under the same seed gives the same maps and correlations, run to run.
    pixels = bundled.load_image(Image.open(CAT)).to(bundled.device)
    original = run_method("gradcam", bundled, pixels, Target("a cat")).values
    runs = [
        cascading_randomization(
            bundled,
            pixels,
            Target("a cat"),
            {"gradcam": original},
            {"gradcam": {}},
            seed=seed,
            stages=bundled.randomization_stages()[:2],
        )
        for seed in (0, 0, 1)
    ]
    for a, b in zip(runs[0].methods["gradcam"], runs[1].methods["gradcam"]):
        assert (a.spearman, a.ssim) == (b.spearman, b.ssim)
        np.testing.assert_array_equal(a.values, b.values)
    assert runs[0].methods["gradcam"][0].spearman != runs[2].methods["gradcam"][0].spearman


def test_tiny_clip_declares_its_stages_and_runs_them_without_touching_the_model(tiny_clip):
    before = checksum(tiny_clip.model)
    declared = tiny_clip.randomization_stages()
    assert 4 <= len(declared) <= 6 and declared[0] == (
        "projection",
        ["visual_projection", "vision_model.post_layernorm"],
    )
    assert declared[1][1][0] == "vision_model.encoder.layers.9"  # the last block comes next
    copy, network = tiny_clip.randomizable_copy()
    assert network.text_model is tiny_clip.model.text_model  # the text tower is shared, never randomised
    result = explain(
        CAT,
        "a photo of a cat",
        model=tiny_clip,
        methods=["gradcam", "rise"],
        sanity=True,
        curve_steps=2,
        n_random=1,
        rise_masks=8,
        rise_cells=2,
    )
    assert checksum(tiny_clip.model) == before
    for name in ("gradcam", "rise"):
        stages = result.sanity.methods[name]
        assert [s.stage for s in stages] == [label for label, _ in declared]
        assert all(np.isfinite(s.spearman) and np.isfinite(s.ssim) and s.values.shape == (224, 224) for s in stages)
    # Every image-side parameter is re-drawn by the last stage; the text side is not.
    for _, names in declared:
        randomize(network, names, seed=0)
    for (name, new), old in zip(network.named_parameters(), tiny_clip.model.parameters()):
        changed = not torch.equal(new, old)
        constant = old.dim() < 2 and bool((old == old.flatten()[0]).all())  # fresh norms: nothing learnt
        if name.startswith(("text_", "logit_scale")):
            assert not changed, name
        elif not constant:
            assert changed, f"{name} was not randomised"


def test_compare_maps():
    rng = np.random.default_rng(0)
    a = rng.random((32, 32))
    assert compare_maps(a, a) == pytest.approx((1.0, 1.0))
    assert compare_maps(a, -a)[0] == pytest.approx(1.0)  # absolute values are compared
    assert abs(compare_maps(a, rng.random((32, 32)))[0]) < 0.15
    # A blank map has no ordering to compare: NaN (reported as blank), never a low correlation that passes.
    assert all(math.isnan(v) for v in compare_maps(a, np.zeros_like(a)))
    assert all(math.isnan(v) for v in compare_maps(np.full_like(a, 3.0), a))
    assert is_blank(np.zeros_like(a)) and is_blank(np.full((4, 4), np.nan)) and not is_blank(a)


def test_bad_requests_are_one_sentence(bundled):
    with pytest.raises(UserError, match="sanity must be True or False"):
        explain(CAT, "a cat", model=bundled, methods=["gradcam"], sanity="yes")
    with pytest.raises(UserError, match="declares its layers"):
        explain(CAT, "a cat", model=evidence(), methods=["gradcam"], sanity=True)


def test_the_classroom_note_says_what_passing_is_and_not_to_rank():
    assert "Adebayo" in SANITY_NOTE and "Binder" in SANITY_NOTE and "rank" in SANITY_NOTE


def test_cli_sanity_flag_writes_the_check_to_result_json(bundled, tmp_path, capsys):
    from explainers.__main__ import main

    code = main(
        [
            str(CAT),
            "--prompt",
            "a cat",
            "--methods",
            "gradcam",
            "--steps",
            "2",
            "--random-orderings",
            "1",
            "--device",
            "cpu",
            "--sanity",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0, capsys.readouterr().err
    sanity = json.loads((tmp_path / "result.json").read_text())["sanity"]
    assert [e["stage"] for e in sanity["gradcam"]] == [label for label, _ in bundled.randomization_stages()]
    assert (
        main(
            [
                str(CAT),
                "--prompt",
                "a cat",
                "--methods",
                "gradcam",
                "--steps",
                "2",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "plain"),
            ]
        )
        == 0
    )
    assert "sanity" not in json.loads((tmp_path / "plain" / "result.json").read_text())
