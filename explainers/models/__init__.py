"""Model registry: ``bundled`` (offline default) and ``clip:<hub id or folder>``; any other
model comes as an adapter instance (``ClassifierAdapter`` wraps a torch image classifier).

Loaded adapters are cached per (name, device): weights and per-prompt text features are reused
across calls.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..errors import ModelLoadError, UserError
from .base import CamLayer, Metered, ModelAdapter
from .classifier import ClassifierAdapter

DEFAULT_MODEL = "bundled"
# What the app offers; the API and CLI accept any CLIP hub id or (opt-in) folder.
CLIP_CHOICES = ("clip:openai/clip-vit-base-patch32", "clip:openai/clip-vit-base-patch16")
MAX_NAME_CHARS = 1000


def list_models() -> list[str]:
    return [DEFAULT_MODEL, *CLIP_CHOICES]


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` (or None) -> CUDA where there is one, else the CPU; ``"cuda:1"`` etc. as given."""
    text = str(device if device is not None else "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text.split(":")[0] not in DEVICES[1:]:
        raise UserError(f"the device must be auto, cpu or cuda (e.g. cuda:0), not {str(device)[:40]!r}")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("the device cuda was asked for, but this machine has no CUDA GPU; use auto or cpu")
    try:
        return torch.device(text)
    except RuntimeError:
        raise UserError(f"the device must be auto, cpu or cuda (e.g. cuda:0), not {str(device)[:40]!r}") from None


def load_model(name: str, device: str | torch.device = "cpu") -> ModelAdapter:
    """``"bundled"`` or ``"clip:<hub id or local folder>"`` on ``device`` -> a cached ModelAdapter."""
    return _load_model(name.strip() if isinstance(name, str) else name, resolve_device(device))


@lru_cache(maxsize=4)
def _load_model(name: str, device: torch.device) -> ModelAdapter:
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError("the model name is empty; use 'bundled' or 'clip:<hub id>'")
    name = name.strip()
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ModelLoadError(
            f"the model name is too long or holds control characters; use 'bundled' or "
            f"'clip:<hub id or folder>' (at most {MAX_NAME_CHARS} characters)"
        )
    if name == "bundled":
        from .bundled import load_bundled

        return load_bundled().to(device)
    if name.startswith("clip:") and name[5:].strip():
        from .clip import load_clip

        try:
            return load_clip(name[5:]).to(device)
        except OSError as error:  # e.g. a folder name too long for the file system
            raise ModelLoadError(f"could not load CLIP from {name[5:]!r}: {error.strerror or error}") from None
    raise ModelLoadError(
        f"unknown model {name!r}; use 'bundled' or 'clip:<hub id or folder>' (e.g. {CLIP_CHOICES[0]!r})"
    )


__all__ = [
    "CLIP_CHOICES",
    "DEFAULT_MODEL",
    "DEVICES",
    "CamLayer",
    "ClassifierAdapter",
    "Metered",
    "ModelAdapter",
    "list_models",
    "load_model",
    "resolve_device",
]

load_model.cache_clear = _load_model.cache_clear  # type: ignore[attr-defined] - tests start fresh
