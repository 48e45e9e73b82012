"""The ModelAdapter interface: pixels in [0, 1] -> a differentiable score per image.

Methods and metrics only ever see this interface, so a model adapts by what it declares
(input size, the layer Grad-CAM hooks and how to reshape it), never by subclassing a method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

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
    gradients: bool = True  # declared ability (INTERFACES.md): False where the score has no gradient

    @property
    def device(self) -> torch.device:
        """Where the model's weights live; the engine puts pixels there."""
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> ModelAdapter:
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

    # --- what the sanity check needs (explainers/sanity.py) ---------------------------------
    def randomization_stages(self) -> list[tuple[str, list[str]]]:
        """The stages of the cascading model-parameter randomisation (Adebayo et al., "Sanity
        Checks for Saliency Maps", NeurIPS 2018), top layer first: ``(label, names)`` where the
        names are modules (or parameters) of the network ``randomizable_copy`` returns. The stages
        are cumulative; together they cover every parameter the image score depends on.
        """
        raise NotImplementedError(f"{type(self).__name__} declares no randomisation stages")

    def randomizable_copy(self) -> tuple[ModelAdapter, torch.nn.Module]:
        """A copy of this adapter whose network is a deep copy (so it can be randomised without
        touching this shared adapter) and which shares everything that is not randomised (text
        encoders, class embeddings); with that network, which the stage names are relative to."""
        raise NotImplementedError(f"{type(self).__name__} cannot be copied for randomisation")


def parameter_units(names: Sequence[str]) -> list[str]:
    """Parameter names -> the units a cascade randomises, bottom first (in the order the network
    registers them, which is the forward order for sequential networks): the name up to its first
    index in a container (``blocks.3._expand_conv.weight`` -> ``blocks.3``, one block), else the
    owning module (``fc.weight`` -> ``fc``), else the parameter itself (a top-level token)."""
    units: dict[str, None] = {}
    for name in names:
        parts = name.split(".")
        index = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        unit = ".".join(parts[: index + 1]) if index is not None else ".".join(parts[:-1]) or name
        units.setdefault(unit, None)
    return list(units)


def units_label(units: Sequence[str]) -> str:
    """``["blocks.3", "blocks.4", "blocks.5", "stem.0"]`` -> ``"blocks.3-5, stem.0"`` (runs of
    consecutive indices in one container are shown as a range)."""
    runs: list[list] = []  # [prefix, first, last] or [name, None, None]
    for unit in units:
        prefix, _, index = unit.rpartition(".")
        if (
            index.isdigit()
            and runs
            and runs[-1][0] == prefix
            and runs[-1][2] is not None
            and abs(int(index) - runs[-1][2]) == 1
        ):
            runs[-1][2] = int(index)
        elif index.isdigit() and prefix:
            runs.append([prefix, int(index), int(index)])
        else:
            runs.append([unit, None, None])
    parts = []
    for prefix, first, last in runs:
        if first is None:
            parts.append(prefix)
        else:
            low, high = sorted((first, last))
            parts.append(f"{prefix}.{low}" if low == high else f"{prefix}.{low}-{high}")
    return ", ".join(parts)


class Metered:
    """A per-call view of a shared adapter that counts the images it scores and the backward
    passes methods report (images, not calls, so batched and unbatched code compare).

    Everything else is the adapter's own. One view per call (``explain`` makes one per method
    and one for the curves), so two threads explaining on one cached model count correctly.
    """

    def __init__(self, adapter: ModelAdapter | Metered) -> None:
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
