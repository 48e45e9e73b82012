"""The ModelAdapter interface: pixels in [0, 1] -> a differentiable score per image.

Methods and metrics only ever see this interface, so a model adapts by what it declares
(input size, the layer Grad-CAM hooks and how to reshape it), never by subclassing a method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from PIL import Image

from ..types import Target


@dataclass(frozen=True)
class CamLayer:
    """Where Grad-CAM reads activations: ``module``'s input or output, reshaped to ``[B, C, h, w]``."""

    module: torch.nn.Module
    where: Literal["input", "output"]
    to_grid: Callable[[torch.Tensor], torch.Tensor]


class ModelAdapter:
    """Base for model adapters. Subclasses implement ``prompt_scores`` and ``cam_layer``.

    An adapter is shared (the registry caches it across calls and threads), so it keeps no
    per-call state: passes are counted by a ``Metered`` view made for each call.
    """

    name: str = "model"
    input_size: tuple[int, int] = (224, 224)
    max_batch: int = 32  # images per forward pass when a caller scores many at once
    max_grad_batch: int = 16  # images per forward+backward pass: autograd keeps the activations
    max_prompt_tokens: int | None = None

    @property
    def device(self) -> torch.device:
        """Where the model's weights live; the engine puts pixels there."""
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> "ModelAdapter":
        """Move the model to ``device`` (in place) and return it."""
        if torch.device(device) != self.device:
            raise NotImplementedError(f"{type(self).__name__} cannot move to {device}")
        return self

    # --- images -----------------------------------------------------------------------
    def load_image(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> ``[1, 3, H, W]`` float pixels in [0, 1] at the model's input size.

        The whole image is resized (not cropped), so the maps cover everything the user sees.
        """
        rgb = image.convert("RGB").resize(self.input_size[::-1], Image.BICUBIC)
        array = np.asarray(rgb, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()

    # --- scores -----------------------------------------------------------------------
    def prompt_scores(self, pixels: torch.Tensor, prompts: tuple[str, ...]) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, P]``: the model's own score of each prompt (differentiable)."""
        raise NotImplementedError

    def score(self, pixels: torch.Tensor, target: Target) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B]``: the target score (differentiable). See ``Target``."""
        scores = self.prompt_scores(pixels, target.prompts)
        if target.contrast:
            return torch.softmax(scores, dim=1)[:, 0]
        return scores[:, 0]

    @torch.no_grad()
    def score_many(self, pixels: torch.Tensor, target: Target) -> torch.Tensor:
        """The target score of many images, in batches of ``max_batch``, without gradients."""
        out = [self.score(chunk, target) for chunk in pixels.split(self.max_batch)]
        return torch.cat(out) if out else torch.empty(0)

    @torch.no_grad()
    def prompt_probabilities(self, pixels: torch.Tensor, target: Target) -> dict[str, float]:
        """With contrast prompts: the softmax probability of each prompt for one image."""
        scores = self.prompt_scores(pixels, target.prompts)
        probabilities = torch.softmax(scores, dim=1)[0]
        return {p: float(v) for p, v in zip(target.prompts, probabilities)}

    def count_backward(self, images: int) -> None:
        """Methods report their backward passes here; a plain adapter does not count (``Metered`` does)."""

    # --- what Grad-CAM needs --------------------------------------------------------------
    def cam_layer(self) -> CamLayer:
        raise NotImplementedError



class Metered:
    """A per-call view of a shared adapter that counts the images it scores and the backward
    passes methods report (images, not calls, so batched and unbatched code compare).

    Everything else is the adapter's own. One view per call (``explain`` makes one per method
    and one for the curves), so two threads explaining on one cached model count correctly.
    """

    def __init__(self, adapter: "ModelAdapter | Metered") -> None:
        self.adapter = adapter
        self.forward_passes = 0
        self.backward_passes = 0

    def __getattr__(self, name: str):
        return getattr(self.adapter, name)

    def score(self, pixels: torch.Tensor, target: Target) -> torch.Tensor:
        scores = self.adapter.score(pixels, target)
        self.forward_passes += pixels.shape[0]
        return scores

    @torch.no_grad()
    def score_many(self, pixels: torch.Tensor, target: Target) -> torch.Tensor:
        out = [self.score(chunk, target) for chunk in pixels.split(self.adapter.max_batch)]
        return torch.cat(out) if out else torch.empty(0)

    def prompt_probabilities(self, pixels: torch.Tensor, target: Target) -> dict[str, float]:
        probabilities = self.adapter.prompt_probabilities(pixels, target)
        self.forward_passes += pixels.shape[0]
        return probabilities

    def count_backward(self, images: int) -> None:
        self.backward_passes += images
