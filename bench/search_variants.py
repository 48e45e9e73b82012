"""Region-search variants against plain greedy, and why none reaches greedy's AUCs at 1/5 of its passes.

    python bench/search_variants.py [--regions slic|grid] [--photos chelsea,coffee] [--curve-steps 50]

Two parts, per photo (bundled model, 49 regions asked, black substrate, the one protocol of
explainers.metrics):

1. **Diagnostics along greedy's own path.** Greedy evaluates every remaining region at every step,
   so its trace says how well a cheap estimate would have predicted its choice: the rank of
   greedy's pick under values that are d steps stale (what lazy greedy and pools rely on), and
   under a first-order estimate from one gradient of each of the two images (S kept, S removed)
   with respect to soft region masks (the "cheap prior" of a backward pass).
2. **Searches** built from the same objective, each with its forward passes (distinct images
   scored, as ``smdl_objective`` counts them, plus the two end images), insertion and deletion
   AUC against greedy's, and the mean objective along the order:
   - ``fast``: the default (explainers.methods.region_search.fast_order);
   - ``bidirectional``: LIMA-style, the front grows by the region that most raises s(S kept)
     while the gain is >= 0.02, the tail grows (from black, placed last-first) by the region that
     least raises s(T kept); one image per candidate instead of two;
   - ``bidirectional-pooled``: the same, the front evaluating only the 8 best singletons, the tail
     placing its 3 lowest per evaluation;
   - ``batch-greedy``: greedy on F placing its 6 best per full evaluation;
   - ``periodic``: greedy on F with a full evaluation every 10 steps and, between them, only the
     2 best regions of the last full evaluation evaluated;
   - ``greedy-ties-e``: plain greedy taking the runner-up wherever it is within e of the best:
     how far the reference itself moves with its tie-breaking (same cost as greedy).

Kept-set scores are memoised within a run so the variants cost seconds; pass counts are what
each search would cost on its own. The README and bench/RESULTS.md quote this table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from _common import PHOTOS, header, photo_path

from explainers import metrics
from explainers.images import open_image
from explainers.methods import region_search
from explainers.models import load_model
from explainers.regions import label_masks
from explainers.substrates import make_substrate
from explainers.types import Target


class KeptSetScores:
    """Normalised scores (black 0, full 1) of images that keep a set of regions, memoised."""

    def __init__(self, adapter, pixels, target, labels):
        self.adapter, self.pixels, self.target = adapter, pixels, target
        self.substrate = make_substrate(pixels, "black")
        self.masks = label_masks(labels)
        self.n = self.masks.shape[0]
        self.flat = self.masks.reshape(self.n, -1)
        ends = adapter.score_many(torch.cat([pixels, torch.zeros_like(pixels)]), target)
        self.full, self.empty = float(ends[0]), float(ends[1])
        self.memo: dict[bytes, float] = {}

    def __call__(self, kept: np.ndarray) -> np.ndarray:
        kept = np.asarray(kept, dtype=bool)
        keys = [np.packbits(row).tobytes() for row in kept]
        new = list({key: i for i, key in enumerate(keys) if key not in self.memo}.values())
        if new:
            images = region_search.keep_regions(
                self.substrate, self.flat, torch.from_numpy(kept[new].astype(np.float32))
            )
            scores = (self.adapter.score_many(images, self.target).numpy() - self.empty) / (self.full - self.empty)
            self.memo.update({keys[i]: float(s) for i, s in zip(new, scores)})
        return np.array([self.memo[key] for key in keys])


class Counted:
    """What one search would pay: distinct images per call (as smdl_objective scores them)."""

    def __init__(self, scores: KeptSetScores):
        self.scores, self.images = scores, 2  # the full and black images, scored once

    def kept(self, sets: np.ndarray) -> np.ndarray:
        self.images += len(np.unique(np.asarray(sets, dtype=bool), axis=0))
        return self.scores(sets)

    def objective(self, sets: np.ndarray) -> np.ndarray:
        """SMDL's F with both weights 1: s(S kept) + 1 - s(S removed)."""
        sets = np.asarray(sets, dtype=bool)
        values = self.kept(np.concatenate([sets, ~sets]))
        return values[: len(sets)] + 1.0 - values[len(sets) :]


