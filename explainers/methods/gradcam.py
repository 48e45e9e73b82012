"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017), for CNNs and ViTs alike.

The adapter names the layer (``cam_layer``) and how to turn its activations into a
``[B, C, h, w]`` grid; for a CLIP ViT that is the input of the last block's first layer norm
with CLS dropped, on the patch grid from the config. One forward and one backward pass.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from ..models.base import ModelAdapter
from ..types import ProgressFn, SaliencyMap, Target, no_progress
from .base import Method


def cam_from(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` activations and gradients -> ``[B, h, w]`` ReLU(sum_c mean(grad_c) * A_c)."""
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activations).sum(dim=1))


def explain(
    adapter: ModelAdapter, pixels: torch.Tensor, target: Target, progress: ProgressFn = no_progress, **_: object
) -> SaliencyMap:
    """Grad-CAM map at the pixels' size, scaled to [0, 1] (all zeros if the CAM is all zero)."""
    layer = adapter.cam_layer()
    captured: list[torch.Tensor] = []
    caller = threading.get_ident()

    def keep(tensor: torch.Tensor) -> None:
        # The model is shared: another thread's forward pass fires this hook too. Keep ours only.
        if threading.get_ident() == caller:
            tensor.retain_grad()
            captured.append(tensor)

    if layer.where == "input":
        handle = layer.module.register_forward_pre_hook(lambda _m, args: keep(args[0]))
    else:
        handle = layer.module.register_forward_hook(lambda _m, _a, out: keep(out))
    try:
        x = pixels.detach().clone().requires_grad_(True)  # so the hooked tensor is in a graph
        with torch.enable_grad():
            adapter.score(x, target).sum().backward()
        adapter.count_backward(pixels.shape[0])
    finally:
        handle.remove()
    activation = captured[-1]
    cam = cam_from(layer.to_grid(activation.detach()), layer.to_grid(activation.grad))
    cam = F.interpolate(cam[:, None], size=pixels.shape[2:], mode="bilinear", align_corners=False)[0, 0]
    peak = float(cam.max())
    values = (cam / peak if peak > 0 else cam).cpu().numpy()
    progress(1.0, "Grad-CAM")
    return SaliencyMap("gradcam", values, meta={"grid": list(activation.shape), "cam_peak": peak})


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
