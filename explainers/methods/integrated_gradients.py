"""Integrated gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks",
ICML 2017), written as a small batched loop in the style of Zennit.

Attribution = (x - x') * integral_0^1 grad s(x' + a (x - x')) da. Completeness says the
attributions sum to s(x) - s(x'); we report the relative error and use it to choose the
number of steps:

- the path is sampled at a = u**2 (u uniform): on the bundled model the score changes
  steeply just after the black baseline, and quadratic spacing puts points there;
- the integral is a nested trapezoid rule: start with ``steps`` intervals and halve them
  (reusing every gradient already taken) while the completeness error exceeds
  ``tolerance``, up to ``max_steps``. bench/ig_steps.py has the measurements behind this.

The map is |sum over colour channels of the attributions| (Captum's "absolute_value" view):
on deletion/insertion curves the signed map ranks scattered pixels of both signs and does
no better than random, while the magnitude beats it (bench/ig_steps.py).
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.base import ModelAdapter
from ..params import Param
from ..substrates import BASELINES, substrate_image
from ..types import ProgressFn, SaliencyMap, Target, no_progress
from .base import Method

DEFAULT_STEPS = 32
DEFAULT_MAX_STEPS = 128
DEFAULT_TOLERANCE = 0.05
PATH_POWER = 2  # a = u ** PATH_POWER


def _path_gradients(
    adapter: ModelAdapter, reference: torch.Tensor, difference: torch.Tensor, target: Target, u: np.ndarray
) -> torch.Tensor:
    """sum_j grad s(x' + a(u_j) (x - x')) * a'(u_j) over the points ``u``, batched. ``[1, 3, H, W]``."""
    total = torch.zeros_like(difference)
    batch = adapter.max_grad_batch
    for start in range(0, len(u), batch):
        chunk = torch.from_numpy(u[start : start + batch]).float().view(-1, 1, 1, 1).to(difference.device)
        alpha = chunk**PATH_POWER
        slope = PATH_POWER * chunk ** (PATH_POWER - 1)
        interpolants = (reference + alpha * difference).requires_grad_(True)
        with torch.enable_grad():
            scores = adapter.score(interpolants, target)
            (gradients,) = torch.autograd.grad(scores.sum(), interpolants)
        total += (slope * gradients).sum(dim=0, keepdim=True)
        adapter.count_backward(len(chunk))
    return total


def explain(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    target: Target,
    steps: int = DEFAULT_STEPS,
    baseline: str = "black",
    max_steps: int = DEFAULT_MAX_STEPS,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: ProgressFn = no_progress,
    **_: object,
) -> SaliencyMap:
    """IG map at the pixels' size (see the module docstring). ``steps`` = initial intervals."""
    pixels = pixels.detach()
    reference = substrate_image(pixels, baseline)
    difference = pixels - reference
    ends = adapter.score_many(torch.cat([pixels, reference]), target)
    delta = float(ends[0] - ends[1])
    max_steps = max(max_steps, steps)

    # Trapezoid over u in [0, 1]: the u=0 end has a'(0) = 0 with PATH_POWER > 1, so only u=1 is needed.
    end_sum = _path_gradients(adapter, reference, difference, target, np.array([1.0])) / 2
    if PATH_POWER == 1:
        end_sum += _path_gradients(adapter, reference, difference, target, np.array([0.0])) / 2
    interior_sum = _path_gradients(adapter, reference, difference, target, np.arange(1, steps) / steps)
    intervals = steps
    while True:
        attributions = difference * (end_sum + interior_sum) / intervals
        error = abs(float(attributions.sum()) - delta) / max(abs(delta), 1e-12)
        progress(min(1.0, intervals / max_steps), "integrated gradients")
        if error <= tolerance or intervals * 2 > max_steps:
            break
        # Halve the intervals: the new points are the midpoints of the current ones.
        midpoints = (np.arange(intervals) + 0.5) / intervals
        interior_sum += _path_gradients(adapter, reference, difference, target, midpoints)
        intervals *= 2
    return SaliencyMap(
        "ig",
        attributions.sum(dim=1)[0].abs().cpu().numpy(),
        meta={
            "steps": intervals,
            "initial_steps": steps,
            "max_steps": max_steps,
            "baseline": baseline,
            "path": f"a = u**{PATH_POWER}",
            "rule": "nested trapezoid",
            "completeness_error": error,
            "converged": error <= tolerance,
            "attribution_sum": float(attributions.sum()),
            "score_difference": delta,
        },
    )


def facts(saliency: SaliencyMap) -> str:
    """The caption's extra: how far the attributions' sum is from the score difference."""
    error = saliency.meta.get("completeness_error")
    return "" if error is None else f"completeness error {error:.1%}"


METHOD = Method(
    name="ig",
    title="Integrated gradients",
    explain=explain,
    paper="Sundararajan et al., ICML 2017",
    note=(
        "**Integrated gradients** fades the photo in from a blank picture in small steps and adds up, "
        "pixel by pixel, how much each step moved the score. Its map is sharp and often speckled; "
        "in theory all of it adds up to the score of the photo minus the score of the blank picture."
    ),
    params=(
        Param(
            "ig_steps",
            DEFAULT_STEPS,
            "integrated-gradients steps (refined up to 128 while the completeness error is over 5 %)",
            low=2,
            high=256,
            arg="steps",
            label="Integrated gradients: steps",
        ),
        Param(
            "ig_baseline",
            "black",
            "the picture the path starts from",
            choices=BASELINES,
            arg="baseline",
            label="Integrated gradients: baseline",
        ),
    ),
    progress_share=0.25,
    colour="#1f77b4",
    smoothable=True,
    facts=facts,
)
