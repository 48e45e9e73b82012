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

from typing import Callable

import numpy as np
import torch

from ..models.base import ModelAdapter
from ..regions import label_masks, region_labels
from ..substrates import Substrate, make_substrate
from ..params import Param
from ..types import ProgressFn, SaliencyMap, Target, no_progress
from .base import Method

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
        progress((step + 1) / n, "region search (greedy)", order=order)
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
        progress((step + 1) / n, "region search (lazy greedy)", order=order)
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
        progress((step + 1) / n, "region search", order=order)
    progress(1.0, "region search", order=order)
    return order, gains, evaluated


SEARCH_FUNCTIONS = {"greedy": greedy_order, "lazy": lazy_greedy_order, "fast": fast_order}


def keep_regions(substrate: Substrate, flat_masks: torch.Tensor, kept_sets: torch.Tensor) -> torch.Tensor:
    """``[n, H*W]`` region masks, ``[B, n]`` sets (0/1, or soft weights) -> ``[B, 3, H, W]`` images
    that keep those regions of the substrate's photo and remove the rest."""
    _, _, height, width = substrate.pixels.shape
    keep = (kept_sets @ flat_masks).clamp(max=1.0)
    return substrate.fill(keep.view(len(kept_sets), 1, height, width))


class SmdlObjective:
    """F(S) = l_c * s(S kept) + l_k * (1 - s(S removed)) for batches of sets (bool rows over the
    n regions), s normalised so that the fully removed image scores 0 and the photo 1.

    The regions partition the image, so "S removed" is "the complement of S kept": every image
    is a kept set, and each distinct kept set is scored once per objective (a set and its
    complement asked together cost 2 images, not 4; a set asked again costs nothing: plain
    greedy's last two steps ask only for complements of its first step's sets and the photo).
    """

    def __init__(self, adapter: ModelAdapter, substrate: Substrate, target: Target, masks: torch.Tensor,
                 lambda_consistency: float, lambda_collaboration: float, bounded: bool) -> None:
        self.adapter, self.substrate, self.target = adapter, substrate, target
        self.flat_masks = masks.reshape(masks.shape[0], -1).to(substrate.pixels.device)
        self.lambdas = (lambda_consistency, lambda_collaboration)
        self.bounded = bounded
        ends = adapter.score_many(torch.cat([substrate.pixels, substrate.empty]), target)
        self.full, self.empty = float(ends[0]), float(ends[1])
        self.span = self.full - self.empty if abs(self.full - self.empty) > 1e-6 else 1e-6
        n = masks.shape[0]
        # kept set -> normalised score; keeping every region is the photo, keeping none the removed image
        self._seen: dict[bytes, float] = {np.ones(n, bool).tobytes(): 1.0, np.zeros(n, bool).tobytes(): 0.0}

    def kept_scores(self, sets: np.ndarray) -> np.ndarray:
        """Normalised scores of the images that keep each set (and remove the rest)."""
        sets = np.asarray(sets, dtype=bool)
        new = [row for row in dict.fromkeys(r.tobytes() for r in sets) if row not in self._seen]
        if new:
            kept = np.frombuffer(b"".join(new), dtype=bool).reshape(len(new), -1)
            weights = torch.from_numpy(kept.astype(np.float32)).to(self.flat_masks.device)
            images = keep_regions(self.substrate, self.flat_masks, weights)
            scores = (self.adapter.score_many(images, self.target).cpu().numpy() - self.empty) / self.span
            self._seen.update(zip(new, scores.astype(np.float64)))
        scores = np.array([self._seen[r.tobytes()] for r in sets], dtype=np.float64)
        return np.clip(scores, 0.0, 1.0) if self.bounded else scores

    def __call__(self, sets: np.ndarray) -> np.ndarray:
        sets = np.asarray(sets, dtype=bool)
        scores = self.kept_scores(np.concatenate([sets, ~sets]))
        kept, removed = scores[: len(sets)], scores[len(sets):]
        return self.lambdas[0] * kept + self.lambdas[1] * (1.0 - removed)

    def known(self, sets: np.ndarray) -> np.ndarray:
        """Normalised scores already paid for, NaN where a set was never scored (no forward pass)."""
        return np.array([self._seen.get(np.asarray(r, dtype=bool).tobytes(), np.nan) for r in sets])


