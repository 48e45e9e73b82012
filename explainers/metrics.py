"""Deletion and insertion curves for ANY saliency map -- the one faithfulness protocol.

Deletion/insertion come from RISE (Petsiuk et al., BMVC 2018); the black substrate and the
normalised AUC follow SMDL (Chen et al., ICLR 2024) and LIMA. The protocol (ARCHITECTURE.md):

1. rank pixels by the map's value; ties go to the lower flat index (a stable sort);
2. deletion replaces the top fraction of pixels with the substrate, insertion reveals the top
   fraction on the substrate, at ``steps`` equal fractions (``steps + 1`` points from 0 to 1);
3. the curve is the target's score; its AUC (trapezoid over 0..1) is taken on the curve
   normalised so that the substrate scores 0 and the full image 1; raw scores are kept;
4. the random reference is the mean curve over ``n_random`` seeded random orderings of the
   pixels (or of the regions region search uses);
5. the headline is SRG = AUC(insertion) - AUC(deletion) (``Curves.srg``; Bluecher et al. 2024),
   and a map is more faithful than random order when its SRG is above the reference's and
   above every random ordering's (``types.beats_random``).

This module imports no method. All curves of one call are scored in shared batches, and the two
end points (full image, substrate) are scored once for all of them.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .models.base import Metered, ModelAdapter
from .normalize import score_span
from .substrates import SUBSTRATES, make_substrate, substrate_image  # noqa: F401 - re-exported
from .types import Curve, Curves, ProgressFn, RandomReference, Target, no_progress


def pixel_order(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most salient first; ties broken by the lower flat index."""
    flat = np.asarray(saliency, dtype=np.float64).ravel()
    flat = np.where(np.isfinite(flat), flat, -np.inf)
    return np.argsort(-flat, kind="stable")


RANDOM_BLOCK = 1  # pixels per side of the squares a random ordering shuffles (1 = pixels)
RANDOM_RANKINGS = ("pixels", "regions")


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


def _make_curve(kind, fractions, scores, full, substrate, passes, seconds) -> Curve:
    normalized = _normalise(scores, full, substrate)
    return Curve(
        kind=kind,
        fractions=fractions,
        scores=scores,
        normalized=normalized,
        auc=float(np.trapezoid(normalized, fractions)),
        full_score=full,
        substrate_score=substrate,
        forward_passes=passes,
        seconds=seconds,
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
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    target: Target,
    orders: list[np.ndarray],
    steps: int = 50,
    substrate: str = "black",
    progress: ProgressFn = no_progress,
    seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """Raw (deletion scores, insertion scores, full score, substrate score) per pixel ordering.

    Every interior point of every curve is one image; they are built lazily and scored in
    batches of ``adapter.max_batch``.
    """
    _, _, height, width = pixels.shape
    n_pixels = height * width
    fill = make_substrate(pixels, substrate, seed).fill
    counts = [step_count(k, steps, n_pixels) for k in range(steps + 1)]
    ends = adapter.score_many(torch.cat([pixels, fill(torch.zeros_like(pixels[:, :1]))]), target)
    full, empty = float(ends[0]), float(ends[1])

    # One job per interior point: (ordering, deletion?, step).
    jobs = [(o, kind, k) for o in range(len(orders)) for kind in (0, 1) for k in range(1, steps)]
    scores = np.zeros((len(orders), 2, steps + 1))
    scores[:, 0, 0], scores[:, 0, steps] = full, empty  # deletion: full image -> substrate
    scores[:, 1, 0], scores[:, 1, steps] = empty, full  # insertion: substrate -> full image
    ranks_t = [pixel_ranks(order, height, width).to(pixels.device) for order in orders]
    batch = adapter.max_batch
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        masks = torch.cat([(ranks_t[o] < counts[k]).float() for o, _, k in chunk])
        deleting = torch.tensor([kind == 0 for _, kind, _ in chunk], device=pixels.device).view(-1, 1, 1, 1)
        # deletion (kind 0): chosen pixels become substrate; insertion (kind 1): only they show.
        images = fill(torch.where(deleting, 1.0 - masks, masks))
        batch_scores = adapter.score_many(images, target).cpu().numpy()
        for (o, kind, k), value in zip(chunk, batch_scores):
            scores[o, kind, k] = value
        progress(min(1.0, (start + len(chunk)) / len(jobs)), "deletion and insertion curves")
    return [(scores[o, 0], scores[o, 1], full, empty) for o in range(len(orders))]


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
) -> tuple[dict[str, Curves], RandomReference]:
    """Deletion and insertion curves for every map, plus the random-order reference.

    ``random_ranking="regions"`` shuffles the regions given by ``region_labels`` (``[H, W]``
    ids) instead of single pixels. Returns ``({name: Curves}, random_reference)``.
    """
    if n_random < 1:
        raise ValueError("n_random must be at least 1")
    meter, started = Metered(adapter), time.perf_counter()
    names = list(saliency_maps)
    orders = [pixel_order(saliency_maps[n]) for n in names]
    if random_ranking == "pixels":
        orders += random_orders(pixels.shape[2], pixels.shape[3], n_random, seed)
    elif random_ranking == "regions":
        if region_labels is None:
            raise ValueError("random_ranking='regions' needs region_labels")
        orders += shuffled_orders(region_labels, n_random, seed)
    else:
        raise ValueError(f"unknown random ranking {random_ranking!r}; use one of {RANDOM_RANKINGS}")
    raw = curves_for_orders(meter, pixels, target, orders, steps, substrate, progress, seed=seed)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    seconds = (time.perf_counter() - started) / len(orders) / 2
    passes = meter.forward_passes // len(orders) // 2

    def curves(deletion, insertion, full, empty, share=1) -> Curves:
        return Curves(
            _make_curve("deletion", fractions, deletion, full, empty, passes * share, seconds * share),
            _make_curve("insertion", fractions, insertion, full, empty, passes * share, seconds * share),
        )

    out = {name: curves(*r) for name, r in zip(names, raw)}
    random_raw = raw[len(names) :]
    srgs = tuple(curves(*r).srg for r in random_raw)
    full, empty = random_raw[0][2], random_raw[0][3]
    mean = curves(
        np.mean([r[0] for r in random_raw], axis=0),
        np.mean([r[1] for r in random_raw], axis=0),
        full,
        empty,
        share=n_random,
    )
    return out, RandomReference(mean, srgs, random_ranking, seed)
