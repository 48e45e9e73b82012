"""What "removed" pixels become: shared by the curves (metrics), by region search's masked
images and by IG's baseline.

A ``Substrate`` is made once per image (``make_substrate``) and then fills any batch of keep
masks: ``substrate.fill(keep)`` keeps the pixels where ``keep`` is 1 and replaces the others.
``substrate.empty`` is the image with every pixel removed (the curves' end point).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torchvision.transforms.functional as TF

SUBSTRATES = ("black", "blur")
# IG's path starts from a fixed image, so only the substrates that do not depend on a mask serve.
BASELINES = ("black", "blur")
BLUR_SIGMA = 10.0  # RISE-style blurred substrate: object shapes vanish, colours stay


def substrate_image(pixels: torch.Tensor, kind: str = "black") -> torch.Tensor:
    """The image with every pixel removed for a mask-free substrate: black, or a strong Gaussian blur."""
    if kind == "black":
        return torch.zeros_like(pixels)
    if kind == "blur":
        kernel = int(4 * BLUR_SIGMA) | 1
        return TF.gaussian_blur(pixels, [kernel, kernel], [BLUR_SIGMA, BLUR_SIGMA])
    raise ValueError(f"unknown substrate {kind!r}; use one of {BASELINES}")


class Substrate(Protocol):
    """A photo with a rule for removed pixels."""

    kind: str
    pixels: torch.Tensor  # [1, 3, H, W], the photo
    empty: torch.Tensor  # [1, 3, H, W], every pixel removed

    def fill(self, keep: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` keep masks (1 keeps the photo's pixel, 0 removes it) -> ``[B, 3, H, W]``."""
        ...


@dataclass(frozen=True)
class FixedSubstrate:
    """Removed pixels take the value of a fixed image (black, or the blurred photo)."""

    kind: str
    pixels: torch.Tensor  # [1, 3, H, W], the photo
    empty: torch.Tensor  # [1, 3, H, W], every pixel removed

    def fill(self, keep: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` keep masks (1 keeps the photo's pixel, 0 removes it) -> ``[B, 3, H, W]``."""
        return self.empty + keep * (self.pixels - self.empty)


def make_substrate(pixels: torch.Tensor, kind: str = "black", seed: int = 0) -> Substrate:
    """The substrate ``kind`` for the ``[1, 3, H, W]`` photo ``pixels``. ``seed`` is for noisy substrates."""
    if kind not in SUBSTRATES:
        raise ValueError(f"unknown substrate {kind!r}; use one of {SUBSTRATES}")
    pixels = pixels.detach()
    return FixedSubstrate(kind, pixels, substrate_image(pixels, kind))
