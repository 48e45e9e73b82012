"""Grad-CAM's computation (Selvaraju et al., ICCV 2017), shared by the Grad-CAM method and by
region search, which may order the pixels inside its regions by it (methods never import each
other, so it lives here)."""

from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F

from .models.base import ModelAdapter
from .types import Target


def cam_from(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` activations and gradients -> ``[B, h, w]`` ReLU(sum_c mean(grad_c) * A_c)."""
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activations).sum(dim=1))


def grad_cam(adapter: ModelAdapter, pixels: torch.Tensor, target: Target) -> tuple[np.ndarray, list[int], float]:
    """Grad-CAM at the pixels' size, scaled to [0, 1] (all zeros if the CAM is all zero), with the
    shape of the layer's activations and the CAM's peak. One forward and one backward pass."""
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
    if activation.grad is None:  # the score does not depend on the layer's activations
        raise RuntimeError(
            f"Grad-CAM: the {layer.where} of {type(layer.module).__name__} got no gradient from the score"
        )
    cam = cam_from(layer.to_grid(activation.detach()), layer.to_grid(activation.grad))
    cam = F.interpolate(cam[:, None], size=pixels.shape[2:], mode="bilinear", align_corners=False)[0, 0]
    peak = float(cam.max())
    values = (cam / peak if peak > 0 else cam).cpu().numpy()
    return values, list(activation.shape), peak
