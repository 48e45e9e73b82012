"""Model registry: ``bundled`` (offline default), ``clip:<hub id or folder>``, and the model kinds
of MODEL_MODULES (``vlm:``, ``detector:``), each declared by its module's ``MODEL_KIND``; any other
model comes as an adapter instance (``ClassifierAdapter`` wraps a torch image classifier).

Loaded adapters are cached per (name, device): weights and per-prompt text features are reused
across calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import import_module

import torch

from ..errors import ModelLoadError, UserError
from ..params import Param
from .base import CamLayer, Metered, ModelAdapter
from .classifier import ClassifierAdapter


@dataclass(frozen=True)
class ModelKind:
    """A kind of model, declared in its module as ``MODEL_KIND`` (the module imports its heavy
    libraries lazily, inside ``load``)."""

    name: str  # "vlm", "detector"
    prefix: str  # "vlm:" (then a hub id or folder)
    load: Callable[[str], ModelAdapter]  # the part after the prefix -> an adapter on the CPU
    choices: tuple[tuple[str, str], ...] = ()  # the app's dropdown: (label, model name)
    params: tuple[Param, ...] = ()  # the target's parameters (--answer, --box, ...)
    description: str = ""


# One line per model kind: the module in this package that declares ``MODEL_KIND``.
# (bundled and clip are still the branches of _load_model below.)
MODEL_MODULES: tuple[str, ...] = ("vlm", "detector")
MODEL_KINDS: dict[str, ModelKind] = {
    kind.name: kind for kind in (import_module(f".{module}", __name__).MODEL_KIND for module in MODEL_MODULES)
}


def model_kind(name: object) -> ModelKind | None:
    """The registered kind whose prefix ``name`` starts with (None: bundled, clip or unknown)."""
    if not isinstance(name, str):
        return None
    text = name.strip()
    return next((kind for kind in MODEL_KINDS.values() if text.startswith(kind.prefix)), None)


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
    kind = model_kind(name)
    if kind is not None and name[len(kind.prefix) :].strip():
        source = name[len(kind.prefix) :].strip()
        try:
            return kind.load(source).to(device)
        except OSError as error:  # e.g. a folder name too long for the file system
            raise ModelLoadError(f"could not load {source!r}: {error.strerror or error}") from None
    if name.startswith("clip:") and name[5:].strip():
        from .clip import load_clip

        try:
            return load_clip(name[5:]).to(device)
        except OSError as error:  # e.g. a folder name too long for the file system
            raise ModelLoadError(f"could not load CLIP from {name[5:]!r}: {error.strerror or error}") from None
    kinds = "".join(f", '{kind.prefix}<hub id or folder>'" for kind in MODEL_KINDS.values())
    raise ModelLoadError(
        f"unknown model {name!r}; use 'bundled', 'clip:<hub id or folder>'{kinds} (e.g. {CLIP_CHOICES[0]!r})"
    )


__all__ = [
    "CLIP_CHOICES",
    "DEFAULT_MODEL",
    "DEVICES",
    "MODEL_KINDS",
    "CamLayer",
    "ClassifierAdapter",
    "Metered",
    "ModelAdapter",
    "ModelKind",
    "list_models",
    "load_model",
    "model_kind",
    "resolve_device",
]

load_model.cache_clear = _load_model.cache_clear  # type: ignore[attr-defined] - tests start fresh
