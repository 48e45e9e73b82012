"""Region search: submodular subset selection over image sub-regions.

From "Less is More: Fewer Interpretable Region via Submodular Subset Selection" (SMDL,
Chen et al., ICLR 2024) and its successor LIMA. The image is cut into ``n_regions``
sub-regions (SLIC superpixels by default); a set S of regions is scored by

    F(S) = lambda_consistency * s(S) + lambda_collaboration * (1 - s(I \\ S))

where s(.) is the target score of the image with only those regions kept (the rest black),
normalised so that the black image scores 0 and the full image 1. Greedy selection orders all
regions; the map paints each region by its rank (the first region chosen is the brightest).

Searches (``search=``):
- ``"greedy"`` -- plain greedy, SMDL's procedure and the reference: every remaining region
  is evaluated at every step (n(n+1)/2 sets, 2 forward passes each);
- ``"lazy"`` -- lazy greedy (Minoux 1978): stale gains in a priority queue, only the top ones
  re-evaluated. The same order as greedy when F is submodular, far fewer passes;
- ``"fast"`` -- the default: see ``fast_order``.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from ..models.base import ModelAdapter
from ..regions import label_masks, make_regions
from ..substrates import Substrate, make_substrate
from ..types import ProgressFn, SaliencyMap, Target, no_progress

SEARCHES = ("fast", "lazy", "greedy")
# F of a batch of sets (bool rows over the n regions) -> values; the search algorithms see only this.
SetFunction = Callable[[np.ndarray], np.ndarray]
# The fast search's defaults (bench/region_search.py measures them against plain greedy).
FAST_POOL = 6  # candidates evaluated per step
FAST_BUDGET_PER_REGION = 3  # sets per region in all, prior included (plain greedy: (n + 1) / 2)


def greedy_order(n: int, evaluate: SetFunction, progress: ProgressFn = no_progress,
                 empty_value: float = 0.0) -> tuple[list[int], list[float], int]:
    """Plain greedy: at each step add the region with the largest F(S + r). Ties -> lower index.

    Returns (order, marginal gains, number of sets evaluated).
    """
    selected = np.zeros(n, dtype=bool)
    current, order, gains, evaluated = empty_value, [], [], 0
    for step in range(n):
        candidates = np.flatnonzero(~selected)
        sets = np.repeat(selected[None], len(candidates), axis=0)
        sets[np.arange(len(candidates)), candidates] = True
        values = evaluate(sets)
        evaluated += len(candidates)
        best = int(np.argmax(values))  # first maximum = lowest index among ties
        order.append(int(candidates[best]))
        gains.append(float(values[best] - current))
        current = float(values[best])
        selected[candidates[best]] = True
        progress((step + 1) / n, "region search (greedy)")
    return order, gains, evaluated


def lazy_greedy_order(n: int, evaluate: SetFunction, progress: ProgressFn = no_progress,
                      empty_value: float = 0.0, batch: int = 4) -> tuple[list[int], list[float], int]:
    """Lazy greedy: re-evaluate only the ``batch`` regions with the best stale gains.

    A region is taken when its fresh gain is at least every other region's stale gain, which
    for a submodular F (gains only shrink) proves it is the greedy choice. Ties -> lower index.
    """
    selected = np.zeros(n, dtype=bool)
    stale = np.full(n, np.inf)  # upper bounds on the marginal gains
    fresh_at = np.full(n, -1)  # the step at which stale[r] was computed
    current, order, gains, evaluated = empty_value, [], [], 0
    for step in range(n):
        while True:
            remaining = np.flatnonzero(~selected)
            ranked = remaining[np.lexsort((remaining, -stale[remaining]))]
            best = ranked[0]
            if fresh_at[best] == step:
                break
            to_check = [r for r in ranked[:batch] if fresh_at[r] != step]
            sets = np.repeat(selected[None], len(to_check), axis=0)
            sets[np.arange(len(to_check)), to_check] = True
            values = evaluate(sets)
            evaluated += len(to_check)
            stale[to_check] = values - current
            fresh_at[to_check] = step
        order.append(int(best))
        gains.append(float(stale[best]))
        current += float(stale[best])
        selected[best] = True
        progress((step + 1) / n, "region search (lazy greedy)")
    return order, gains, evaluated


def fast_order(n: int, evaluate: SetFunction, progress: ProgressFn = no_progress,
               empty_value: float = 0.0, prior: np.ndarray | None = None, pool: int = FAST_POOL,
               budget: int | None = None, memory: int = 1, seed: int = 0,
               ) -> tuple[list[int], list[float], int]:
    """The default search: a context prior, then greedy over a small pool of candidates.

    The objective is far from submodular early on (a region's gain grows as regions combine:
    the evidence is redundant, so removing or showing one region alone changes little). Stale
    gains (lazy greedy) and single-region gains therefore mis-rank regions. Instead:

    - prior (RISE-style, Petsiuk et al. 2018): F of ``n`` random sets that each hold about half
      of the regions, in complementary pairs; a region's prior is mean F of the sets holding it
      minus mean F of the others -- its importance in the context of other regions, not alone
      (``n`` sets; with the SMDL objective ``n`` images, since a pair shares its two images);
    - each step evaluates the ``pool`` regions with the best estimate and takes the best
      (plain greedy restricted to the pool; ``pool >= n`` with no budget IS plain greedy). A
      region's estimate is its fresh gain if it was evaluated in the last ``memory`` steps, else
      its prior, so a region that looked weak once is judged again later;
    - when ``budget`` sets (prior included; default FAST_BUDGET_PER_REGION * n) have been
      evaluated, the remaining regions are ordered by their estimates.

    Ties -> lower index. Returns (order, gains (estimated for the unevaluated tail), sets evaluated).
    """
    budget = FAST_BUDGET_PER_REGION * n if budget is None else budget
    evaluated = 0
    if prior is None:
        # n sets in complementary pairs: with the SMDL objective a pair costs the two images of
        # one set (S kept, S removed), so the prior costs n images, not 2n.
        half = np.random.default_rng(seed).random(((n + 1) // 2, n)) < 0.5
        sets = np.concatenate([half, ~half])
        values = evaluate(sets)
        evaluated += len(sets)
        inside = sets.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            prior = (values @ sets) / inside - (values @ ~sets) / (len(sets) - inside)
        prior = np.nan_to_num(prior, nan=0.0)
    prior = np.asarray(prior, dtype=np.float64)
    selected = np.zeros(n, dtype=bool)
    fresh = np.full(n, -np.inf)  # fresh gains, trusted while fresh_at >= step - memory
    fresh_at = np.full(n, -(memory + 1))
    current, order, gains = empty_value, [], []
    for step in range(n):
        remaining = np.flatnonzero(~selected)
        estimate = np.where(fresh_at[remaining] >= step - memory, fresh[remaining], prior[remaining])
        ranked = remaining[np.lexsort((remaining, -estimate))]
        if evaluated >= budget:
            order += [int(r) for r in ranked]
            gains += [float(g) for g in np.sort(estimate)[::-1]]
            break
        candidates = ranked[:min(pool, budget - evaluated)]
        sets = np.repeat(selected[None], len(candidates), axis=0)
        sets[np.arange(len(candidates)), candidates] = True
        values = evaluate(sets)
        evaluated += len(candidates)
        fresh[candidates], fresh_at[candidates] = values - current, step
        best = int(candidates[int(np.argmax(values))])
        order.append(best)
        gains.append(float(fresh[best]))
        current = float(values.max())
        selected[best] = True
        progress((step + 1) / n, "region search")
    progress(1.0, "region search")
    return order, gains, evaluated


SEARCH_FUNCTIONS = {"greedy": greedy_order, "lazy": lazy_greedy_order, "fast": fast_order}


def keep_regions(substrate: Substrate, flat_masks: torch.Tensor, kept_sets: torch.Tensor) -> torch.Tensor:
    """``[n, H*W]`` region masks, ``[B, n]`` sets (0/1, or soft weights) -> ``[B, 3, H, W]`` images
    that keep those regions of the substrate's photo and remove the rest."""
    _, _, height, width = substrate.pixels.shape
    keep = (kept_sets @ flat_masks).clamp(max=1.0)
    return substrate.fill(keep.view(len(kept_sets), 1, height, width))


