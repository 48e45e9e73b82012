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
- ``"two-ended"`` -- the default: grows the order from both ends within a fifth of plain
  greedy's passes, see ``two_ended_order``;
- ``"lima"`` -- LIMA-style bidirectional greedy, the anchor it is measured against (``lima_order``);
- ``"fast"`` -- the cheapest (2 + 5n passes): a small pool per step, see ``fast_order``.

bench/region_search_dataset.py measures them all on 50 ImageNet photos (SRG with CIs, passes).

The map (issue 19, bench/region_transfer.py): searched on black, the search's order alone is the
most faithful on black and loses to Grad-CAM on blur and ROAD, and the better the search fits
black (plain greedy, LIMA, a clipped objective) the more it loses there. So by default the regions
are ranked by the mean of the search's rank and Grad-CAM's rank of each region (``cam_blend``),
the pixels inside each region by Grad-CAM (``within``); ``cam_blend=0, within="flat"`` is SMDL's map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..cam import grad_cam
from ..models.base import ModelAdapter
from ..normalize import score_span
from ..params import Param
from ..regions import DEFAULT_REGIONS, label_masks, order_within_regions, region_labels, region_means
from ..substrates import Substrate, make_substrate
from ..types import ProgressFn, SaliencyMap, Target, no_progress
from .base import Method, Reference

SEARCHES = ("two-ended", "fast", "lazy", "lima", "greedy")
# What the step-through calls each search (meta["search_label"]).
SEARCH_LABELS = {
    "two-ended": "two-ended search",
    "fast": "fast search",
    "lazy": "lazy greedy",
    "lima": "LIMA-style search",
    "greedy": "plain greedy",
}
OBJECTIVES = ("score", "clipped")
WITHIN = ("flat", "gradcam")
SEARCH_SUBSTRATES = ("protocol", "black+blur")
# The default map (issue 19, bench/region_transfer.py): the two-ended search's region order blended
# half and half with Grad-CAM's ranking of the regions, the pixels inside each region by Grad-CAM.
CAM_BLEND = 0.5
# F of a batch of sets (bool rows over the n regions) -> values; the search algorithms see only this.
SetFunction = Callable[[np.ndarray], np.ndarray]
# The fast search's defaults (bench/region_search.py measures them against plain greedy).
FAST_POOL = 6  # candidates evaluated per step
FAST_BUDGET_PER_REGION = 3  # sets per region in all, prior included (plain greedy: (n + 1) / 2)
# The two-ended search's settings: chosen on 7 ImageNet photos, then measured on 50 (bench/region_search_dataset.py)
# and on all 200 with explainers.evaluate (README).
TWO_ENDED_FRONT_AREA = 0.15  # share of the photo's area the front orders; the back orders the rest
TWO_ENDED_FRONT_BUDGET = 0.3  # share of the pooled images the front may spend
SATURATED = 0.9  # a chain stops scoring the term it does not optimise once that term is past this...
FLAT = 0.05  # ...and varied by less than this across the candidates scored
TIE = 6  # decimal places to which the two-ended search's estimates must agree for its prior to break the tie
LIMA_PENDING = 8  # candidates the LIMA-style search scores per step for its tail


def greedy_order(
    n: int, evaluate: SetFunction, progress: ProgressFn = no_progress, empty_value: float = 0.0
) -> tuple[list[int], list[float], int]:
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


def lazy_greedy_order(
    n: int, evaluate: SetFunction, progress: ProgressFn = no_progress, empty_value: float = 0.0, batch: int = 4
) -> tuple[list[int], list[float], int]:
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


