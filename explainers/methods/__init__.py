"""Method registry: name -> Method. A new method is one file plus one line here.

Every method is ``explain(adapter, pixels, target, progress=..., **params) -> SaliencyMap``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..types import SaliencyMap
from . import gradcam, integrated_gradients, region_search


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    explain: Callable[..., SaliencyMap]
    paper: str


METHODS: dict[str, Method] = {
    "gradcam": Method("gradcam", "Grad-CAM", gradcam.explain, "Selvaraju et al., ICCV 2017"),
    "ig": Method("ig", "Integrated gradients", integrated_gradients.explain, "Sundararajan et al., ICML 2017"),
    "region": Method("region", "Region search", region_search.explain, "Chen et al. (SMDL), ICLR 2024"),
}


def list_methods() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> Method:
    from ..errors import UserError

    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]
