"""detector:<folder>: an open-vocabulary detector's box explained (VPS's score) on tiny random
models of real architecture (OWLv2, OWL-ViT, Grounding DINO), built in code, saved with
save_pretrained and loaded back the way a user's folder is (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from explainers import explain
from explainers.api import candidate_targets
from explainers.errors import ModelLoadError, UserError
from explainers.models import load_model
from explainers.models.clip import ALLOW_LOCAL_ENV
from explainers.models.detector import (
    MAX_BOXES,
    BoxTarget,
    GroundingDinoFamily,
    box_iou,
    load_detector,
    parse_box,
)
from explainers.params import Param
from explainers.testing import TINY_DETECTORS
from explainers.types import Target

QUERY = "a cat"
PHOTO_SIZE = (60, 45)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {name: build(tmp_path_factory.mktemp(name)) for name, build in TINY_DETECTORS.items()}


@pytest.fixture(autouse=True)
def local_models(monkeypatch):
    monkeypatch.setenv(ALLOW_LOCAL_ENV, "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", params=list(TINY_DETECTORS))
def family(request, folders):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ALLOW_LOCAL_ENV, "1")
        return request.param, load_detector(str(folders[request.param]))


def photo(seed: int = 0, size: tuple[int, int] = PHOTO_SIZE) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8))


def best_box(adapter, image: Image.Image, **options) -> BoxTarget:
    target, _ = adapter.resolve_target(adapter.load_image(image), Target(QUERY), options, image.size)
    assert isinstance(target, BoxTarget)
    return target


@pytest.mark.parametrize(
    "text,box",
    [("1,2,30,40", (1, 2, 30, 40)), (" 1 2 30 40 ", (1, 2, 30, 40)), ("[0.5, 1, 2.5, 3]", (0.5, 1, 2.5, 3))],
)
def test_boxes_read_from_text(text, box):
    assert parse_box(text) == box
    assert parse_box(list(box)) == box


@pytest.mark.parametrize("bad", ["1,2,3", "a,b,c,d", "5,5,5,9", "9,0,1,5", "1,2,3,nan", "", 7, None])
def test_bad_boxes_are_one_clear_sentence(bad):
    spec = Param("box", None, "the box", kind=str, parse=parse_box, allowed="four numbers x0,y0,x1,y1")
    with pytest.raises(UserError) as caught:
        spec.check(bad, "--box")
    assert str(caught.value).startswith("--box must be four numbers x0,y0,x1,y1, not")


def test_iou_matches_torchvision():
    from torchvision.ops import box_iou as reference

    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(50, 2, 2, generator=generator).sort(dim=1).values  # x0 < x1, y0 < y1
    boxes = torch.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], dim=1)
    one = boxes[7]
    assert torch.allclose(box_iou(boxes, one), reference(boxes, one[None])[:, 0], atol=1e-6)


def test_the_vps_score_is_the_best_iou_times_probability(family):
    """score = max_j IoU(b_j, b*) x p_j, recomputed here with torchvision's IoU; for the detector's
    own best box it is that box's probability (IoU 1)."""
    from torchvision.ops import box_iou as reference

    name, adapter = family
    image = photo(1)
    target = best_box(adapter, image)
    pixels = torch.cat([adapter.load_image(image), adapter.load_image(photo(2))])
    with torch.no_grad():
        boxes, probabilities = adapter.predictions(pixels, QUERY)
        scores, probability = adapter.scores(pixels, target)
    wanted = torch.tensor([target.relative_box])
    expected = torch.stack([(reference(boxes[i], wanted)[:, 0] * probabilities[i]).max() for i in range(2)])
    assert torch.allclose(scores, expected, atol=1e-6), name
    assert torch.equal(scores, probability)
    assert float(scores[0]) == pytest.approx(target.label_probability, abs=1e-6)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert adapter.score_meaning(target).name == "probability"
    with torch.no_grad():
        alone = torch.cat([adapter.score(pixels[i : i + 1], target) for i in range(2)])
    assert torch.allclose(alone, scores, atol=1e-6)


