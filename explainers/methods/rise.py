"""RISE (Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
Models", BMVC 2018): the black-box baseline SMDL and LIMA compare against.

N random masks are drawn on a coarse grid (each cell kept with probability p), upsampled
bilinearly with a random sub-cell shift so that they are smooth and not aligned to the grid, and
the photo is scored through each (removed parts become the protocol's substrate; RISE: black).
A pixel's saliency is the score-weighted average of the masks that keep it:

    S(x) = 1 / (N p) * sum_i (s_i - mean(s)) * M_i(x)

Subtracting the mean score is ours: RISE scores with probabilities in [0, 1], our models with
log-probabilities or logits, and without the shift the map would mostly show how much mask
each pixel happened to get (a constant times sum_i M_i(x)). The expectation ranks pixels the
same as RISE's.

The mask budget is measured like IG's steps (bench/rise_masks.py): ``meta["split_half_r"]`` is
the correlation between the maps of the even and the odd masks, a free estimate of how far the
Monte Carlo average has settled (1 = stable).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..models.base import ModelAdapter
from ..params import Param
from ..substrates import make_substrate
from ..types import ProgressFn, SaliencyMap, Target, no_progress
from .base import Method

DEFAULT_MASKS = 1000
DEFAULT_CELLS = 7  # RISE's s: the masks' grid is s x s cells
DEFAULT_KEEP = 0.5  # RISE's p: the probability that a cell is kept


def random_masks(
    count: int, height: int, width: int, cells: int, keep: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random part of ``count`` RISE masks: ``[count, 1, cells, cells]`` 0/1 grids and
    ``[count, 2]`` shifts in pixels (drawn up front, so any chunking gives the same masks)."""
    grids = (torch.rand(count, 1, cells, cells, generator=generator) < keep).float()
    cell = (math.ceil(height / cells), math.ceil(width / cells))
    shifts = torch.stack(
        [
            torch.randint(0, cell[0], (count,), generator=generator),
            torch.randint(0, cell[1], (count,), generator=generator),
        ],
        dim=1,
    )
    return grids, shifts


def upsample_masks(grids: torch.Tensor, shifts: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Grids -> smooth ``[B, 1, height, width]`` masks: bilinear upsampling to (cells + 1) cells,
    then a crop at each mask's shift (RISE's construction)."""
    cells = grids.shape[-1]
    cell = (math.ceil(height / cells), math.ceil(width / cells))
    big = F.interpolate(
        grids, size=((cells + 1) * cell[0], (cells + 1) * cell[1]), mode="bilinear", align_corners=False
    )
    return torch.stack([big[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(shifts.tolist())])


def explain(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    target: Target,
    masks: int = DEFAULT_MASKS,
    cells: int = DEFAULT_CELLS,
    keep: float = DEFAULT_KEEP,
    progress: ProgressFn = no_progress,
    substrate: str = "black",
    seed: int = 0,
    **_: object,
) -> SaliencyMap:
    """RISE map at the pixels' size (see the module docstring): ``masks`` forward passes."""
    pixels = pixels.detach()
    height, width = pixels.shape[2:]  # not `_, _, ...`: `_` is the **_ keywords
    removed = make_substrate(pixels, substrate, seed)
    grids, shifts = random_masks(masks, height, width, cells, keep, torch.Generator().manual_seed(seed))
    device = pixels.device
    weighted = torch.zeros(2, height, width, dtype=torch.float64, device=device)  # even / odd masks
    coverage = torch.zeros(2, height, width, dtype=torch.float64, device=device)
    score_chunks: list[torch.Tensor] = []
    batch = adapter.forward_batch()
    for start in range(0, masks, batch):
        chunk = upsample_masks(grids[start : start + batch], shifts[start : start + batch], height, width).to(device)
        chunk_scores = adapter.score_many(removed.fill(chunk), target).to(torch.float64)
        score_chunks.append(chunk_scores)
        parity = torch.arange(start, start + len(chunk), device=device) % 2
        for half in (0, 1):
            rows = parity == half
            weighted[half] += torch.einsum("b,bhw->hw", chunk_scores[rows], chunk[rows, 0].double())
            coverage[half] += chunk[rows, 0].double().sum(dim=0)
        progress(min(1.0, (start + len(chunk)) / masks), "RISE")
    scores = torch.cat(score_chunks)
    mean = scores.mean()
    halves = (weighted - mean * coverage).cpu().numpy()
    saliency = halves.sum(axis=0) / (masks * keep)
    split_half = np.corrcoef(halves[0].ravel(), halves[1].ravel())[0, 1] if masks > 1 else float("nan")
    return SaliencyMap(
        "rise",
        saliency.astype(np.float32),
        meta={
            "masks": masks,
            "cells": cells,
            "keep": keep,
            "substrate": substrate,
            "split_half_r": float(split_half),
            "score_mean": float(mean),
            "score_std": float(scores.std()),
        },
    )


METHOD = Method(
    name="rise",
    title="RISE",
    explain=explain,
    paper="Petsiuk et al., BMVC 2018",
    note=(
        "**RISE** covers the photo with many random blotchy masks and asks the model to score each "
        "masked photo. A pixel is important when the photos that kept it scored higher than the average. "
        "Like region search it only asks the model questions (no look inside); the more masks, the "
        "steadier its map (one forward pass per mask)."
    ),
    params=(
        Param(
            "rise_masks",
            DEFAULT_MASKS,
            "RISE: number of random masks (one forward pass each)",
            low=8,
            high=8000,
            arg="masks",
            label="RISE: masks",
        ),
        Param(
            "rise_cells",
            DEFAULT_CELLS,
            "RISE: grid cells per side of a mask",
            low=2,
            high=32,
            arg="cells",
            label="RISE: grid cells per side",
        ),
    ),
    progress_share=0.4,
    colour="#ff7f0e",
    black_box=True,
    by_default=False,
)
