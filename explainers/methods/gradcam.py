"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017), for CNNs and ViTs alike.

The adapter names the layer (``cam_layer``) and how to turn its activations into a
``[B, C, h, w]`` grid; for a CLIP ViT that is the input of the last block's first layer norm
with CLS dropped, on the patch grid from the config. One forward and one backward pass.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..models.base import ModelAdapter
from ..types import ProgressFn, SaliencyMap, Target, no_progress


def cam_from(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` activations and gradients -> ``[B, h, w]`` ReLU(sum_c mean(grad_c) * A_c)."""
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activations).sum(dim=1))


def explain(adapter: ModelAdapter, pixels: torch.Tensor, target: Target,
            progress: ProgressFn = no_progress, **_: object) -> SaliencyMap:
    """Grad-CAM map at the pixels' size, scaled to [0, 1] (all zeros if the CAM is all zero)."""
    started, forward_before = time.perf_counter(), adapter.forward_passes
    layer = adapter.cam_layer()
    captured: list[torch.Tensor] = []

    def keep(tensor: torch.Tensor) -> None:
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
    finally:
        handle.remove()
    activation = captured[-1]
    cam = cam_from(layer.to_grid(activation.detach()), layer.to_grid(activation.grad))
    cam = F.interpolate(cam[:, None], size=pixels.shape[2:], mode="bilinear", align_corners=False)[0, 0]
    peak = float(cam.max())
    values = (cam / peak if peak > 0 else cam).numpy()
    progress(1.0, "Grad-CAM")
    return SaliencyMap(
        "gradcam", values, time.perf_counter() - started,
        forward_passes=adapter.forward_passes - forward_before, backward_passes=pixels.shape[0],
        meta={"grid": list(activation.shape), "cam_peak": peak},
    )
