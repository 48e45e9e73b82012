"""Method registry: name -> Method. A new method is one file (which declares its ``METHOD``)
plus one line here; the API, the CLI, the app and the benchmarks read everything from it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from importlib import import_module

import torch

from ..errors import UserError
from ..models.base import Metered, ModelAdapter
from ..types import ProgressFn, SaliencyMap, Target, no_progress
from .base import Method, Reference

# One line per method: the module in this package that declares ``METHOD``.
METHOD_MODULES = (
    "gradcam",
    "integrated_gradients",
    "region_search",
    "rise",
)
METHODS: dict[str, Method] = {
    method.name: method for method in (import_module(f".{module}", __name__).METHOD for module in METHOD_MODULES)
}


def list_methods() -> list[str]:
    return list(METHODS)


def default_methods() -> list[str]:
    return [name for name, m in METHODS.items() if m.by_default]


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def run_method(
    name: str, adapter: ModelAdapter, pixels: torch.Tensor, target: Target, progress: ProgressFn = no_progress, **kwargs
) -> SaliencyMap:
    """Run one method through its own meter: the map with its seconds and forward/backward passes.

    ``kwargs`` are the method's own keywords (``Method.kwargs``) and the protocol's
    ``substrate`` and ``seed``.
    """
    method = get_method(name)
    meter = Metered(adapter)
    started = time.perf_counter()
    saliency = method.explain(meter, pixels, target, progress=progress, **kwargs)
    if method.display == "regions" and saliency.regions is None:
        raise RuntimeError(f"method {name!r} is drawn by regions but its map carries none")
    return replace(
        saliency,
        seconds=time.perf_counter() - started,
        forward_passes=meter.forward_passes,
        backward_passes=meter.backward_passes,
        title=method.title,
        colour=method.colour,
    )


__all__ = ["METHODS", "Method", "Reference", "default_methods", "get_method", "list_methods", "run_method"]