def fast_order(
    n: int,
    evaluate: SetFunction,
    progress: ProgressFn = no_progress,
    empty_value: float = 0.0,
    prior: np.ndarray | None = None,
    pool: int = FAST_POOL,
    budget: int | None = None,
    memory: int = 1,
    seed: int = 0,
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
        candidates = ranked[: min(pool, budget - evaluated)]
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


def greedy_images(n: int) -> int:
    """Forward passes of plain greedy on the SMDL objective: n(n+1)/2 sets of 2 images, plus the
    photo and the removed image, less the 6 images its last two steps share with earlier ones."""
    return n * (n + 1) + 2 - 6


class _Chain:
    """One end of the two-ended search: a growing set of regions, its normalised scores kept and
    removed, and per region the last scores of "chain + region" with the chain's scores at that
    time. A stale score is read as a change on top of the chain's current score, so a region last
    scored long ago (or only alone, at the start) competes with the fresh ones on equal terms."""

    def __init__(
        self,
        single_kept: np.ndarray,
        single_removed: np.ndarray,
        sign: float,
        area_share: float,
        budget: int,
        lambdas: tuple[float, float],
    ) -> None:
        n = len(single_kept)
        self.members = np.zeros(n, dtype=bool)
        self.order: list[int] = []
        self.kept, self.removed = 0.0, 1.0  # nothing kept scores 0; nothing removed scores 1
        self.cand_kept, self.cand_removed = single_kept.astype(np.float64), single_removed.astype(np.float64)
        self.base_kept, self.base_removed = np.zeros(n), np.ones(n)
        self.scored_at = np.zeros(n)
        self.sign, self.area_share, self.budget, self.spent = sign, area_share, budget, 0
        self.lambdas, self.area = lambdas, 0.0
        self.both = True  # score both images of a candidate until one term is saturated
        self.values: list[float] = []  # F of the chain after each region it took
        self.complement_values: list[float] = []  # and F of its complement

    def value(self, kept, removed):
        return self.lambdas[0] * kept + self.lambdas[1] * (1.0 - removed)

    def estimate(self, regions: np.ndarray) -> np.ndarray:
        """``sign`` * F(chain + r), from each region's last scores."""
        # (fresh scores: the chain has not moved since, the change added is exactly 0)
        kept = self.cand_kept[regions] + (self.kept - self.base_kept[regions])
        removed = self.cand_removed[regions] + (self.removed - self.base_removed[regions])
        return self.sign * self.value(kept, removed)

    def take(self, region: int, area: float) -> None:
        self.kept = float(self.cand_kept[region] + (self.kept - self.base_kept[region]))
        self.removed = float(self.cand_removed[region] + (self.removed - self.base_removed[region]))
        self.cand_kept[region], self.base_kept[region] = self.kept, self.kept
        self.cand_removed[region], self.base_removed[region] = self.removed, self.removed
        self.members[region] = True
        self.order.append(int(region))
        self.area += area
        self.values.append(float(self.value(self.kept, self.removed)))
        self.complement_values.append(float(self.value(self.removed, self.kept)))


def two_ended_order(
    n: int,
    evaluate: SetFunction,
    progress: ProgressFn = no_progress,
    empty_value: float = 0.0,
    budget: int | None = None,
    front_area: float = TWO_ENDED_FRONT_AREA,
    front_budget: float = TWO_ENDED_FRONT_BUDGET,
    pool_refresh: int = 1,
    prior: np.ndarray | None = None,
) -> tuple[list[int], list[float], int]:
    """The default search: grow the order from both ends, spending most passes where they pay.

    The protocol's SRG (insertion AUC - deletion AUC) reads an order from both ends: the deletion
    curve at fraction u is the score of the photo keeping only its last 1 - u, so SRG rewards a
    top whose removal kills the score and a bottom that scores low when shown alone (on our log
    scores, often below the black image: the model then sees another class). Plain greedy on
    SMDL's F (Chen et al., ICLR 2024) finds both by scoring every remaining region at every step;
    LIMA (Chen et al., 2025) grows the two ends at once ("bidirectional" search, ``lima_order``).
    Measured on 50 ImageNet photos (bench/region_search_dataset.py), the two ends differ in cost:

    - the **front** (max F(T + r), from the empty set): once a few regions are shown the kept
      term saturates and the choice rests on what removal kills, where evidence is redundant
      (removing one part changes little until the last ones go), so stale scores predict it
      poorly. It covers only the first ``front_area`` of the photo's area, with ``front_budget``
      of the pooled passes;
    - the **back** (min F(B + r), from the empty set, placed last-first): a few regions shown on
      the substrate score nearly additively, so stale scores predict the next choice well and a
      small pool finds it. It orders everything else.

    Both chains start from every region's two scores alone, s({r}) and s(I minus r) (plain
    greedy's first step, 2n images). Each step extends the chain that is behind on its area
    share, scoring a pool of the regions with the best estimates (stale scores read as changes
    on the chain's current scores; one slot goes to the region scored least recently). A chain
    pays one image per candidate once the term it is not optimising is saturated (front: the
    kept image at >= SATURATED and within FLAT across the pool; back: the removed image),
    two otherwise. Pools are sized so that the search asks for at most ``budget`` images
    (default: a fifth of plain greedy's passes, the two end images included); when a chain's
    share is spent it takes the best estimate unscored. A ``PartsObjective`` (``SmdlObjective``) lends
    its ``kept_scores``, ``lambdas`` and ``areas``; a plain F scores two images per candidate and
    balances the ends by region count.

    ``prior`` (one value per region, e.g. Grad-CAM's mean over each region) breaks ties: among
    regions whose estimates agree to TIE places, the front takes the highest prior and the back
    the lowest (with a clipped objective many regions tie once a term is saturated). Then ties ->
    lower index. Returns (order, gains in F along it (estimated where a prefix was never scored),
    images asked for).
    """
    parts = evaluate if isinstance(evaluate, PartsObjective) else None
    kept_scores = parts.kept_scores if parts is not None else None
    lambdas = parts.lambdas if parts is not None else (1.0, 1.0)
    areas = np.asarray(parts.areas if parts is not None and parts.areas is not None else np.ones(n), dtype=np.float64)
    areas = areas / areas.sum()
    tie = None if prior is None else np.asarray(prior, dtype=np.float64)

    def rank(chain: _Chain, regions: np.ndarray) -> np.ndarray:
        """Indices that sort ``regions`` best first for ``chain``: estimate, then prior, then index."""
        if tie is None:
            return np.lexsort((regions, -chain.estimate(regions)))
        return np.lexsort((regions, -chain.sign * tie[regions], -np.round(chain.estimate(regions), TIE)))

    per_set = parts.images_per_set if parts is not None else 1  # one image per search substrate
    end_images = parts.end_images if parts is not None else 2
    budget = greedy_images(n) // 5 - end_images if budget is None else budget
    asked: set[bytes] = {np.ones(n, bool).tobytes(), np.zeros(n, bool).tobytes()}  # the objective's own

    images_asked = 0  # what score has counted

    def score(sets: np.ndarray, kept: bool, removed: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Normalised scores of ``sets`` kept and/or removed; counts the images not asked before."""
        nonlocal images_asked
        if kept_scores is None:  # a plain F: read it as "kept" (removed fixed at 1), 2 images per set
            new = [r.tobytes() for r in sets if r.tobytes() not in asked]
            asked.update(new)
            images_asked += 2 * len(new)
            return np.asarray(evaluate(sets), dtype=np.float64), np.ones(len(sets))
        rows = np.concatenate(([sets] if kept else []) + ([~sets] if removed else []))
        for r in rows:
            key = r.tobytes()
            if key not in asked:
                asked.add(key)
                images_asked += per_set
        values = kept_scores(rows)
        return (values[: len(sets)] if kept else None), (values[-len(sets) :] if removed else None)

    singles = np.eye(n, dtype=bool)
    if kept_scores is None:
        lambdas = (1.0, 1.0)
    single_kept, single_removed = score(singles, True, True)
    assert single_kept is not None and single_removed is not None  # both were asked for
    if kept_scores is None:  # F alone: its complement is unknown, so the back reads -F as well
        single_removed = np.ones(n)
    pooled = max(0, budget - images_asked)
    front_share = int(pooled * front_budget)
    front = _Chain(single_kept, single_removed, 1.0, front_area, front_share, lambdas)
    back = _Chain(single_kept, single_removed, -1.0, 1.0 - front_area, pooled - front_share, lambdas)
    if kept_scores is None:
        front.both = back.both = False
    for step in range(n):
        remaining = np.flatnonzero(~(front.members | back.members))
        # the chain behind on its share of the area grows (the front first)
        behind = front_area > 0 and front.area * (1 - front_area) <= back.area * front_area
        chain = front if behind else back
        ranked = remaining[rank(chain, remaining)]
        pick = int(ranked[0])
        m = len(remaining)
        if m > 1:
            # Which images a candidate needs: the front optimises what removal kills once the kept
            # image is saturated, the back what showing adds once removing it changes nothing.
            level = chain.kept if chain is front else chain.removed
            both = chain.both or level < SATURATED or kept_scores is None
            cost = (2 if both else 1) * per_set
            left = min(chain.budget - chain.spent, budget - images_asked)
            steps_left = max(1, round((m - 1) * chain.area_share))
            pool = int(min(m, left // (cost * steps_left)))
            if pool > 0:
                chosen = list(ranked[:pool])
                if pool_refresh and pool >= 3:  # keep every estimate from growing too stale
                    stalest = [
                        r for r in remaining[np.lexsort((remaining, chain.scored_at[remaining]))] if r not in chosen
                    ][:pool_refresh]
                    chosen = chosen[: pool - len(stalest)] + stalest
                candidates = np.array(chosen)
                sets = np.repeat(chain.members[None], len(candidates), axis=0)
                sets[np.arange(len(candidates)), candidates] = True
                before = images_asked
                need_kept = both or chain is back
                need_removed = both or chain is front
                kept, removed = score(sets, need_kept, need_removed)
                if kept is not None:
                    chain.cand_kept[candidates], chain.base_kept[candidates] = kept, chain.kept
                if removed is not None:
                    chain.cand_removed[candidates], chain.base_removed[candidates] = removed, chain.removed
                if both and kept_scores is not None and len(candidates) > 1:
                    other = kept if chain is front else removed
                    assert other is not None  # both were asked for
                    if level >= SATURATED and np.ptp(other) < FLAT:
                        chain.both = False
                chain.spent += images_asked - before
                chain.scored_at[candidates] = step + 1
                pick = int(candidates[rank(chain, candidates)[0]])
        chain.take(pick, float(areas[pick]))
        progress((step + 1) / n, "region search (two-ended)", order=list(front.order))
    order = front.order + back.order[::-1]
    # F along the order: the front's prefixes, then the complements of the back's shrinking set
    # (F(I minus B) = l_c * s(I minus B) + l_k * (1 - s(B))), ending at the photo itself.
    complements = [lambdas[0] + lambdas[1]] + back.complement_values
    values = front.values + complements[::-1][1:]
    gains = np.diff([empty_value] + values).tolist()
    return order, gains, images_asked


def lima_order(
    n: int,
    evaluate: SetFunction,
    progress: ProgressFn = no_progress,
    empty_value: float = 0.0,
    pending: int = LIMA_PENDING,
) -> tuple[list[int], list[float], int]:
    """LIMA-style bidirectional greedy ("Less is More: Efficient Black-box Attribution via Minimal
    Interpretable Subset Selection", Chen et al., 2025; the efficient search of its code), kept
    as the anchor it is measured against.

    Each step grows a front S by the region of largest F(S + r), every remaining region scored
    as in plain greedy, and a tail T, built from the least important end, by the region of
    smallest F(T + r) among ``pending`` candidates: those whose F(S + r) was lowest in the same
    step (LIMA pre-selects them with its effectiveness term, which this objective does not have).
    Once ``pending`` or fewer regions remain only the front grows. The order is the front, then
    the tail reversed: about n^2/2 + pending * n images, 1.4-1.6x fewer than plain greedy.

    Ties -> lower index. Returns (order, gains along the front then the tail's F, sets evaluated).
    """
    front, tail = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    front_order, tail_order, front_values, tail_values, evaluated = [], [], [], [], 0
    while not (front | tail).all():
        candidates = np.flatnonzero(~front & ~tail)
        sets = np.repeat(front[None], len(candidates), axis=0)
        sets[np.arange(len(candidates)), candidates] = True
        values = evaluate(sets)
        evaluated += len(candidates)
        best = int(candidates[np.lexsort((candidates, -values))[0]])
        front_order.append(best)
        front_values.append(float(values.max()))
        front[best] = True
        if len(candidates) > pending:
            rest = candidates != best
            worst = candidates[rest][np.lexsort((candidates[rest], values[rest]))[:pending]]
            sets = np.repeat(tail[None], len(worst), axis=0)
            sets[np.arange(len(worst)), worst] = True
            worst_values = evaluate(sets)
            evaluated += len(worst)
            pick = int(worst[np.lexsort((worst, worst_values))[0]])
            tail_order.append(pick)
            tail_values.append(float(worst_values.min()))
            tail[pick] = True
        progress(int((front | tail).sum()) / n, "region search (LIMA-style)", order=list(front_order))
    # F of a prefix in the tail's part: F(I minus T) = 2 - F(T) with both weights 1 (SMDL's
    # default); other weights make this an estimate, as the gains of the other searches are.
    curve = front_values + [2.0 - v for v in tail_values[::-1][1:]] + ([2.0] if tail_order else [])
    return front_order + tail_order[::-1], np.diff([empty_value] + curve).tolist(), evaluated


SEARCH_FUNCTIONS = {
    "greedy": greedy_order,
    "lazy": lazy_greedy_order,
    "fast": fast_order,
    "two-ended": two_ended_order,
    "lima": lima_order,
}


def keep_regions(substrate: Substrate, flat_masks: torch.Tensor, kept_sets: torch.Tensor) -> torch.Tensor:
    """``[n, H*W]`` region masks, ``[B, n]`` sets (0/1, or soft weights) -> ``[B, 3, H, W]`` images
    that keep those regions of the substrate's photo and remove the rest."""
    _, _, height, width = substrate.pixels.shape
    keep = (kept_sets @ flat_masks).clamp(max=1.0)
    return substrate.fill(keep.view(len(kept_sets), 1, height, width))


class PartsObjective:
    """An objective over sets of regions that can score the two parts of a set on their own:
    F(S) = l_c * s(S kept) + l_k * (1 - s(S removed)), from ``kept_scores`` (s of the images that
    keep each set, normalised: the fully removed image 0, the photo 1). The regions partition the
    image, so "S removed" is "the complement of S kept". What it declares (``lambdas``, ``areas``:
    each region's share of the pixels, None for equal shares; ``images_per_set``: forward passes
    per scored set, one per search substrate; ``end_images``: the passes of the photo and the
    fully removed images) is what the two-ended search reads.
    """

    lambdas: tuple[float, float] = (1.0, 1.0)
    areas: np.ndarray | None = None
    images_per_set: int = 1
    end_images: int = 2

    def kept_scores(self, sets: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, sets: np.ndarray) -> np.ndarray:
        sets = np.asarray(sets, dtype=bool)
        scores = self.kept_scores(np.concatenate([sets, ~sets]))
        kept, removed = scores[: len(sets)], scores[len(sets) :]
        return self.lambdas[0] * kept + self.lambdas[1] * (1.0 - removed)


class SmdlObjective(PartsObjective):
    """F(S) = l_c * s(S kept) + l_k * (1 - s(S removed)) for batches of sets (bool rows over the
    n regions), s normalised so that the fully removed image scores 0 and the photo 1.

    The regions partition the image, so "S removed" is "the complement of S kept": every image
    is a kept set, and each distinct kept set is scored once per objective (a set and its
    complement asked together cost 2 images, not 4; a set asked again costs nothing: plain
    greedy's last two steps ask only for complements of its first step's sets and the photo).

    With several substrates s is the mean of each substrate's normalised score (each clipped
    first when ``bounded``), so an order cannot lean on one substrate's artefacts; a set then
    costs one image per substrate (``images_per_set``) and the end images 1 + that many
    (``end_images``: the photo once, each fully removed image).
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        substrate: Substrate | Sequence[Substrate],
        target: Target,
        masks: torch.Tensor,
        lambda_consistency: float,
        lambda_collaboration: float,
        bounded: bool,
    ) -> None:
        substrates = [substrate] if not isinstance(substrate, Sequence) else list(substrate)
        self.adapter, self.substrates, self.target = adapter, substrates, target
        self.substrate = substrates[0]
        self.flat_masks = masks.reshape(masks.shape[0], -1).to(self.substrate.pixels.device)
        self.lambdas = (lambda_consistency, lambda_collaboration)
        self.areas = (self.flat_masks.sum(dim=1) / self.flat_masks.shape[1]).cpu().numpy()  # pixel share per region
        self.bounded = bounded
        self.images_per_set, self.end_images = len(substrates), 1 + len(substrates)
        ends = adapter.score_many(torch.cat([self.substrate.pixels] + [s.empty for s in substrates]), target)
        self.full = float(ends[0])
        self.empties = ends[1:].cpu().numpy().astype(np.float64)
        self.spans = np.array([score_span(self.full, empty) for empty in self.empties])
        self.empty, self.span = float(self.empties[0]), float(self.spans[0])
        n, k = masks.shape[0], len(substrates)
        # kept set -> normalised score on each substrate; keeping every region is the photo, keeping none the removed image
        self._seen: dict[bytes, np.ndarray] = {
            np.ones(n, bool).tobytes(): np.ones(k),
            np.zeros(n, bool).tobytes(): np.zeros(k),
        }

    def kept_scores(self, sets: np.ndarray) -> np.ndarray:
        """Normalised scores of the images that keep each set (and remove the rest); with several
        substrates the mean over them."""
        sets = np.asarray(sets, dtype=bool)
        new = [row for row in dict.fromkeys(r.tobytes() for r in sets) if row not in self._seen]
        if new:
            kept = np.frombuffer(b"".join(new), dtype=bool).reshape(len(new), -1)
            weights = torch.from_numpy(kept.astype(np.float32)).to(self.flat_masks.device)
            per_substrate = []
            for substrate, empty, span in zip(self.substrates, self.empties, self.spans):
                images = keep_regions(substrate, self.flat_masks, weights)
                per_substrate.append((self.adapter.score_many(images, self.target).cpu().numpy() - empty) / span)
            self._seen.update(zip(new, np.stack(per_substrate, axis=1).astype(np.float64)))
        scores = np.array([self._seen[r.tobytes()] for r in sets], dtype=np.float64).reshape(len(sets), -1)
        return (np.clip(scores, 0.0, 1.0) if self.bounded else scores).mean(axis=1)

    def known(self, sets: np.ndarray) -> np.ndarray:
        """Normalised scores already paid for, NaN where a set was never scored (no forward pass)."""
        out = []
        for r in sets:
            seen = self._seen.get(np.asarray(r, dtype=bool).tobytes())
            out.append(np.nan if seen is None else float((np.clip(seen, 0.0, 1.0) if self.bounded else seen).mean()))
        return np.array(out)


def smdl_objective(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    target: Target,
    masks: torch.Tensor,
    lambda_consistency: float = 1.0,
    lambda_collaboration: float = 1.0,
    bounded: bool = False,
    substrate: str | Sequence[str] = "black",
    seed: int = 0,
) -> tuple[SmdlObjective, float, float]:
    """The SMDL objective for ``pixels`` cut by ``masks`` (``[n, 1, H, W]``), removed regions
    becoming ``substrate`` (SMDL: black). Returns (F, score of the photo, score of the fully
    removed image).

    ``bounded=True`` clips the normalised scores to [0, 1] (SMDL scores with probabilities,
    which are bounded; our log and logit scores are not). It exists to measure how much the
    greedy reference itself moves under this change of scale (bench/region_search.py).
    Several ``substrate`` names: s is the mean over them (``SmdlObjective``); the scores returned
    are the first substrate's.
    """
    names = [substrate] if isinstance(substrate, str) else list(substrate)
    objective = SmdlObjective(
        adapter,
        [make_substrate(pixels, name, seed) for name in names],
        target,
        masks,
        lambda_consistency,
        lambda_collaboration,
        bounded,
    )
    return objective, objective.full, objective.empty


def blend_orders(order: list[int], prior: np.ndarray, weight: float) -> list[int]:
    """Regions ranked by (1 - weight) * their rank in ``order`` + weight * their rank by ``prior``
    (highest first), both as fractions 0 (first) .. 1 (last). Ties -> lower index."""
    n = len(order)
    search_rank = np.empty(n)
    search_rank[order] = np.arange(n) / max(n - 1, 1)
    prior_rank = np.empty(n)
    prior_rank[np.argsort(-np.asarray(prior), kind="stable")] = np.arange(n) / max(n - 1, 1)
    blended = (1.0 - weight) * search_rank + weight * prior_rank
    return [int(r) for r in np.argsort(blended, kind="stable")]


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


def explain(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    target: Target,
    n_regions: int = DEFAULT_REGIONS,
    regions: str = "slic",
    search: str = "two-ended",
    lambda_consistency: float = 1.0,
    lambda_collaboration: float = 1.0,
    progress: ProgressFn = no_progress,
    substrate: str = "black",
    seed: int = 0,
    objective: str = "score",
    search_substrates: str = "protocol",
    within: str = "gradcam",
    cam_blend: float = CAM_BLEND,
    **_: object,
) -> SaliencyMap:
    """Region-search map: each region painted 1 - rank/n (first chosen = 1).

    ``objective``: ``"score"`` (SMDL's F on the normalised score) or ``"clipped"`` (each
    normalised score clipped to [0, 1] first, as the protocol's curves are). ``search_substrates``:
    ``"protocol"`` searches on ``substrate``; ``"black+blur"`` (any names joined by "+") scores
    every set on each and takes the mean (one image per substrate per set).

    ``within="gradcam"`` (default) orders the pixels inside each region by Grad-CAM (one forward
    and one backward pass), so the map is not flat within regions; the order of the regions is
    unchanged. ``cam_blend`` in [0, 1] (default CAM_BLEND = 0.5) ranks the regions by (1 - w) *
    the search's rank + w * Grad-CAM's rank of its mean over each region (0 and ``within="flat"``:
    the search's order alone, SMDL's map). Why the default blends: searched on black, the search's
    order alone loses to Grad-CAM on blur and ROAD (bench/region_transfer.py, README). A model
    without gradients or without a CAM layer gets the search's map alone (meta says so). ``meta["order"]`` is
    the map's region order; ``meta["search_order"]`` the search's own.

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
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; use one of {OBJECTIVES}")
    searched = [substrate] if search_substrates == "protocol" else search_substrates.split("+")
    set_function = smdl_objective(
        adapter,
        pixels,
        target,
        masks,
        lambda_consistency,
        lambda_collaboration,
        bounded=objective == "clipped",
        substrate=searched,
        seed=seed,
    )[0]
    # F(empty set) = l_c * s(removed image) + l_k * (1 - s(full)) = 0 after normalisation.

    def search_progress(fraction: float, text: str, order: list[int] | None = None, **details) -> None:
        # Anytime: the map of the regions chosen so far (the rest 0), for the app to show as it fills in.
        preview = None if order is None else order_map(order, labels, n)
        progress(fraction, text, preview=preview, **details)

    if within not in WITHIN:
        raise ValueError(f"unknown within-region order {within!r}; use one of {WITHIN}")
    if not 0.0 <= cam_blend <= 1.0:
        raise ValueError(f"cam_blend must be in [0, 1], not {cam_blend!r}")
    cam = _grad_cam_if_any(adapter, pixels, target) if within == "gradcam" or cam_blend > 0 else None
    options = {}
    if search == "two-ended" and cam is not None:  # Grad-CAM's pass comes out of the fifth of greedy's passes
        options["budget"] = greedy_images(n) // 5 - set_function.end_images - 1
    search_order, search_gains, evaluated = SEARCH_FUNCTIONS[search](n, set_function, search_progress, 0.0, **options)
    gains: list[float | None] = list(search_gains)
    order = (
        search_order
        if cam is None or cam_blend == 0
        else blend_orders(search_order, region_means(cam, labels), cam_blend)
    )
    prefixes = prefix_sets(order)
    kept, removed = set_function.known(prefixes), set_function.known(~prefixes)
    if order != search_order:  # gains along the map's order, from what the search scored (None elsewhere)
        values = lambda_consistency * kept + lambda_collaboration * (1.0 - removed)
        gains = [_finite(g) for g in np.diff(np.concatenate([[0.0], values]))]
    path = [
        {"region": r, "gain": _finite(g), "kept": _finite(k), "removed": _finite(x)}
        for r, g, k, x in zip(order, gains, kept, removed)
    ]
    values = order_map(order, labels)
    if within == "gradcam" and cam is not None:
        values = order_within_regions(values, labels, cam)
    return SaliencyMap(
        "region",
        values,
        regions=labels,
        meta={
            "search": search,
            "search_label": SEARCH_LABELS[search],
            "regions": regions,
            "n_regions": n,
            "order": order,
            "search_order": search_order,
            "within": within if cam is not None else "flat",
            "cam_blend": cam_blend if cam is not None else 0.0,
            "gains": gains,
            "sets_evaluated": evaluated,
            "labels_shape": list(labels.shape),
            "substrate": substrate,
            "objective": objective,
            "search_substrates": searched,
            "lambda_consistency": lambda_consistency,
            "lambda_collaboration": lambda_collaboration,
            "path": path,
        },
    )


def _grad_cam_if_any(adapter: ModelAdapter, pixels: torch.Tensor, target: Target) -> np.ndarray | None:
    """Grad-CAM for the Grad-CAM options, or None where the model has no gradients (declared) or
    no layer for it (``cam_layer`` not implemented): the map is then the search's alone."""
    if not adapter.gradients:
        return None
    try:
        return grad_cam(adapter, pixels, target)[0]
    except NotImplementedError:
        return None


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


METHOD = Method(
    name="region",
    title="Region search",
    explain=explain,
    paper="Chen et al. (SMDL), ICLR 2024",
    note=(
        "**Region search** cuts the photo into pieces (about 49 by default) and, like a greedy puzzle "
        "player, keeps adding the piece that raises the score most. It asks the model hundreds of "
        "questions, so it is the slowest. A search fits the kind of removed pixels it searched with "
        "(black by default), so by default its ranking of the pieces is averaged with Grad-CAM's, and "
        "the pixels inside each piece follow Grad-CAM: that map stays faithful when pieces are blurred "
        "instead of blacked out."
    ),
    params=(
        Param(
            "n_regions",
            DEFAULT_REGIONS,
            "number of regions for region search",
            low=4,
            high=196,
            arg="n_regions",
            flag="--regions",
            label="Region search: number of regions",
        ),
        Param(
            "region_kind",
            "slic",
            "how the photo is cut: SLIC superpixels or a square grid",
            choices=("slic", "grid"),
            labels={"slic": "superpixels", "grid": "grid"},
            arg="regions",
            label="Region search: regions",
        ),
        Param(
            "region_search",
            "two-ended",
            "the search: two-ended (default: a fifth of plain greedy's passes), fast (the "
            "cheapest), lazy greedy, LIMA-style bidirectional, or plain greedy (SMDL's reference)",
            choices=SEARCHES,
            labels={
                "two-ended": "two-ended",
                "fast": "fast",
                "lazy": "lazy greedy",
                "lima": "LIMA-style bidirectional",
                "greedy": "plain greedy (reference)",
            },
            arg="search",
            label="Region search: search mode",
        ),
        Param(
            "region_objective",
            "score",
            "what the search maximises: SMDL's F on the normalised score (score), or on the "
            "normalised score clipped to [0, 1] like the curves (clipped)",
            choices=OBJECTIVES,
            labels={"score": "SMDL's F on the score", "clipped": "F on the score clipped to [0, 1]"},
            arg="objective",
            label="Region search: objective",
        ),
        Param(
            "region_search_substrates",
            "protocol",
            "what removed regions become while searching: the run's substrate (protocol), or the mean "
            "over black and blur (each set scored on both: an image per substrate)",
            choices=SEARCH_SUBSTRATES,
            labels={"protocol": "the run's substrate", "black+blur": "black and blur"},
            arg="search_substrates",
            label="Region search: search on",
        ),
        Param(
            "region_within",
            "gradcam",
            "the order of the pixels inside each region: all tied (flat, SMDL), or by Grad-CAM "
            "(one forward and one backward pass more)",
            choices=WITHIN,
            labels={"flat": "flat (SMDL)", "gradcam": "by Grad-CAM"},
            arg="within",
            label="Region search: pixels inside a region",
        ),
        Param(
            "region_cam_blend",
            CAM_BLEND,
            "weight of Grad-CAM's ranking of the regions in the map's order (0: the search's order alone; "
            "one forward and one backward pass more when above 0)",
            kind=float,
            low=0.0,
            high=1.0,
            step=0.05,
            arg="cam_blend",
            label="Region search: Grad-CAM's weight in the order",
        ),
    ),
    progress_share=0.4,
    colour="#2ca02c",
    black_box=True,
    display="regions",
    previews=True,
    stepped=True,
    reference=Reference("plain greedy", {"region_search": "greedy"}, "the paper's reference: slower"),
)
