"""vlm:<folder>: a VLM's answer explained (EAGLE's score) on tiny random models of four real
families (LLaVA, Qwen2-VL, Qwen2.5-VL, Idefics3), each built in code, saved with save_pretrained
and loaded back the way a user's folder is (HF_HUB_OFFLINE=1, SALIENCY_LAB_ALLOW_LOCAL_MODELS=1)."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from explainers import explain
from explainers.api import candidate_targets
from explainers.errors import ModelLoadError, UserError
from explainers.models import load_model
from explainers.models.clip import ALLOW_LOCAL_ENV
from explainers.models.vlm import AnswerTarget, VlmAdapter, load_vlm
from explainers.testing import TINY_VLMS
from explainers.types import Target

QUESTION = "what is in the image?"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {name: build(tmp_path_factory.mktemp(name)) for name, build in TINY_VLMS.items()}


@pytest.fixture(autouse=True)
def local_models(monkeypatch):
    monkeypatch.setenv(ALLOW_LOCAL_ENV, "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", params=list(TINY_VLMS))
def family(request, folders):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ALLOW_LOCAL_ENV, "1")
        return request.param, load_vlm(str(folders[request.param]))


def photo(seed: int = 0, size: tuple[int, int] = (48, 40)) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8))


def answer_of(adapter: VlmAdapter, image: Image.Image, **options) -> AnswerTarget:
    pixels = adapter.load_image(image)
    target, _ = adapter.resolve_target(pixels, Target(QUESTION), {"max_new_tokens": 4, **options}, image.size)
    assert isinstance(target, AnswerTarget)
    return target


def test_the_pixels_become_exactly_what_the_processor_makes(family):
    """The adapter's torch preprocessing (normalisation and the family's layout: Qwen's patches in
    merge windows, Idefics3's single global image) equals the processor's on the same picture."""
    name, adapter = family
    image = photo(1, adapter.input_size[::-1])
    ours = adapter.pixel_inputs(adapter.load_image(image))
    theirs = adapter.processor(
        images=[image], text=[adapter.prompt_text(QUESTION)], return_tensors="pt", **adapter.layout.processor_kwargs()
    )
    for key, value in ours.items():
        assert value.shape == theirs[key].shape, (name, key)
        assert torch.allclose(value.float(), theirs[key].float(), atol=2e-6), (name, key)
    ids = adapter.prompt_inputs(QUESTION)["input_ids"]
    assert torch.equal(ids, theirs["input_ids"])
    assert int((ids == adapter.model.config.image_token_id).sum()) == adapter.layout.grid[0] * adapter.layout.grid[1]


def test_the_greedy_answer_is_what_teacher_forcing_scores_as_each_most_likely_token(family):
    """Each token of the model's greedy answer is the most likely one at its place under teacher
    forcing: the positions the score reads are the ones generation chose from (no off-by-one)."""
    _, adapter = family
    image = photo(2)
    target = answer_of(adapter, image)
    pixels = adapter.load_image(image)
    with torch.no_grad():
        inputs = adapter._inputs(pixels, QUESTION, target.token_ids)
        logits = adapter.model(**inputs, use_cache=False).logits[0].float()
    n = len(target.token_ids)
    positions = logits[-(n + 1) : -1]
    assert positions.argmax(dim=-1).tolist() == list(target.token_ids)
    expected = torch.softmax(positions, dim=-1).max(dim=-1).values
    with torch.no_grad():
        got = adapter.token_probabilities(pixels, QUESTION, target.token_ids)[0]
    assert torch.allclose(got, expected, atol=1e-6)
    with torch.no_grad():
        assert float(adapter.score(pixels, target)[0]) == pytest.approx(float(expected.mean()), abs=1e-6)


def test_scores_are_probabilities_and_a_batch_scores_as_its_images_alone(family):
    _, adapter = family
    target = answer_of(adapter, photo(3))
    images = torch.cat([adapter.load_image(photo(s)) for s in (3, 4, 5)])
    with torch.no_grad():
        batch = adapter.score(images, target)
        alone = torch.cat([adapter.score(images[i : i + 1], target) for i in range(3)])
        score, probability = adapter.scores(images, target)
    assert torch.allclose(batch, alone, atol=1e-6)
    assert ((batch >= 0) & (batch <= 1)).all()
    assert torch.equal(score, probability)
    assert adapter.score_meaning(target).name == "probability"


def test_one_answer_token(family):
    _, adapter = family
    image = photo(6)
    every = answer_of(adapter, image)
    one = answer_of(adapter, image, answer="a cat on a mat", answer_token=1)
    assert not one.generated and one.token_index == 1 and one.answer == "a cat on a mat"
    assert one.token_ids == tuple(adapter.answer_ids("a cat on a mat"))
    pixels = adapter.load_image(image)
    with torch.no_grad():
        probabilities = adapter.token_probabilities(pixels, QUESTION, one.token_ids)[0]
        assert float(adapter.score(pixels, one)[0]) == pytest.approx(float(probabilities[1]), abs=1e-7)
    assert every.token_index is None and every.generated


def test_the_image_tokens_sit_on_the_grid_grad_cam_reads(family):
    """With the vision tower's blocks made identities (zeroed output projections), changing the
    pixels of one grid cell changes only that cell of the tapped image tokens: the layout's
    patches and the grid's order are the ones the model uses (Qwen2.5-VL's windows included)."""
    name, adapter = family
    clone = copy.copy(adapter)
    clone.model = copy.deepcopy(adapter.model)
    vision = clone.model.model.visual if hasattr(clone.model.model, "visual") else None
    vision = vision or getattr(clone.model.model, "vision_tower", None) or clone.model.model.vision_model
    with torch.no_grad():
        for module_name, module in vision.named_modules():
            if isinstance(module, torch.nn.Linear) and module_name.endswith(
                ("attn.proj", "self_attn.out_proj", "mlp.fc2", "mlp.down_proj")
            ):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
    layer = clone.cam_layer()
    grid_h, grid_w = adapter.layout.grid
    cell_h, cell_w = adapter.input_size[0] // grid_h, adapter.input_size[1] // grid_w
    captured = []
    handle = layer.module.register_forward_hook(lambda _m, _a, out: captured.append(out))
    try:
        pixels = clone.load_image(photo(7))
        changed = pixels.clone()
        row, col = grid_h - 1, grid_w // 2
        changed[:, :, row * cell_h : (row + 1) * cell_h, col * cell_w : (col + 1) * cell_w] = 0.0
        target = AnswerTarget(QUESTION, answer="x", token_ids=tuple(clone.answer_ids("x")))
        with torch.no_grad():
            clone.score(torch.cat([pixels, changed]), target)
    finally:
        handle.remove()
    grid = layer.to_grid(captured[-1])  # [2, D, h, w]
    moved = (grid[0] - grid[1]).abs().amax(dim=0) > 1e-5
    expected = torch.zeros(grid_h, grid_w, dtype=torch.bool)
    expected[row, col] = True
    assert torch.equal(moved, expected), (name, moved)


def test_gradients_reach_the_pixels_and_grad_cam_maps_the_grid(family):
    from explainers.methods import run_method

    name, adapter = family
    target = answer_of(adapter, photo(8))
    pixels = adapter.load_image(photo(8)).requires_grad_(True)
    adapter.score(pixels, target).sum().backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
    saliency = run_method("gradcam", adapter, pixels.detach(), target)
    assert saliency.values.shape == adapter.input_size, name
    assert np.isfinite(saliency.values).all() and 0.0 <= saliency.values.min() <= saliency.values.max() <= 1.0
    assert saliency.backward_passes == 1


def test_the_sanity_stages_name_the_image_side_and_the_copy_shares_the_language_model(family):
    name, adapter = family
    stages = adapter.randomization_stages()
    assert stages[0][0] == "projector" and len(stages) >= 3, name
    for _, names in stages:
        for module in names:
            adapter.model.get_submodule(module)  # every stage names a real module
    clone, network = adapter.randomizable_copy()
    assert network is clone.model and network is not adapter.model
    language = "model.text_model" if hasattr(adapter.model.model, "text_model") else "model.language_model"
    assert network.get_submodule(language) is adapter.model.get_submodule(language)
    assert network.get_submodule(stages[0][1][0]) is not adapter.model.get_submodule(stages[0][1][0])


def test_bad_answers_are_one_clear_sentence(folders):
    adapter = load_model(f"vlm:{folders['llava']}")
    pixels = adapter.load_image(photo())

    def refused(options, *words):
        with pytest.raises(UserError) as caught:
            adapter.resolve_target(pixels, Target(QUESTION), {"max_new_tokens": 4, **options}, (48, 40))
        message = str(caught.value)
        assert "\n" not in message and all(w in message for w in words), message

    refused({"answer": "   "}, "the answer is empty")
    refused({"answer": "a cat", "answer_token": 9}, "answer token 9 is out of range", "0 to")
    long_question = " ".join(["what"] * 600)
    with pytest.raises(UserError, match="over the model's limit of 512 tokens"):
        adapter.resolve_target(pixels, Target(long_question), {"max_new_tokens": 4}, (48, 40))


def test_an_empty_greedy_answer_is_refused(folders):
    adapter = load_vlm(str(folders["llava"]))  # a fresh copy: its generation config is changed here
    adapter.model.generation_config.eos_token_id = list(range(len(adapter.tokenizer)))  # every token ends it
    with pytest.raises(
        UserError, match=r"the model's answer to 'what is in the image\?' is empty \(it ended at once\)"
    ):
        adapter.resolve_target(adapter.load_image(photo()), Target(QUESTION), {"max_new_tokens": 4}, (48, 40))


def test_a_processor_without_an_image_token_is_refused(folders):
    adapter = load_model(f"vlm:{folders['llava']}")
    processor = copy.copy(adapter.processor)
    processor.image_token = None
    with pytest.raises(ModelLoadError, match="declares no image token"):
        VlmAdapter(adapter.model, processor, name="vlm:test")
    processor.image_token = "<s>"  # a token, but not the one the model reads images at
    with pytest.raises(ModelLoadError, match="do not belong together"):
        VlmAdapter(adapter.model, processor, name="vlm:test")


def test_unknown_architectures_and_sources(folders, tmp_path, monkeypatch):
    from conftest import TINYCLIP

    (tmp_path / "blip").mkdir()
    (tmp_path / "blip" / "config.json").write_text(json.dumps({"model_type": "blip-2"}))
    with pytest.raises(ModelLoadError, match="holds a 'blip-2' model; the vlm kind takes idefics3, llava"):
        load_model(f"vlm:{tmp_path / 'blip'}")
    with pytest.raises(ModelLoadError, match="holds a 'clip' model"):
        load_model(f"vlm:{TINYCLIP}")
    with pytest.raises(ModelLoadError, match="not a Hugging Face model id"):
        load_model("vlm:not an id")
    with pytest.raises(ModelLoadError) as caught:
        load_model("vlm:llava-hf/llava-1.5-7b-hf")
    message = str(caught.value)
    assert "could not load the VLM" in message and "offline" in message and "\n" not in message
    monkeypatch.delenv(ALLOW_LOCAL_ENV)
    load_model.cache_clear()  # a folder loaded while allowed stays cached
    with pytest.raises(ModelLoadError, match="disabled"):
        load_model(f"vlm:{folders['qwen2_vl']}")


def test_remote_code_is_never_run(folders, tmp_path):
    folder = tmp_path / "with-code"
    shutil.copytree(folders["llava"], folder)
    marker = tmp_path / "code-ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageTextToText": "evil.Evil", "AutoConfig": "evil.Evil"}
    (folder / "config.json").write_text(json.dumps(config))
    try:
        load_model(f"vlm:{folder}")
    except ModelLoadError:
        pass
    assert not marker.exists()


def test_candidate_targets_offer_the_answer_and_explain_takes_it_back(folders):
    model = f"vlm:{folders['qwen2_vl']}"
    image = photo(9)
    (offered,) = candidate_targets(image, QUESTION, model=model, max_new_tokens=3)
    assert isinstance(offered, AnswerTarget) and offered.generated and len(offered.token_ids) <= 3
    adapter = load_model(model)
    calls = []
    original = adapter.generate
    adapter.generate = lambda *a, **k: calls.append(1) or original(*a, **k)  # type: ignore[method-assign]
    try:
        result = explain(image, offered, model=model, methods=["gradcam"], curve_steps=3, n_random=1)
    finally:
        del adapter.generate
    assert calls == []  # the offered answer is explained as it is: no second generation
    assert result.target == offered


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY_VLMS))
def test_explain_writes_the_answer_a_probability_and_every_methods_curves(folders, name):
    result = explain(
        photo(10),
        QUESTION,
        model=f"vlm:{folders[name]}",
        methods=["gradcam", "ig", "region", "rise"],
        curve_steps=4,
        n_random=2,
        ig_steps=4,
        rise_masks=16,
        n_regions=9,
        max_new_tokens=3,
    )
    summary = json.loads(json.dumps(result.summary()))
    assert summary["target"]["kind"] == "answer" and summary["target"]["question"] == QUESTION
    assert summary["target"]["tokens"] and summary["target"]["answer_source"] == "model"
    assert 0.0 <= summary["probability"] <= 1.0 and summary["probability"] == pytest.approx(summary["score"])
    assert summary["score_meaning"]["name"] == "probability"
    assert set(summary["methods"]) == {"gradcam", "ig", "region", "rise"}
    for method in summary["methods"].values():
        assert len(method["curves"]["insertion"]["scores"]) == 5
    assert summary["params"]["max_new_tokens"] == 3


@pytest.mark.slow
def test_the_command_line_writes_result_json(folders, tmp_path):
    import subprocess
    import sys

    from conftest import ASSETS, ROOT

    out = tmp_path / "out"
    command = [sys.executable, "-m", "explainers", str(ASSETS / "chelsea.jpg"), "--model", f"vlm:{folders['llava']}"]
    command += [
        "--prompt",
        QUESTION,
        "--out",
        str(out),
        "--steps",
        "4",
        "--methods",
        "gradcam,rise",
        "--rise-masks",
        "16",
    ]
    command += ["--max-new-tokens", "3", "--answer-token", "0"]
    env = {"HF_HUB_OFFLINE": "1", ALLOW_LOCAL_ENV: "1", "PATH": "/usr/bin:/bin", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "result.json").read_text())
    assert summary["target"]["kind"] == "answer" and summary["target"]["token_index"] == 0
    assert 0.0 <= summary["probability"] <= 1.0
    assert set(summary["methods"]) == {"gradcam", "rise"}
    bad = subprocess.run(
        command[:-4] + ["--answer-token", "x"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: --answer-token must be a whole number")


@pytest.mark.slow
def test_the_sanity_check_randomises_the_image_side_only(folders):
    adapter = load_model(f"vlm:{folders['llava']}")
    before = {n: p.clone() for n, p in adapter.model.named_parameters()}
    result = explain(photo(11), QUESTION, model=adapter, methods=["gradcam"], curve_steps=3, n_random=1, sanity=True)
    assert [s.stage for s in result.sanity.methods["gradcam"]][0] == "projector"
    assert all(torch.equal(before[n], p) for n, p in adapter.model.named_parameters())  # the shared model is untouched
