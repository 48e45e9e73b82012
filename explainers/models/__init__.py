"""Model registry: a name's prefix -> its kind (``ModelKind``: loader, the app's choices, the
target's parameters). ``bundled`` (offline default), ``clip:<hub id or folder>``,
``vlm:<hub id or folder>`` (a VLM's answer) and ``detector:<hub id or folder>`` (an
open-vocabulary detector's box); any other
model comes as an adapter instance (``ClassifierAdapter`` wraps a torch image classifier).

A kind is one module (which declares its ``MODEL_KIND``) plus one line in ``MODEL_MODULES``.
Loaded adapters are cached per (name, device): weights and per-prompt text features are reused
across calls.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import import_module

import torch

from ..errors import ModelLoadError, UserError
from .base import CamLayer, Metered, ModelAdapter, ModelKind
from .classifier import ClassifierAdapter

# One line per kind: the module in this package that declares ``MODEL_KIND``.
MODEL_MODULES = (
    "bundled",
    "clip",
    "vlm",
    "detector",
)
MODEL_KINDS: dict[str, ModelKind] = {
    kind.name: kind for kind in (import_module(f".{module}", __name__).MODEL_KIND for module in MODEL_MODULES)
}
DEFAULT_MODEL = "bundled"
MAX_NAME_CHARS = 1000


def model_choices() -> list[tuple[str, str]]:
    """What the app's model dropdown offers, kind by kind: (label, model name)."""
    return [choice for kind in MODEL_KINDS.values() for choice in kind.choices]


def list_models() -> list[str]:
    return [name for _, name in model_choices()]


def _usage() -> str:
    return " or ".join(kind.usage or repr(kind.prefix) for kind in MODEL_KINDS.values())


def model_kind(name: str) -> ModelKind:
    """The kind whose prefix ``name`` carries; ModelLoadError naming every kind otherwise."""
    for kind in MODEL_KINDS.values():
        if kind.source(name) is not None:
            return kind
    example = next((n for _, n in model_choices() if n != DEFAULT_MODEL), DEFAULT_MODEL)
    raise ModelLoadError(f"unknown model {name!r}; use {_usage()} (e.g. {example!r})")


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
    """A registered model name (``"bundled"``, ``"clip:<hub id or local folder>"``) on ``device``
    -> a cached ModelAdapter."""
    return _load_model(name.strip() if isinstance(name, str) else name, resolve_device(device))


@lru_cache(maxsize=4)
def _load_model(name: str, device: torch.device) -> ModelAdapter:
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"the model name is empty; use {_usage()}")
    name = name.strip()
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ModelLoadError(
            f"the model name is too long or holds control characters; use {_usage()} "
            f"(at most {MAX_NAME_CHARS} characters)"
        )
    kind = model_kind(name)
    source = kind.source(name)
    assert source is not None  # model_kind found the kind by it
    try:
        return kind.load(source).to(device)
    except OSError as error:  # e.g. a folder name too long for the file system
        raise ModelLoadError(f"could not load {source.strip()!r}: {error.strerror or error}") from None


__all__ = [
    "DEFAULT_MODEL",
    "DEVICES",
    "MODEL_KINDS",
    "MODEL_MODULES",
    "CamLayer",
    "ClassifierAdapter",
    "Metered",
    "ModelAdapter",
    "ModelKind",
    "list_models",
    "load_model",
    "model_choices",
    "model_kind",
    "resolve_device",
]

load_model.cache_clear = _load_model.cache_clear  # type: ignore[attr-defined]  # tests start fresh