def smdl_objective(adapter: ModelAdapter, pixels: torch.Tensor, target: Target, masks: torch.Tensor,
                   lambda_consistency: float = 1.0, lambda_collaboration: float = 1.0,
                   bounded: bool = False, substrate: str = "black",
                   seed: int = 0) -> tuple[SmdlObjective, float, float]:
    """The SMDL objective for ``pixels`` cut by ``masks`` (``[n, 1, H, W]``), removed regions
    becoming ``substrate`` (SMDL: black). Returns (F, score of the photo, score of the fully
    removed image).

    ``bounded=True`` clips the normalised scores to [0, 1] (SMDL scores with probabilities,
    which are bounded; our log and logit scores are not). It exists to measure how much the
    greedy reference itself moves under this change of scale (bench/region_search.py).
    """
    objective = SmdlObjective(adapter, make_substrate(pixels, substrate, seed), target, masks,
                              lambda_consistency, lambda_collaboration, bounded)
    return objective, objective.full, objective.empty


def order_map(order: list[int], labels: np.ndarray, n: int | None = None) -> np.ndarray:
    """Paint each region 1 - rank/n (the first region chosen = 1), as the map of an order. With
    ``n`` regions in all and a shorter (partial) ``order``, the regions not yet chosen are 0."""
    n = len(order) if n is None else n
    rank_value = np.zeros(n, dtype=np.float32)
    rank_value[order] = 1.0 - np.arange(len(order), dtype=np.float32) / n
    return rank_value[labels]


def prefix_sets(order: list[int]) -> np.ndarray:
    """``[n, n]`` bool: row k holds the first k + 1 regions of ``order`` (the sets an order's curve passes)."""
    n = len(order)
    return np.tril(np.ones((n, n), dtype=bool))[:, np.argsort(order)]


def explain(adapter: ModelAdapter, pixels: torch.Tensor, target: Target, n_regions: int = 49,
            regions: str = "slic", search: str = "fast", lambda_consistency: float = 1.0,
            lambda_collaboration: float = 1.0, progress: ProgressFn = no_progress,
            substrate: str = "black", seed: int = 0, **_: object) -> SaliencyMap:
    """Region-search map: each region painted 1 - rank/n (first chosen = 1).

    ``meta["path"]`` is the search made visible, one entry per step: the region taken, its
    gain in F, and the normalised scores of the kept and of the removed part (None where the
    search never scored that set, i.e. in the fast search's estimated tail).
    """
    if search not in SEARCH_FUNCTIONS:
        raise ValueError(f"unknown search {search!r}; use one of {SEARCHES}")
    pixels = pixels.detach()
    labels = region_labels(pixels, n_regions, regions)
    masks = label_masks(labels)
    n = masks.shape[0]
    objective, _, _ = smdl_objective(adapter, pixels, target, masks, lambda_consistency,
                                     lambda_collaboration, substrate=substrate, seed=seed)
    # F(empty set) = l_c * s(removed image) + l_k * (1 - s(full)) = 0 after normalisation.

    def search_progress(fraction: float, text: str, order: list[int] | None = None, **details) -> None:
        # Anytime: the map of the regions chosen so far (the rest 0), for the app to show as it fills in.
        preview = None if order is None else order_map(order, labels, n)
        progress(fraction, text, preview=preview, **details)

    order, gains, evaluated = SEARCH_FUNCTIONS[search](n, objective, search_progress, 0.0)
    prefixes = prefix_sets(order)
    kept, removed = objective.known(prefixes), objective.known(~prefixes)
    path = [{"region": r, "gain": g, "kept": _finite(k), "removed": _finite(x)}
            for r, g, k, x in zip(order, gains, kept, removed)]
    return SaliencyMap(
        "region", order_map(order, labels),
        meta={"search": search, "regions": regions, "n_regions": n, "order": order, "gains": gains,
              "sets_evaluated": evaluated, "labels_shape": list(labels.shape), "substrate": substrate,
              "lambda_consistency": lambda_consistency, "lambda_collaboration": lambda_collaboration,
              "path": path},
    )


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


METHOD = Method(
    name="region", title="Region search", explain=explain, paper="Chen et al. (SMDL), ICLR 2024",
    note=("**Region search** cuts the photo into pieces (about 49 by default) and, like a greedy puzzle "
          "player, keeps adding the piece that raises the score most. It only asks the model questions "
          "(no look inside), so it is the slowest: hundreds of forward passes."),
    params=(
        Param("n_regions", 49, "number of regions for region search", low=4, high=196, arg="n_regions",
              flag="--regions", label="Region search: number of regions"),
        Param("region_kind", "slic", "how the photo is cut: SLIC superpixels or a square grid",
              choices=("slic", "grid"), labels={"slic": "superpixels", "grid": "grid"}, arg="regions",
              label="Region search: regions"),
        Param("region_search", "fast", "the search: fast (default), lazy greedy or plain greedy (SMDL's reference)",
              choices=SEARCHES, labels={"fast": "fast", "lazy": "lazy greedy", "greedy": "plain greedy (reference)"},
              arg="search", label="Region search: search mode"),
    ),
    progress_share=0.4, colour="#2ca02c", black_box=True,
)
