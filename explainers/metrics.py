"""Deletion and insertion curves for ANY saliency map -- the one faithfulness protocol.

Deletion/insertion come from RISE (Petsiuk et al., BMVC 2018); the black substrate and the
normalised AUC follow SMDL (Chen et al., ICLR 2024) and LIMA. The protocol (ARCHITECTURE.md):

1. rank pixels by the map's value; ties go to the lower flat index (a stable sort);
2. deletion replaces the top fraction of pixels with the substrate, insertion reveals the top
   fraction on the substrate, at ``steps`` equal fractions (``steps + 1`` points from 0 to 1);
3. the curve is the target's score; its AUC (trapezoid over 0..1) is taken on the curve
   normalised so that the substrate scores 0 and the full image 1, then clipped pointwise to
   [0, 1] (``types.clipped_auc``); the raw scores, the target's probability at each point, the
   unclipped AUCs, the insertion curve's peak and overshoot and the deletion curve's floor are
   kept beside it (``types.Curve``);
4. the random reference is the mean curve over ``n_random`` seeded random orderings of the
   pixels (or of the regions region search uses);
5. the headline is SRG = AUC(insertion) - AUC(deletion) (``Curves.srg``; Bluecher et al. 2024),
   and a map is more faithful than random order when its SRG is above the reference's and
   above every random ordering's (``types.beats_random``).

The maps are made with one substrate; their curves can be drawn on several
(``faithfulness_by_substrate``), so that a map is also judged on substrates it was not made
with. With ``curve_ranking="regions"`` each map is averaged over each region before ranking
(Bluecher et al.'s region granularity), and the random reference shuffles the same regions.

This module imports no method. All curves of one call are scored in shared batches (the score
and the probability from one forward pass), and the two end points (full image, substrate) are
scored once for all of them, per substrate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .models.base import Metered, ModelAdapter
from .normalize import score_span
from .substrates import SUBSTRATES, make_substrate, substrate_image  # noqa: F401 - re-exported
from .types import Curve, Curves, ProgressFn, RandomReference, Target, clipped_auc, no_progress


def pixel_order(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most salient first; ties broken by the lower flat index."""
    flat = np.asarray(saliency, dtype=np.float64).ravel()
    flat = np.where(np.isfinite(flat), flat, -np.inf)
    return np.argsort(-flat, kind="stable")


RANDOM_BLOCK = 1  # pixels per side of the squares a random ordering shuffles (1 = pixels)
RANDOM_RANKINGS = ("pixels", "regions")
CURVE_RANKINGS = ("pixels", "regions")


