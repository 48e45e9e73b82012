"""What "removed" pixels become: shared by the curves (metrics) and by methods that need a
baseline (IG's black/blurred baseline, region search's masked images)."""
from __future__ import annotations

import torch
import torchvision.transforms.functional as TF

SUBSTRATES = ("black", "blur")
BLUR_SIGMA = 10.0  # RISE-style blurred substrate: object shapes vanish, colours stay


def substrate_image(pixels: torch.Tensor, kind: str = "black") -> torch.Tensor:
    """The image the curves delete towards / insert from: black, or a strong Gaussian blur."""
    if kind == "black":
        return torch.zeros_like(pixels)
    if kind == "blur":
        kernel = int(4 * BLUR_SIGMA) | 1
        return TF.gaussian_blur(pixels, [kernel, kernel], [BLUR_SIGMA, BLUR_SIGMA])
    raise ValueError(f"unknown substrate {kind!r}; use one of {SUBSTRATES}")
