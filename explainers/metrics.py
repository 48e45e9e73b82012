"""Deletion and insertion curves for ANY saliency map -- the one faithfulness protocol.

Deletion/insertion come from RISE (Petsiuk et al., BMVC 2018); the black substrate and the
normalised AUC follow SMDL (Chen et al., ICLR 2024) and LIMA. The protocol (ARCHITECTURE.md):

1. rank pixels by the map's value; ties go to the lower flat index (a stable sort);
2. deletion replaces the top fraction of pixels with the substrate, insertion reveals the top
   fraction on the substrate, at ``steps`` equal fractions (``steps + 1`` points from 0 to 1);
3. the curve is the target's score; its AUC (trapezoid over 0..1) is taken on the curve
   normalised so that the substrate scores 0 and the full image 1; raw scores are kept;
4. the random reference is the mean curve over ``n_random`` seeded random pixel orderings.

This module imports no method. All curves of one call are scored in shared batches, and the two
end points (full image, substrate) are scored once for all of them.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .models.base import ModelAdapter
from .substrates import SUBSTRATES, make_substrate, substrate_image  # noqa: F401 - re-exported
from .types import Curve, MethodResult, ProgressFn, SaliencyMap, Target, no_progress

KINDS = ("deletion", "insertion")


def pixel_order(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most salient first; ties broken by the lower flat index."""
    flat = np.asarray(saliency, dtype=np.float64).ravel()
    flat = np.where(np.isfinite(flat), flat, -np.inf)
    return np.argsort(-flat, kind="stable")


RANDOM_BLOCK = 1  # pixels per side of the squares a random ordering shuffles (1 = pixels)


def random_orders(height: int, width: int, count: int, seed: int, block: int = RANDOM_BLOCK) -> list[np.ndarray]:
    """``count`` seeded random pixel orderings; with ``block > 1`` whole squares are shuffled.

    The protocol's reference shuffles single pixels. Coarser random orderings were measured
    (bundled model, 4 assets photos, black substrate): 8-16 px blocks destroy the score even
    faster than single pixels on deletion (chelsea: deletion AUC 0.06 with 16 px vs 0.23),
    32 px blocks are gentler (0.40). Either way the smooth maps (Grad-CAM, region search)
    keep a higher deletion AUC than random on most photos: see the README's findings.
    """
    rows, cols = np.arange(height) // block, np.arange(width) // block
    block_id = (rows[:, None] * (cols.max() + 1) + cols[None, :]).ravel()
    n_blocks = int(block_id.max()) + 1
    orders = []
    for i in range(count):
        block_rank = np.random.default_rng([seed, i]).permutation(n_blocks)
        orders.append(np.argsort(block_rank[block_id], kind="stable"))  # within a block: flat index order
    return orders


def _normalise(scores: np.ndarray, full: float, substrate: float) -> np.ndarray:
    span = full - substrate
    if abs(span) < 1e-6:  # the model cannot tell image from substrate: avoid dividing by ~0
        span = 1e-6 if span >= 0 else -1e-6
    return (scores - substrate) / span


def _make_curve(kind, fractions, scores, full, substrate, passes, seconds) -> Curve:
    normalized = _normalise(scores, full, substrate)
    return Curve(
        kind=kind, fractions=fractions, scores=scores, normalized=normalized,
        auc=float(np.trapezoid(normalized, fractions)), full_score=full, substrate_score=substrate,
        forward_passes=passes, seconds=seconds,
    )