def region_means(saliency: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[H, W]``: each pixel takes the mean of the map over its region (``labels``, ``[H, W]``
    ids), so that ranking it flips whole regions (Bluecher et al., TMLR 2024, region granularity).
    Non-finite values count as the lowest (as ``pixel_order`` ranks them)."""
    values = np.asarray(saliency, dtype=np.float64).ravel()
    ids = np.asarray(labels).ravel()
    finite = np.isfinite(values)
    sums = np.bincount(ids, weights=np.where(finite, values, 0.0))
    counts = np.bincount(ids, weights=finite.astype(np.float64))
    lowest = float(values[finite].min()) - 1.0 if finite.any() else 0.0
    means = np.where(counts > 0, sums / np.maximum(counts, 1.0), lowest)
    return means[ids].reshape(np.shape(saliency))


def shuffled_orders(groups: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """``count`` seeded random orderings of the pixels that shuffle whole groups (``groups`` is
    each pixel's group id, flat): a group's pixels come out together, in flat index order."""
    groups = np.asarray(groups).ravel()
    n_groups = int(groups.max()) + 1
    orders = []
    for i in range(count):
        group_rank = np.random.default_rng([seed, i]).permutation(n_groups)
        orders.append(np.argsort(group_rank[groups], kind="stable"))
    return orders


def random_orders(height: int, width: int, count: int, seed: int, block: int = RANDOM_BLOCK) -> list[np.ndarray]:
    """``count`` seeded random pixel orderings; with ``block > 1`` whole squares are shuffled.

    The protocol's reference shuffles single pixels (or, with ``random_ranking="regions"``, the
    regions region search uses: ``shuffled_orders``). Square blocks were measured for the README's
    deletion findings (bench/deletion_references.py): 8-16 px blocks destroy the score even faster
    than single pixels on deletion, 32 px blocks are gentler.
    """
    rows, cols = np.arange(height) // block, np.arange(width) // block
    return shuffled_orders(rows[:, None] * (cols.max() + 1) + cols[None, :], count, seed)


def _normalise(scores: np.ndarray, full: float, substrate: float) -> np.ndarray:
    return (scores - substrate) / score_span(full, substrate)


def _make_curve(
    kind: str,
    fractions: np.ndarray,
    scores: np.ndarray,
    full: float,
    substrate: float,
    passes: int,
    seconds: float,
    probabilities: np.ndarray | None = None,
    substrate_name: str = "black",
) -> Curve:
    normalized = _normalise(scores, full, substrate)
    if probabilities is not None and not np.isfinite(probabilities).any():
        probabilities = None  # the adapter gives no probability
    return Curve(
        kind=kind,
        fractions=fractions,
        scores=scores,
        normalized=normalized,
        auc=clipped_auc(normalized, fractions),
        full_score=full,
        substrate_score=substrate,
        forward_passes=passes,
        seconds=seconds,
        probabilities=probabilities,
        substrate=substrate_name,
    )


def pixel_ranks(order: np.ndarray, height: int, width: int) -> torch.Tensor:
    """``[1, 1, H, W]``: each pixel's position in ``order`` (the top fraction f is rank < f * H * W)."""
    rank = np.empty(height * width, dtype=np.int64)
    rank[order] = np.arange(height * width)
    return torch.from_numpy(rank).view(1, 1, height, width)


def step_count(step: int, steps: int, n_pixels: int) -> int:
    """How many pixels the curves remove (deletion) or reveal (insertion) at ``step`` of ``steps``."""
    return int(np.round(np.linspace(0.0, 1.0, steps + 1) * n_pixels)[step])


def curve_images(
    pixels: torch.Tensor, saliency: np.ndarray, step: int, steps: int, substrate: str = "black", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The deletion and the insertion image the curves scored at ``step`` of ``steps`` for this map:
    the same images, rebuilt without a forward pass (e.g. for the app's curve scrubber)."""
    _, _, height, width = pixels.shape
    shown = (
        pixel_ranks(pixel_order(saliency), height, width).to(pixels.device) < step_count(step, steps, height * width)
    ).float()
    images = make_substrate(pixels, substrate, seed).fill(torch.cat([1.0 - shown, shown]))
    return images[:1], images[1:]


def curves_for_orders(
    adapter: ModelAdapter | Metered,
    pixels: torch.Tensor,
    target: Target,
    orders: list[np.ndarray],
    steps: int = 50,
    substrate: str = "black",
    progress: ProgressFn = no_progress,
    seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """Raw (deletion scores, insertion scores, full score, substrate score) per pixel ordering
    (``scored_orders`` without the probabilities)."""
    scored = scored_orders(adapter, pixels, target, orders, steps, substrate, progress, seed)
    return [(s.deletion, s.insertion, s.full, s.empty) for s in scored]


@dataclass(frozen=True)
class ScoredOrder:
    """One ordering's raw curves on one substrate: scores and probabilities of the deletion and
    insertion images (``steps + 1`` points each) and the two end points' scores."""

    deletion: np.ndarray
    insertion: np.ndarray
    deletion_probabilities: np.ndarray
    insertion_probabilities: np.ndarray
    full: float
    empty: float


def scored_orders(
    adapter: ModelAdapter | Metered,
    pixels: torch.Tensor,
    target: Target,
    orders: list[np.ndarray],
    steps: int = 50,
    substrate: str = "black",
    progress: ProgressFn = no_progress,
    seed: int = 0,
) -> list[ScoredOrder]:
    """The raw curves (scores and probabilities) of every pixel ordering on one substrate.

    Every interior point of every curve is one image; they are built lazily and scored in
    batches of ``adapter.forward_batch()``, each image's score and probability from one forward pass
    (``ModelAdapter.scores_many``).
    """
    _, _, height, width = pixels.shape
    n_pixels = height * width
    fill = make_substrate(pixels, substrate, seed).fill
    counts = [step_count(k, steps, n_pixels) for k in range(steps + 1)]
    end_scores, end_probabilities = adapter.scores_many(
        torch.cat([pixels, fill(torch.zeros_like(pixels[:, :1]))]), target
    )
    full, empty = float(end_scores[0]), float(end_scores[1])
    full_p, empty_p = float(end_probabilities[0]), float(end_probabilities[1])

    # One job per interior point: (ordering, deletion?, step).
    jobs = [(o, kind, k) for o in range(len(orders)) for kind in (0, 1) for k in range(1, steps)]
    scores = np.zeros((len(orders), 2, steps + 1))
    probabilities = np.zeros((len(orders), 2, steps + 1))
    for values, whole, blank in ((scores, full, empty), (probabilities, full_p, empty_p)):
        values[:, 0, 0], values[:, 0, steps] = whole, blank  # deletion: full image -> substrate
        values[:, 1, 0], values[:, 1, steps] = blank, whole  # insertion: substrate -> full image
    ranks_t = [pixel_ranks(order, height, width).to(pixels.device) for order in orders]
    batch = adapter.forward_batch()
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        masks = torch.cat([(ranks_t[o] < counts[k]).float() for o, _, k in chunk])
        deleting = torch.tensor([kind == 0 for _, kind, _ in chunk], device=pixels.device).view(-1, 1, 1, 1)
        # deletion (kind 0): chosen pixels become substrate; insertion (kind 1): only they show.
        images = fill(torch.where(deleting, 1.0 - masks, masks))
        batch_scores, batch_probabilities = adapter.scores_many(images, target)
        for (o, kind, k), value, probability in zip(
            chunk, batch_scores.cpu().numpy(), batch_probabilities.cpu().numpy()
        ):
            scores[o, kind, k] = value
            probabilities[o, kind, k] = probability
        progress(min(1.0, (start + len(chunk)) / len(jobs)), "deletion and insertion curves")
    return [
        ScoredOrder(scores[o, 0], scores[o, 1], probabilities[o, 0], probabilities[o, 1], full, empty)
        for o in range(len(orders))
    ]


def faithfulness(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    target: Target,
    saliency_maps: dict[str, np.ndarray],
    steps: int = 50,
    substrate: str = "black",
    n_random: int = 3,
    seed: int = 0,
    progress: ProgressFn = no_progress,
    random_ranking: str = "pixels",
    region_labels: np.ndarray | None = None,
    curve_ranking: str = "pixels",
) -> tuple[dict[str, Curves], RandomReference]:
    """Deletion and insertion curves for every map on one substrate, plus the random-order
    reference (``faithfulness_by_substrate`` with one substrate).

    ``random_ranking="regions"`` shuffles the regions given by ``region_labels`` (``[H, W]``
    ids) instead of single pixels. Returns ``({name: Curves}, random_reference)``.
    """
    curves, references = faithfulness_by_substrate(
        adapter,
        pixels,
        target,
        saliency_maps,
        (substrate,),
        steps=steps,
        n_random=n_random,
        seed=seed,
        progress=progress,
        random_ranking=random_ranking,
        region_labels=region_labels,
        curve_ranking=curve_ranking,
    )
    return curves[substrate], references[substrate]


def ranking_orders(
    saliency_maps: dict[str, np.ndarray],
    height: int,
    width: int,
    n_random: int,
    seed: int,
    random_ranking: str = "pixels",
    region_labels: np.ndarray | None = None,
    curve_ranking: str = "pixels",
) -> list[np.ndarray]:
    """The pixel orderings the curves flip: one per map (by its values, or by its mean per
    region with ``curve_ranking="regions"``), then the ``n_random`` random ones (of pixels, or of
    regions when either ranking asks for regions)."""
    if random_ranking not in RANDOM_RANKINGS:
        raise ValueError(f"unknown random ranking {random_ranking!r}; use one of {RANDOM_RANKINGS}")
    if curve_ranking not in CURVE_RANKINGS:
        raise ValueError(f"unknown curve ranking {curve_ranking!r}; use one of {CURVE_RANKINGS}")
    regions = "regions" in (random_ranking, curve_ranking)
    if regions and region_labels is None:
        raise ValueError("a ranking by regions needs region_labels")
    if curve_ranking == "regions":
        assert region_labels is not None
        orders = [pixel_order(region_means(saliency_maps[n], region_labels)) for n in saliency_maps]
    else:
        orders = [pixel_order(saliency_maps[n]) for n in saliency_maps]
    if regions:
        assert region_labels is not None
        return orders + shuffled_orders(region_labels, n_random, seed)
    return orders + random_orders(height, width, n_random, seed)


def faithfulness_by_substrate(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    target: Target,
    saliency_maps: dict[str, np.ndarray],
    substrates: tuple[str, ...] | list[str] = ("black",),
    steps: int = 50,
    n_random: int = 3,
    seed: int = 0,
    progress: ProgressFn = no_progress,
    random_ranking: str = "pixels",
    region_labels: np.ndarray | None = None,
    curve_ranking: str = "pixels",
) -> tuple[dict[str, dict[str, Curves]], dict[str, RandomReference]]:
    """Every map's curves and the random reference on each scoring substrate, the same orderings
    on each: ``({substrate: {name: Curves}}, {substrate: RandomReference})``, in the order of
    ``substrates`` (the first is the headline). Each substrate's curves are scored exactly as a
    run on that substrate alone would score them (the same batches), so the numbers agree.

    ``random_ranking="regions"`` shuffles the regions given by ``region_labels`` (``[H, W]`` ids)
    instead of single pixels; ``curve_ranking="regions"`` ranks each map by its mean over each of
    those regions (and then the random reference shuffles them too).
    """
    if n_random < 1:
        raise ValueError("n_random must be at least 1")
    substrates = list(dict.fromkeys(substrates))
    if not substrates:
        raise ValueError("score on at least one substrate")
    names = list(saliency_maps)
    orders = ranking_orders(
        saliency_maps, pixels.shape[2], pixels.shape[3], n_random, seed, random_ranking, region_labels, curve_ranking
    )
    ranking = "regions" if "regions" in (random_ranking, curve_ranking) else "pixels"
    fractions = np.linspace(0.0, 1.0, steps + 1)
    all_curves: dict[str, dict[str, Curves]] = {}
    references: dict[str, RandomReference] = {}
    for index, substrate in enumerate(substrates):
        meter, started = Metered(adapter), time.perf_counter()
        scored = scored_orders(
            meter,
            pixels,
            target,
            orders,
            steps,
            substrate,
            _share(progress, index, len(substrates), substrate),
            seed=seed,
        )
        seconds = (time.perf_counter() - started) / len(orders) / 2
        passes = meter.forward_passes // len(orders) // 2

        all_curves[substrate] = {
            name: _curves(raw, fractions, passes, seconds, substrate) for name, raw in zip(names, scored)
        }
        random_scored = scored[len(names) :]
        each = [_curves(raw, fractions, passes, seconds, substrate) for raw in random_scored]
        deletion, insertion, deletion_p, insertion_p = (
            np.mean([getattr(raw, a) for raw in random_scored], axis=0) for a in _RAW
        )
        mean = ScoredOrder(deletion, insertion, deletion_p, insertion_p, random_scored[0].full, random_scored[0].empty)
        references[substrate] = RandomReference(
            _curves(mean, fractions, passes * n_random, seconds * n_random, substrate),
            tuple(c.srg for c in each),
            ranking,
            seed,
            tuple(c.srg_unclipped for c in each),
        )
    return all_curves, references


_RAW = ("deletion", "insertion", "deletion_probabilities", "insertion_probabilities")


def _curves(raw: ScoredOrder, fractions: np.ndarray, passes: int, seconds: float, substrate: str) -> Curves:
    """One ordering's Curves on one substrate from its raw scores and probabilities."""
    return Curves(
        _make_curve(
            "deletion",
            fractions,
            raw.deletion,
            raw.full,
            raw.empty,
            passes,
            seconds,
            raw.deletion_probabilities,
            substrate,
        ),
        _make_curve(
            "insertion",
            fractions,
            raw.insertion,
            raw.full,
            raw.empty,
            passes,
            seconds,
            raw.insertion_probabilities,
            substrate,
        ),
    )


def _share(progress: ProgressFn, index: int, count: int, substrate: str) -> ProgressFn:
    """The progress of one substrate's curves, as its share of all of them."""
    if count == 1:
        return progress
    return lambda fraction, _text, **details: progress(
        (index + fraction) / count, f"deletion and insertion curves on the {substrate} substrate", **details
    )