def smdl_objective(adapter: ModelAdapter, pixels: torch.Tensor, target: Target, masks: torch.Tensor,
                   lambda_consistency: float = 1.0, lambda_collaboration: float = 1.0,
                   bounded: bool = False, substrate: str = "black",
                   seed: int = 0) -> tuple[SetFunction, float, float]:
    """F(S) for sets of regions, batched: 2 images per set (S kept; S removed), each distinct image
    scored once per call. Removed regions become ``substrate`` (SMDL: black), and s is normalised
    so that the fully removed image scores 0.

    ``bounded=True`` clips the normalised scores to [0, 1] (SMDL scores with probabilities,
    which are bounded; our log and logit scores are not). It exists to measure how much the
    greedy reference itself moves under this change of scale (bench/region_search.py).
    Returns (F, score of the full image, score of the black image).
    """
    n = masks.shape[0]
    flat_masks = masks.reshape(n, -1)
    removed = make_substrate(pixels, substrate, seed)
    ends = adapter.score_many(torch.cat([pixels, removed.fill(torch.zeros_like(pixels[:, :1]))]), target)
    full, empty = float(ends[0]), float(ends[1])
    span = full - empty if abs(full - empty) > 1e-6 else 1e-6

    def evaluate(sets: np.ndarray) -> np.ndarray:
        # The regions partition the image, so "S removed" is "complement of S kept": every image
        # is a kept set. Each distinct kept set is scored once per call, so a set and its
        # complement asked together cost 2 images, not 4 (the fast search's prior does that).
        sets = np.asarray(sets, dtype=bool)
        kept_sets, index = np.unique(np.concatenate([sets, ~sets]), axis=0, return_inverse=True)
        images = keep_regions(removed, flat_masks, torch.from_numpy(kept_sets.astype(np.float32)))
        scores = (adapter.score_many(images, target).numpy() - empty) / span
        if bounded:
            scores = np.clip(scores, 0.0, 1.0)
        scores = scores[index.ravel()]
        kept, removed = scores[: len(sets)], scores[len(sets):]
        return lambda_consistency * kept + lambda_collaboration * (1.0 - removed)

    return evaluate, full, empty


