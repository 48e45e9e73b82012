"""Integrated gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks",
ICML 2017), written as a small batched loop in the style of Zennit.

Attribution = (x - x') * integral_0^1 grad s(x' + a (x - x')) da, by a quadrature rule over
``steps`` points, interpolants scored in batches. Completeness says the attributions sum to
s(x) - s(x'); the relative error is reported in the metadata.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..models.base import ModelAdapter
from ..substrates import substrate_image
from ..types import ProgressFn, SaliencyMap, Target, no_progress

DEFAULT_STEPS = 32  # chosen by measurement: see bench/ig_steps.py
RULES = ("gausslegendre", "trapezoid")


def quadrature(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Points in [0, 1] and weights summing to 1."""
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    if rule == "trapezoid":
        points = np.linspace(0.0, 1.0, steps)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        return points, weights
    raise ValueError(f"unknown rule {rule!r}; use one of {RULES}")


def explain(adapter: ModelAdapter, pixels: torch.Tensor, target: Target, steps: int = DEFAULT_STEPS,
            baseline: str = "black", rule: str = "gausslegendre",
            progress: ProgressFn = no_progress, **_: object) -> SaliencyMap:
    """IG map (channel sum of the attributions) at the pixels' size; signed, positive = for the target."""
    started, forward_before = time.perf_counter(), adapter.forward_passes
    pixels = pixels.detach()
    reference = substrate_image(pixels, baseline)
    alphas, weights = quadrature(steps, rule)
    difference = pixels - reference
    total_gradient = torch.zeros_like(pixels)
    for start in range(0, steps, adapter.max_batch):
        a = torch.tensor(alphas[start:start + adapter.max_batch], dtype=torch.float32).view(-1, 1, 1, 1)
        w = torch.tensor(weights[start:start + adapter.max_batch], dtype=torch.float32).view(-1, 1, 1, 1)
        interpolants = (reference + a * difference).requires_grad_(True)
        with torch.enable_grad():
            scores = adapter.score(interpolants, target)
            (gradients,) = torch.autograd.grad(scores.sum(), interpolants)
        total_gradient += (w * gradients).sum(dim=0, keepdim=True)
        progress(min(1.0, (start + len(a)) / steps), "integrated gradients")
    attributions = difference * total_gradient
    ends = adapter.score_many(torch.cat([pixels, reference]), target)
    delta = float(ends[0] - ends[1])
    total = float(attributions.sum())
    error = abs(total - delta) / max(abs(delta), 1e-12)
    return SaliencyMap(
        "ig", attributions.sum(dim=1)[0].numpy(), time.perf_counter() - started,
        forward_passes=adapter.forward_passes - forward_before, backward_passes=steps,
        meta={"steps": steps, "baseline": baseline, "rule": rule, "completeness_error": error,
              "attribution_sum": total, "score_difference": delta},
    )