def with_each(base: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """One row per candidate: ``base`` plus that region."""
    sets = np.repeat(base[None], len(candidates), axis=0)
    sets[np.arange(len(candidates)), candidates] = True
    return sets


def best_first(candidates: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Candidates by decreasing value, ties to the lower index."""
    return candidates[np.lexsort((candidates, -values))]


# --- searches: (n, Counted) -> order --------------------------------------------------------------


def bidirectional(
    n: int, paid: Counted, min_gain: float = 0.02, front_pool: int | None = None, tail_batch: int = 1
) -> list[int]:
    front, singles, current = np.zeros(n, dtype=bool), None, 0.0
    order: list[int] = []
    while not front.all():
        candidates = np.flatnonzero(~front)
        if front_pool and singles is not None:
            candidates = best_first(candidates, singles[candidates])[:front_pool]
        values = paid.kept(with_each(front, candidates))
        if singles is None:
            singles = np.full(n, -np.inf)
            singles[candidates] = values
        if order and values.max() - current < min_gain:
            break
        best = int(best_first(candidates, values)[0])
        order.append(best)
        front[best], current = True, float(values.max())
    tail, tail_order = np.zeros(n, dtype=bool), []
    while (~front & ~tail).any():
        candidates = np.flatnonzero(~front & ~tail)
        # the tail's first step is s({r}) of every region, known from the front's first step
        values = singles[candidates] if not tail.any() else paid.kept(with_each(tail, candidates))
        for region in candidates[np.lexsort((candidates, values))][:tail_batch]:
            tail_order.append(int(region))
            tail[region] = True
    return order + tail_order[::-1]


def batch_greedy(n: int, paid: Counted, batch: int = 6) -> list[int]:
    selected, order = np.zeros(n, dtype=bool), []
    while not selected.all():
        candidates = np.flatnonzero(~selected)
        for region in best_first(candidates, paid.objective(with_each(selected, candidates)))[:batch]:
            order.append(int(region))
            selected[region] = True
    return order


def periodic(n: int, paid: Counted, full_every: int = 10, pool: int = 2) -> list[int]:
    selected, order, last = np.zeros(n, dtype=bool), [], np.zeros(n)
    for step in range(n):
        candidates = np.flatnonzero(~selected)
        if step % full_every:
            candidates = best_first(candidates, last[candidates])[:pool]
        values = paid.objective(with_each(selected, candidates))
        if step % full_every == 0:
            last[candidates] = values
        best = int(candidates[int(np.argmax(values))])
        order.append(best)
        selected[best] = True
    return order


def greedy_near_ties(n: int, paid: Counted, tie: float = 0.005) -> list[int]:
    """Plain greedy, but where the runner-up is within ``tie`` of the best (F differs by less than
    that), take the runner-up: how far greedy's own AUCs move with its tie-breaking."""
    selected, order = np.zeros(n, dtype=bool), []
    for _ in range(n):
        candidates = np.flatnonzero(~selected)
        values = paid.objective(with_each(selected, candidates))
        ranked = np.lexsort((candidates, -values))
        pick = ranked[1] if len(ranked) > 1 and values[ranked[0]] - values[ranked[1]] < tie else ranked[0]
        order.append(int(candidates[pick]))
        selected[candidates[pick]] = True
    return order


def fast(n: int, paid: Counted) -> list[int]:
    return region_search.fast_order(n, paid.objective)[0]


SEARCHES: dict[str, Callable[[int, Counted], list[int]]] = {
    "fast": fast,
    "bidirectional": bidirectional,
    "bidirectional-pooled": lambda n, paid: bidirectional(n, paid, front_pool=8, tail_batch=3),
    "batch-greedy": batch_greedy,
    "periodic": periodic,
    "greedy-ties-0.002": lambda n, paid: greedy_near_ties(n, paid, 0.002),
    "greedy-ties-0.005": greedy_near_ties,
}


# --- diagnostics along greedy's path ------------------------------------------------------------


def greedy_trace(n: int, paid: Counted) -> tuple[list[int], list[dict[int, float]]]:
    """The project's plain greedy (``region_search.greedy_order``), keeping every candidate's F at
    every step. Step t's rows are "the first t regions of the order plus r" for each remaining r
    in increasing order, so each call's values map back to regions once the order is known."""
    calls: list[np.ndarray] = []

    def recording(sets: np.ndarray) -> np.ndarray:
        calls.append(paid.objective(sets))
        return calls[-1]

    order, _, _ = region_search.greedy_order(n, recording)
    selected, trace = np.zeros(n, dtype=bool), []
    for values, region in zip(calls, order):
        trace.append(dict(zip(np.flatnonzero(~selected).tolist(), values.tolist())))
        selected[region] = True
    return order, trace


def rank_of_choice(order, trace, estimate_at: Callable[[int], dict[int, float] | np.ndarray], first: int) -> np.ndarray:
    ranks = []
    for step in range(first, len(order) - 1):
        estimate = estimate_at(step)
        ranked = sorted(trace[step], key=lambda r: (-estimate[r], r))
        ranks.append(ranked.index(order[step]))
    return np.array(ranks)


def gradient_estimates(scores: KeptSetScores, order: list[int]) -> list[np.ndarray]:
    """At each prefix S of greedy's order: d s/d m (S kept) + d s/d m (S removed), per region.

    The first-order gain of adding r: its insertion gain plus the drop of removing it.
    """
    selected, out = np.zeros(scores.n, dtype=bool), []
    for region in order[:-1]:
        soft = torch.tensor(np.stack([selected, ~selected]).astype(np.float32), requires_grad=True)
        images = region_search.keep_regions(scores.substrate, scores.flat, soft)
        scores.adapter.score(images, scores.target).sum().backward()
        grad = soft.grad.numpy() / (scores.full - scores.empty)
        out.append(grad[0] + grad[1])
        selected[region] = True
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--regions", default="slic")
    parser.add_argument("--n", type=int, default=49)
    parser.add_argument("--photos", default=",".join(PHOTOS))
    parser.add_argument("--curve-steps", type=int, default=50)
    parser.add_argument("--searches", default=",".join(SEARCHES), help="comma-separated; greedy always runs")
    args = parser.parse_args()
    searches = {name: SEARCHES[name] for name in args.searches.split(",")}
    adapter = load_model("bundled")
    header(f"Region-search variants, bundled, {args.n} {args.regions} regions, {args.curve_steps} curve steps")
    diagnostics, rows = [], []
    for photo in args.photos.split(","):
        target = Target(PHOTOS[photo])
        pixels = adapter.load_image(open_image(photo_path(photo)))
        labels = region_search.region_labels(pixels, args.n, args.regions)
        scores = KeptSetScores(adapter, pixels, target, labels)
        n = scores.n
        paid = Counted(scores)
        greedy, trace = greedy_trace(n, paid)
        orders, passes = {"greedy": greedy}, {"greedy": paid.images}
        for name, search in searches.items():
            paid = Counted(scores)
            orders[name], passes[name] = search(n, paid), paid.images
            assert sorted(orders[name]) == list(range(n)), name

        gradients = gradient_estimates(scores, greedy)
        # (label, first step it exists at, estimate at a step)
        estimates = [
            (f"values {d} step{'s' if d > 1 else ''} stale", d, (lambda d: lambda s: trace[s - d])(d))
            for d in (1, 2, 4)
        ]
        estimates.append(("gradient at the current set", 0, lambda s: gradients[s]))
        for label, first, estimate in estimates:
            ranks = rank_of_choice(greedy, trace, estimate, first)
            diagnostics.append(
                f"| {photo} | {n} | {label} | {np.median(ranks):.0f} | {np.mean(ranks < 3):.0%} "
                f"| {np.mean(ranks < 6):.0%} |"
            )

        maps = {name: region_search.order_map(order, labels) for name, order in orders.items()}
        curves, _ = metrics.faithfulness(adapter, pixels, target, maps, steps=args.curve_steps, n_random=1)
        base_deletion, base_insertion = curves["greedy"]
        for name, order in orders.items():
            deletion, insertion = curves[name]
            mean_f = float(np.mean(Counted(scores).objective(region_search.prefix_sets(order))))
            meets = (
                passes[name] <= passes["greedy"] / 5
                and insertion.auc >= 0.98 * base_insertion.auc
                and deletion.auc <= base_deletion.auc + 0.02
            )
            rows.append(
                f"| {photo} | {name} | {passes[name]} | {passes[name] / passes['greedy']:.2f} "
                f"| {insertion.auc:.3f} | {deletion.auc:.3f} | {insertion.auc / base_insertion.auc:.3f} "
                f"| {deletion.auc - base_deletion.auc:+.3f} | {mean_f:.3f} | {'yes' if meets else ''} |"
            )
        print(f"({photo}: {n} regions done)", flush=True)

    print("\nRank of greedy's choice among the remaining regions under a cheap estimate (0 = its top):\n")
    print("| photo | regions | estimate | median rank | in top 3 | in top 6 |")
    print("|---|---|---|---|---|---|")
    print("\n".join(diagnostics))
    print(
        "\nSearches (passes: images scored; targets: <= 1/5 of greedy's passes, insertion >= 98 % of "
        "greedy's, deletion <= greedy's + 0.02):\n"
    )
    print(
        "| photo | search | forward | / greedy | insertion AUC | deletion AUC | ins / greedy | del - greedy "
        "| mean F on the path | meets all |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\n({time.perf_counter() - started:.0f} s in all)")