def region_labels(pixels: torch.Tensor, n_regions: int, kind: str = "slic") -> np.ndarray:
    """``[1, 3, H, W]`` pixels in [0, 1] -> ``[H, W]`` region labels (see explainers.regions)."""
    image = (pixels[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return make_regions(image, n_regions, kind)


def order_map(order: list[int], labels: np.ndarray) -> np.ndarray:
    """Paint each region 1 - rank/n (the first region chosen = 1), as the map of an order."""
    n = len(order)
    rank_value = np.empty(n, dtype=np.float32)
    rank_value[order] = 1.0 - np.arange(n, dtype=np.float32) / n
    return rank_value[labels]


def prefix_sets(order: list[int]) -> np.ndarray:
    """``[n, n]`` bool: row k holds the first k + 1 regions of ``order`` (the sets an order's curve passes)."""
    n = len(order)
    return np.tril(np.ones((n, n), dtype=bool))[:, np.argsort(order)]


def explain(adapter: ModelAdapter, pixels: torch.Tensor, target: Target, n_regions: int = 49,
            regions: str = "slic", search: str = "fast", lambda_consistency: float = 1.0,
            lambda_collaboration: float = 1.0, progress: ProgressFn = no_progress,
            **_: object) -> SaliencyMap:
    """Region-search map: each region painted 1 - rank/n (first chosen = 1)."""
    if search not in SEARCH_FUNCTIONS:
        raise ValueError(f"unknown search {search!r}; use one of {SEARCHES}")
    started, forward_before = time.perf_counter(), adapter.forward_passes
    backward_before = adapter.backward_passes
    pixels = pixels.detach()
    labels = region_labels(pixels, n_regions, regions)
    masks = label_masks(labels)
    n = masks.shape[0]
    evaluate, full, empty = smdl_objective(adapter, pixels, target, masks, lambda_consistency,
                                           lambda_collaboration)
    # F(empty set) = l_c * s(black) + l_k * (1 - s(full)) = 0 after normalisation.
    order, gains, evaluated = SEARCH_FUNCTIONS[search](n, evaluate, progress, 0.0)
    return SaliencyMap(
        "region", order_map(order, labels), time.perf_counter() - started,
        forward_passes=adapter.forward_passes - forward_before,
        backward_passes=adapter.backward_passes - backward_before,
        meta={"search": search, "regions": regions, "n_regions": n, "order": order, "gains": gains,
              "sets_evaluated": evaluated, "labels_shape": list(labels.shape),
              "lambda_consistency": lambda_consistency, "lambda_collaboration": lambda_collaboration},
    )
