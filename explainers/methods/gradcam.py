"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017), for CNNs and ViTs alike.

The adapter names the layer (``cam_layer``) and how to turn its activations into a
``[B, C, h, w]`` grid; for a CLIP ViT that is the input of the last block's first layer norm
with CLS dropped, on the patch grid from the config. One forward and one backward pass.
"""

from __future__ import annotations

import torch

from ..cam import cam_from, grad_cam  # noqa: F401 - cam_from re-exported
from ..models.base import ModelAdapter
from ..types import ProgressFn, SaliencyMap, Target, no_progress
from .base import Method


def explain(
    adapter: ModelAdapter, pixels: torch.Tensor, target: Target, progress: ProgressFn = no_progress, **_: object
) -> SaliencyMap:
    """Grad-CAM map at the pixels' size, scaled to [0, 1] (all zeros if the CAM is all zero)."""
    values, grid, peak = grad_cam(adapter, pixels, target)
    progress(1.0, "Grad-CAM")
    return SaliencyMap("gradcam", values, meta={"grid": grid, "cam_peak": peak})


METHOD = Method(
    name="gradcam",
    title="Grad-CAM",
    explain=explain,
    paper="Selvaraju et al., ICCV 2017",
    note=(
        "**Grad-CAM** looks inside the model, at its last layer of feature maps, and asks which of "
        "them push the score up. It needs one pass forwards and one backwards, so it is the fastest; "
        "but that layer is a coarse grid (7 × 7 cells for the bundled model), so its map is a few soft blobs."
    ),
    progress_share=0.05,
    colour="#d62728",
)