def test_the_offered_boxes_are_the_models_best_first_and_distinct(family):
    from torchvision.ops import box_iou as reference

    name, adapter = family
    image = photo(3)
    offered = candidate_targets(image, QUERY, model=adapter, box_threshold=0.05)
    assert 1 <= len(offered) <= MAX_BOXES, name
    probabilities = [t.label_probability for t in offered]
    assert probabilities == sorted(probabilities, reverse=True) and min(probabilities) >= 0.05
    boxes = torch.tensor([t.box for t in offered])
    overlap = reference(boxes, boxes) - torch.eye(len(offered))
    assert float(overlap.max()) <= 0.5 + 1e-6  # non-maximum suppression
    assert all(0 <= x0 < x1 <= PHOTO_SIZE[0] and 0 <= y0 < y1 <= PHOTO_SIZE[1] for x0, y0, x1, y1 in boxes.tolist())
    best = best_box(adapter, image, box_threshold=0.05)
    assert best.box == offered[0].box and best.detected
    assert all(t.photo_size == image.size for t in offered)
    pixels = adapter.load_image(image)
    assert adapter.resolve_target(pixels, offered[-1], {}, image.size) == (offered[-1], [])  # taken as it is
    with pytest.raises(UserError, match="the box was found on a photo of 60 x 45 pixels, not on this one of 61 x 45"):
        adapter.resolve_target(pixels, offered[-1], {}, (61, 45))


def test_a_given_box_is_explained_as_given(family):
    _, adapter = family
    target = best_box(adapter, photo(4), box=(5.0, 6.0, 40.0, 30.0))
    assert target.box == (5.0, 6.0, 40.0, 30.0) and not target.detected
    assert 0.0 <= target.label_probability <= 1.0
    assert target.summary() == {
        "kind": "box",
        "prompt": QUERY,
        "box": [5.0, 6.0, 40.0, 30.0],
        "label_probability": target.label_probability,
        "box_source": "given",
        "photo_size": list(PHOTO_SIZE),
    }


def test_gradients_reach_the_pixels_and_grad_cam_maps_the_feature_grid(family):
    from explainers.methods import run_method

    name, adapter = family
    target = best_box(adapter, photo(5))
    pixels = adapter.load_image(photo(5)).requires_grad_(True)
    adapter.score(pixels, target).sum().backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0, name
    saliency = run_method("gradcam", adapter, pixels.detach(), target)
    assert saliency.values.shape == adapter.input_size and np.isfinite(saliency.values).all()


def test_boxes_outside_the_photo_and_no_box_above_the_threshold(folders):
    adapter = load_model(f"detector:{folders['owlv2']}")
    pixels = adapter.load_image(photo())
    with pytest.raises(UserError, match=r"is not inside the photo, which is 60 x 45 pixels"):
        adapter.resolve_target(pixels, Target(QUERY), {"box": (10.0, 10.0, 61.0, 20.0)}, PHOTO_SIZE)
    with pytest.raises(UserError, match=r"finds no box for 'a cat' with a probability of at least 1 \(its best is"):
        adapter.resolve_target(pixels, Target(QUERY), {"box_threshold": 1.0}, PHOTO_SIZE)
    with pytest.raises(UserError, match="box must be four numbers"):
        explain(photo(), QUERY, model=adapter, box="1,2,3", methods=["gradcam"])


def test_a_query_over_the_text_limit_is_cut_with_a_note(family):
    name, adapter = family
    query = "a small grey cat " * 40
    result = explain(photo(7), query, model=adapter, methods=["gradcam"], curve_steps=2, n_random=1, box_threshold=0.0)
    assert any(f"only its first {adapter.max_prompt_tokens} tokens were used" in note for note in result.notes), name
    assert 0.0 <= result.probability <= 1.0


def test_the_sanity_stages_name_the_image_side_or_the_check_is_refused(family):
    from explainers.sanity import sanity_stages

    name, adapter = family
    if name == "grounding_dino":  # its Swin backbone declares no cascade (yet): one sentence
        with pytest.raises(UserError, match="the sanity check needs a model that declares its layers"):
            sanity_stages(adapter)
        return
    stages = sanity_stages(adapter)
    assert stages[0][0] == "heads" and len(stages) >= 3
    for _, names in stages:
        for module in names:
            adapter.model.get_submodule(module)
    clone, network = adapter.randomizable_copy()
    text = f"{adapter.family.base}.text_model"
    assert network.get_submodule(text) is adapter.model.get_submodule(text)  # the text tower is shared
    assert network.get_submodule(stages[1][1][0]) is not adapter.model.get_submodule(stages[1][1][0])


