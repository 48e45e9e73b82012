"""Model names: unknown names and ids refused, no network handled, local folders only when allowed,
never remote code. Everything offline (HF_HUB_OFFLINE=1); CLIP is a random tiny model saved to tmp."""

from __future__ import annotations

import json

import pytest
from conftest import TINYCLIP  # tests/ is on sys.path (rootdir conftest, no package)

from explainers.errors import ModelLoadError, UserError
from explainers.models import load_model
from explainers.models.clip import ALLOW_LOCAL_ENV


@pytest.fixture(autouse=True)
def offline_and_fresh(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv(ALLOW_LOCAL_ENV, raising=False)
    load_model.cache_clear()  # failures are not cached, but a folder loaded in one test must not leak
    yield
    load_model.cache_clear()


@pytest.fixture(scope="module")
def saved_tiny_clip(tmp_path_factory):
    """A random tiny CLIPModel + tokenizer + image processor saved with save_pretrained."""
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("tinyclip")
    torch.manual_seed(0)
    CLIPModel(CLIPConfig.from_pretrained(TINYCLIP)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(TINYCLIP).save_pretrained(folder)
    CLIPImageProcessor.from_pretrained(TINYCLIP).save_pretrained(folder)
    return folder


def refused(name: str, *words: str) -> str:
    with pytest.raises(ModelLoadError) as caught:
        load_model(name)
    message = str(caught.value)
    assert isinstance(caught.value, UserError)
    assert message and "\n" not in message and "Traceback" not in message, message
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize(
    "name,words",
    [
        ("", ["empty"]),
        ("   ", ["empty"]),
        ("gpt-4", ["unknown model 'gpt-4'", "bundled"]),
        ("clip:", ["unknown model"]),
        ("clip:   ", ["unknown model"]),
        ("Bundled2", ["unknown model"]),
        ("clip:not an id", ["not a Hugging Face model id"]),
        ("clip:a/b/c", ["not a Hugging Face model id"]),
        ("clip:https://evil.example/model", ["not a Hugging Face model id"]),
        ("clip:" + "a" * 2000, ["too long"]),
        ("clip:a\x00b", ["control characters"]),
    ],
)
def test_unknown_names_are_refused(name, words):
    refused(name, *words)


def test_non_text_names_are_refused():
    for bad in (None, 5):
        with pytest.raises(ModelLoadError):
            load_model(bad)


def test_hub_id_offline_fails_with_one_clear_line():
    message = refused(
        "clip:openai/clip-vit-base-patch32", "could not load CLIP", "openai/clip-vit-base-patch32", "offline"
    )
    assert len(message) < 600


def test_unknown_hub_id_offline():
    refused("clip:nobody-xyz/no-such-model", "could not load CLIP", "nobody-xyz/no-such-model")


def test_local_folder_refused_without_the_environment_variable(saved_tiny_clip):
    message = refused("clip:" + str(saved_tiny_clip), "disabled", ALLOW_LOCAL_ENV)
    assert str(saved_tiny_clip) in message
    refused("clip:./tests/fixtures/tinyclip-config", "disabled")
    refused("clip:~/models/clip", "disabled")
    refused("clip:../../etc", "disabled")


def test_local_folder_loads_with_the_environment_variable(saved_tiny_clip, monkeypatch):
    import torch

    monkeypatch.setenv(ALLOW_LOCAL_ENV, "1")
    adapter = load_model("clip:" + str(saved_tiny_clip))
    assert adapter.name == f"clip:{saved_tiny_clip}"
    assert load_model("clip:" + str(saved_tiny_clip)) is adapter  # cached
    from explainers.types import Target

    pixels = torch.rand(2, 3, *adapter.input_size)
    scores = adapter.score(pixels, Target("a photo of a cat"))
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert adapter.prompt_tokens("a cat") <= adapter.max_prompt_tokens


@pytest.mark.parametrize("value", ["0", "true", "yes", ""])
def test_only_exactly_1_allows_local_folders(saved_tiny_clip, monkeypatch, value):
    monkeypatch.setenv(ALLOW_LOCAL_ENV, value)
    refused("clip:" + str(saved_tiny_clip), "disabled")


def test_local_folders_that_are_not_clip(tmp_path, monkeypatch):
    monkeypatch.setenv(ALLOW_LOCAL_ENV, "1")
    refused("clip:" + str(tmp_path), "no config.json")
    refused("clip:" + str(tmp_path / "missing"), "no config.json")
    (tmp_path / "config.json").write_text("{not json")
    refused("clip:" + str(tmp_path), "cannot be read")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    refused("clip:" + str(tmp_path), "'bert' model, not a CLIP model")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))  # but no weights
    refused("clip:" + str(tmp_path), "could not load CLIP from the local folder")


def test_remote_code_is_never_trusted(saved_tiny_clip, tmp_path, monkeypatch):
    """A folder whose config asks for custom code (auto_map) loads as plain CLIP or fails; its code never runs."""
    import shutil

    monkeypatch.setenv(ALLOW_LOCAL_ENV, "1")
    folder = tmp_path / "with-code"
    shutil.copytree(saved_tiny_clip, folder)
    marker = tmp_path / "code-ran"
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import CLIPModel as EvilModel\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    try:
        load_model("clip:" + str(folder))
    except ModelLoadError:
        pass
    assert not marker.exists()


def test_explain_with_an_unknown_model_is_a_user_error():
    from explainers import explain

    with pytest.raises(UserError) as caught:
        explain("assets/chelsea.jpg", "a cat", model="resnet", methods=["gradcam"])
    assert "unknown model 'resnet'" in str(caught.value)
