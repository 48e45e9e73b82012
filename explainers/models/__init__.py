"""Model registry: ``bundled`` (offline default) and ``clip:<hub id or folder>``.

Loaded adapters are cached: weights and per-prompt text features are reused across calls.
"""
from __future__ import annotations

from functools import lru_cache

from ..errors import ModelLoadError
from .base import CamLayer, ModelAdapter

DEFAULT_MODEL = "bundled"
# What the app offers; the API and CLI accept any CLIP hub id or (opt-in) folder.
CLIP_CHOICES = ("clip:openai/clip-vit-base-patch32", "clip:openai/clip-vit-base-patch16")
MAX_NAME_CHARS = 1000


def list_models() -> list[str]:
    return [DEFAULT_MODEL, *CLIP_CHOICES]


@lru_cache(maxsize=3)
def load_model(name: str) -> ModelAdapter:
    """``"bundled"`` or ``"clip:<hub id or local folder>"`` -> a cached ModelAdapter."""
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError("the model name is empty; use 'bundled' or 'clip:<hub id>'")
    name = name.strip()
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ModelLoadError(f"the model name is too long or holds control characters; use 'bundled' or "
                             f"'clip:<hub id or folder>' (at most {MAX_NAME_CHARS} characters)")
    if name == "bundled":
        from .bundled import load_bundled

        return load_bundled()
    if name.startswith("clip:") and name[5:].strip():
        from .clip import load_clip

        try:
            return load_clip(name[5:])
        except OSError as error:  # e.g. a folder name too long for the file system
            raise ModelLoadError(f"could not load CLIP from {name[5:]!r}: {error.strerror or error}") from None
    raise ModelLoadError(
        f"unknown model {name!r}; use 'bundled' or 'clip:<hub id or folder>' "
        f"(e.g. {CLIP_CHOICES[0]!r})"
    )


__all__ = ["CamLayer", "ModelAdapter", "list_models", "load_model", "DEFAULT_MODEL", "CLIP_CHOICES"]
