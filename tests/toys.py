"""Toy models shared by the tests (as Captum's tests keep theirs in one place): small adapters
whose every score, gradient and curve point can be computed by hand."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from explainers.models.base import CamLayer, ModelAdapter


class FunctionAdapter(ModelAdapter):
    """score(pixels) = ``function(pixels)`` (``[B, 3, H, W]`` -> ``[B]``) for every prompt."""

    def __init__(
        self, function: Callable[[torch.Tensor], torch.Tensor], input_size=(8, 8), max_batch=32, name="toy"
    ) -> None:
        self.function, self.input_size, self.max_batch, self.name = function, tuple(input_size), max_batch, name

    def prompt_scores(self, pixels, prompts):
        return self.function(pixels)[:, None].expand(-1, len(prompts))


def linear(weights: np.ndarray, max_batch: int = 32) -> FunctionAdapter:
    """score = sum_p w_p * x_p over channel 0: removing a pixel costs exactly w_p * x_p."""
    w = torch.from_numpy(np.asarray(weights)).float()
    return FunctionAdapter(
        lambda x: (x[:, 0] * w).sum(dim=(1, 2)), input_size=w.shape, max_batch=max_batch, name="linear"
    )


def signed_linear(side: int = 16) -> FunctionAdapter:
    """score = sum(w * pixels) with w = 1 on the left half and -0.5 on the right: keeping only the
    left half scores above the full image, removing it scores below the black image."""
    w = torch.ones(1, 1, side, side)
    w[..., side // 2 :] = -0.5
    return FunctionAdapter(lambda x: (x * w).sum(dim=(1, 2, 3)), input_size=(side, side), name="signed-linear")


def evidence(side: int = 224) -> FunctionAdapter:
    """score = log sigmoid(12 (e - 0.25)), e a fixed weighted pixel sum concentrated in one blob:
    nonlinear and not submodular, saturating like a real classifier (gains grow as regions
    combine). Cheap enough for plain greedy's thousands of passes."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.rand(1, 3, side, side, generator=generator)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    weight = weight * torch.exp(-((xx - 0.2) ** 2 + yy**2) / 0.3)
    scale = 1.0 / float(weight.sum())
    return FunctionAdapter(
        lambda x: torch.nn.functional.logsigmoid(12.0 * ((x * weight).sum(dim=(1, 2, 3)) * scale - 0.25)),
        input_size=(side, side),
        name="evidence",
    )


class OneConv(ModelAdapter):
    """score = sum_c v_c * mean(conv(x)_c), a 1x1 conv: dscore/dA_c = v_c / (h w) everywhere."""

    name = "one-conv"
    input_size = (4, 4)
    WEIGHT = [[1.0, -2.0, 0.5], [0.3, 0.7, -1.0]]
    BIAS = [0.1, -0.2]
    V = [2.0, -3.0]

    def __init__(self) -> None:
        self.conv = torch.nn.Conv2d(3, 2, kernel_size=1, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(self.WEIGHT).view(2, 3, 1, 1))
            self.conv.bias.copy_(torch.tensor(self.BIAS))
        self.v = torch.tensor(self.V)

    def prompt_scores(self, pixels, prompts):
        a = self.conv(pixels)
        return (a.mean(dim=(2, 3)) * self.v).sum(dim=1, keepdim=True).repeat(1, len(prompts))

    def cam_layer(self):
        return CamLayer(self.conv, "output", lambda t: t)


class RandomizableConv(OneConv):
    """The one-conv toy with a one-stage cascade, so the sanity check can run on it (at 8 x 8: SSIM
    needs 7 x 7)."""

    name = "randomizable-conv"
    input_size = (8, 8)

    def randomization_stages(self):
        return [("conv", ["weight", "bias"])]

    def randomizable_copy(self):
        clone = copy.copy(self)
        clone.conv = copy.deepcopy(self.conv)
        return clone, clone.conv
