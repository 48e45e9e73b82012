"""A randomly initialised CLIP of ViT-B/32 shape: the cost of the real openai/clip-vit-base-patch32
without a download (weights are random, so its maps mean nothing; its timings are real)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "fixtures" / "tinyclip-config"


def random_clip_b32(seed: int = 0):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast

    from explainers.models.clip import ClipAdapter

    config = CLIPConfig(
        vision_config=dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            patch_size=32,
            image_size=224,
        ),
        text_config=dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8, intermediate_size=2048),
        projection_dim=512,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    tokenizer = CLIPTokenizerFast.from_pretrained(str(TOKENIZER))
    return ClipAdapter(model, tokenizer, name="clip:random-vit-b32")