def curves_for_orders(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    target: Target,
    orders: list[np.ndarray],
    steps: int = 50,
    substrate: str = "black",
    progress: ProgressFn = no_progress,
    kinds: tuple[str, ...] = KINDS,
    seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """Raw (deletion scores, insertion scores, full score, substrate score) per pixel ordering.

    Every interior point of every curve is one image; they are built lazily and scored in
    batches of ``adapter.max_batch``. A kind left out of ``kinds`` is not scored (its interior
    points stay 0).
    """
    _, _, height, width = pixels.shape
    n_pixels = height * width
    fill = make_substrate(pixels, substrate, seed).fill
    counts = np.round(np.linspace(0.0, 1.0, steps + 1) * n_pixels).astype(np.int64)
    ends = adapter.score_many(torch.cat([pixels, fill(torch.zeros_like(pixels[:, :1]))]), target)
    full, empty = float(ends[0]), float(ends[1])

    # One job per interior point: (ordering, deletion?, step).
    wanted = [KINDS.index(kind) for kind in kinds]
    jobs = [(o, kind, k) for o in range(len(orders)) for kind in wanted for k in range(1, steps)]
    scores = np.zeros((len(orders), 2, steps + 1))
    scores[:, 0, 0], scores[:, 0, steps] = full, empty  # deletion: full image -> substrate
    scores[:, 1, 0], scores[:, 1, steps] = empty, full  # insertion: substrate -> full image
    ranks = [np.empty(n_pixels, dtype=np.int64) for _ in orders]
    for rank, order in zip(ranks, orders):
        rank[order] = np.arange(n_pixels)  # rank[p] = position of pixel p in the ordering
    ranks_t = [torch.from_numpy(r).view(1, 1, height, width) for r in ranks]
    batch = adapter.max_batch
    for start in range(0, len(jobs), batch):
        chunk = jobs[start:start + batch]
        masks = torch.cat([(ranks_t[o] < int(counts[k])).float() for o, _, k in chunk])
        kinds = torch.tensor([kind for _, kind, _ in chunk], dtype=torch.float32).view(-1, 1, 1, 1)
        # deletion (kind 0): chosen pixels become substrate; insertion (kind 1): only they show.
        images = fill(torch.where(kinds == 0, 1.0 - masks, masks))
        batch_scores = adapter.score_many(images, target).numpy()
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
    random_block: int = RANDOM_BLOCK,
) -> tuple[dict[str, tuple[Curve, Curve]], MethodResult]:
    """Deletion and insertion curves for every map, plus the random-order reference.

    Returns ``({name: (deletion, insertion)}, random_reference)``.
    """
    if n_random < 1:
        raise ValueError("n_random must be at least 1")
    started, passes_before = time.perf_counter(), adapter.forward_passes
    names = list(saliency_maps)
    orders = [pixel_order(saliency_maps[n]) for n in names]
    orders += random_orders(pixels.shape[2], pixels.shape[3], n_random, seed, random_block)
    raw = curves_for_orders(adapter, pixels, target, orders, steps, substrate, progress, seed=seed)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    seconds = (time.perf_counter() - started) / len(orders) / 2
    passes = (adapter.forward_passes - passes_before) // len(orders) // 2
    out: dict[str, tuple[Curve, Curve]] = {}
    for name, (deletion, insertion, full, empty) in zip(names, raw):
        out[name] = (
            _make_curve("deletion", fractions, deletion, full, empty, passes, seconds),
            _make_curve("insertion", fractions, insertion, full, empty, passes, seconds),
        )
    random_raw = raw[len(names):]
    full, empty = random_raw[0][2], random_raw[0][3]
    deletion = np.mean([r[0] for r in random_raw], axis=0)
    insertion = np.mean([r[1] for r in random_raw], axis=0)
    height, width = pixels.shape[2:]
    placeholder = SaliencyMap("random", np.zeros((height, width), np.float32), 0.0, 0,
                              meta={"orderings": n_random, "seed": seed, "block": random_block})
    reference = MethodResult(
        placeholder,
        _make_curve("deletion", fractions, deletion, full, empty, passes * n_random, seconds * n_random),
        _make_curve("insertion", fractions, insertion, full, empty, passes * n_random, seconds * n_random),
    )
    return out, reference


def _single_curve(kind, adapter, pixels, target, saliency, steps, substrate) -> Curve:
    raw = curves_for_orders(adapter, pixels, target, [pixel_order(saliency)], steps, substrate, kinds=(kind,))[0]
    return _make_curve(kind, np.linspace(0, 1, steps + 1), raw[KINDS.index(kind)], raw[2], raw[3], 0, 0.0)


def deletion_curve(adapter, pixels, target, saliency, steps=50, substrate="black") -> Curve:
    """The deletion curve of one map (see the module docstring)."""
    return _single_curve("deletion", adapter, pixels, target, saliency, steps, substrate)


def insertion_curve(adapter, pixels, target, saliency, steps=50, substrate="black") -> Curve:
    """The insertion curve of one map (see the module docstring)."""
    return _single_curve("insertion", adapter, pixels, target, saliency, steps, substrate)