def test_grounding_dino_reads_the_querys_own_words():
    """p_j = the largest sigmoid over the query's word tokens: [CLS], [SEP] and '.' do not count."""

    class Tokens:
        all_special_ids = [101, 102, 0]

        def convert_tokens_to_ids(self, token):
            return 1012

    family = GroundingDinoFamily.__new__(GroundingDinoFamily)
    family.tokenizer = Tokens()
    ids = torch.tensor([[101, 7, 8, 1012, 102]])  # [CLS] a cat . [SEP]
    logits = torch.full((1, 2, 8), -torch.inf)
    logits[0, :, :5] = torch.tensor([[9.0, -1.0, 0.5, 9.0, 9.0], [9.0, 2.0, -3.0, 9.0, 9.0]])
    got = family.probabilities(logits, {"input_ids": ids})
    assert torch.allclose(got, torch.sigmoid(torch.tensor([[0.5, 2.0]])))


def test_parameters_of_another_model_kind_are_refused():
    with pytest.raises(UserError, match=r"box is a parameter of detector:<...> models .*the model here is 'bundled'"):
        explain(photo(), QUERY, model="bundled", box="1,2,3,4", methods=["gradcam"])
    with pytest.raises(UserError, match=r"answer is a parameter of vlm:<...> models"):
        candidate_targets(photo(), QUERY, model="bundled", answer="yes")


def test_unknown_architectures_and_sources(folders, tmp_path, monkeypatch):
    (tmp_path / "detr").mkdir()
    (tmp_path / "detr" / "config.json").write_text(json.dumps({"model_type": "detr"}))
    with pytest.raises(ModelLoadError, match="holds a 'detr' model; the detector kind takes grounding-dino, owlv2"):
        load_model(f"detector:{tmp_path / 'detr'}")
    with pytest.raises(ModelLoadError) as caught:
        load_model("detector:google/owlv2-base-patch16-ensemble")
    message = str(caught.value)
    assert "could not load the detector" in message and "offline" in message and "\n" not in message
    monkeypatch.delenv(ALLOW_LOCAL_ENV)
    load_model.cache_clear()  # a folder loaded while allowed stays cached
    with pytest.raises(ModelLoadError, match="disabled"):
        load_model(f"detector:{folders['owlv2']}")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY_DETECTORS))
def test_explain_writes_the_box_a_probability_and_every_methods_curves(folders, name):
    result = explain(
        photo(6),
        QUERY,
        model=f"detector:{folders[name]}",
        methods=["gradcam", "ig", "region", "rise"],
        curve_steps=4,
        n_random=2,
        ig_steps=4,
        rise_masks=16,
        n_regions=9,
    )
    summary = json.loads(json.dumps(result.summary()))
    assert summary["target"]["kind"] == "box" and summary["target"]["prompt"] == QUERY
    assert len(summary["target"]["box"]) == 4 and summary["target"]["box_source"] == "model"
    assert 0.0 <= summary["probability"] <= 1.0 and summary["probability"] == pytest.approx(summary["score"])
    assert set(summary["methods"]) == {"gradcam", "ig", "region", "rise"}
    for method in summary["methods"].values():
        assert len(method["curves"]["deletion"]["scores"]) == 5


@pytest.mark.slow
def test_the_command_line_writes_result_json(folders, tmp_path):
    import subprocess
    import sys

    from conftest import ASSETS, ROOT

    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "explainers",
        str(ASSETS / "chelsea.jpg"),
        "--model",
        f"detector:{folders['owlv2']}",
    ]
    command += ["--prompt", QUERY, "--out", str(out), "--steps", "4", "--methods", "region,rise", "--rise-masks", "16"]
    env = {"HF_HUB_OFFLINE": "1", ALLOW_LOCAL_ENV: "1", "PATH": "/usr/bin:/bin", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([*command, "--box", "10,20,200,150"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "result.json").read_text())
    assert summary["target"]["box"] == [10.0, 20.0, 200.0, 150.0] and summary["target"]["box_source"] == "given"
    assert 0.0 <= summary["probability"] <= 1.0 and set(summary["methods"]) == {"region", "rise"}
    outside = subprocess.run([*command, "--box", "10,20,900,150"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert outside.returncode == 2 and "is not inside the photo, which is 451 x 300 pixels" in outside.stderr
    assert outside.stderr.count("\n") == 1, outside.stderr  # one line: no progress bars
