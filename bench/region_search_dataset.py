"""Region search over a data set: forward passes, seconds and mean SRG of every search, with CIs.

    python bench/region_search_dataset.py [--data DIR] [--every 3] [--searches greedy,lazy,fast,...]

The data set is ``../shared/data/imagenet-samples`` (or ``--data``, or $SALIENCY_LAB_IMAGENET):
``manifest.csv`` rows (image, imagenet_index, prompt); the photos are read from there, never
copied. ``--every k`` (default 3) takes rows 0, k, 2k, ... and ``--limit`` (default 50) the first of
those: the same 50 photos for every search.

Protocol: the CLI's defaults (bundled model, 49 SLIC regions asked, black substrate, 50 curve
steps, the manifest's prompt, no contrast). SRG = AUC(insertion) - AUC(deletion) of the
normalised curves (substrate 0, full photo 1, trapezoid over fractions 0..1), computed from
``metrics.curves_for_orders``' raw scores exactly as ``metrics.faithfulness`` does.

Searches run on a memoised scorer of "kept" images (the photo with a set of regions kept, the
rest black), stored per photo in bench/.cache/dataset/, so a rerun or a new variant pays only for
images never scored before. Each search's forward passes are counted as the engine's
``smdl_objective`` pays them (the two end images, then every distinct image of each call), not
as the memo happened to serve them; seconds are those of the first (uncached) run of each search
and are noisy on this shared 2-core machine. Curves are cached per order.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from _common import CACHE, ROOT, header

from explainers import metrics
from explainers.evaluate import stats
from explainers.evaluate.stats import ILL_CONDITIONED_AUC
from explainers.images import open_image
from explainers.methods import region_search
from explainers.models import load_model
from explainers.regions import label_masks
from explainers.substrates import make_substrate
from explainers.types import Target

DATA_ENV = "SALIENCY_LAB_IMAGENET"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imagenet-samples"
DATASET_CACHE = CACHE / "dataset"


# --- the data set ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    image: str
    imagenet_index: int
    prompt: str


def manifest_rows(data: Path, every: int = 4, offset: int = 0) -> list[Row]:
    with open(data / "manifest.csv", newline="") as handle:
        rows = [Row(r["image"], int(r["imagenet_index"]), r["prompt"]) for r in csv.DictReader(handle)]
    return rows[offset::every]


# --- scoring kept sets, memoised on disk -----------------------------------------------------


class KeptScores:
    """Normalised target score (black 0, full photo 1) of the photo keeping a set of regions.

    Memoised in memory and on disk (``save``); raw scores are stored so the normalisation stays
    the protocol's. ``scored`` counts the images actually sent to the model (for timing only).
    """

    def __init__(self, adapter, pixels, target, labels, cache: Path):
        self.adapter, self.target, self.cache = adapter, target, cache
        self.n = int(labels.max()) + 1
        self.flat = label_masks(labels).reshape(self.n, -1)
        self.substrate = make_substrate(pixels, "black")
        self.memo: dict[bytes, float] = {}
        if cache.is_file():
            saved = np.load(cache)
            self.memo = {k.tobytes(): float(v) for k, v in zip(saved["keys"], saved["values"])}
        self._dirty = False
        full_key, empty_key = self._key(np.ones(self.n, bool)), self._key(np.zeros(self.n, bool))
        self._score_missing([np.ones(self.n, bool), np.zeros(self.n, bool)])
        self.full, self.empty = self.memo[full_key], self.memo[empty_key]
        self.span = self.full - self.empty if abs(self.full - self.empty) > 1e-6 else 1e-6
        self.scored = 0

    def _key(self, row: np.ndarray) -> bytes:
        return np.packbits(row).tobytes()

    def _score_missing(self, rows) -> None:
        missing = {}
        for row in rows:
            key = self._key(row)
            if key not in self.memo and key not in missing:
                missing[key] = row
        if not missing:
            return
        kept = torch.from_numpy(np.stack(list(missing.values())).astype(np.float32))
        _, _, height, width = self.substrate.pixels.shape
        keep = (kept @ self.flat).clamp(max=1.0).view(len(kept), 1, height, width)
        scores = self.adapter.score_many(self.substrate.fill(keep), self.target).numpy()
        self.memo.update({key: float(s) for key, s in zip(missing, scores)})
        self.scored = getattr(self, "scored", 0) + len(missing)
        self._dirty = True

    def __call__(self, sets: np.ndarray) -> np.ndarray:
        sets = np.asarray(sets, dtype=bool)
        self._score_missing(list(sets))
        raw = np.array([self.memo[self._key(row)] for row in sets])
        return (raw - self.empty) / self.span

    def save(self) -> None:
        if not self._dirty:
            return
        keys = np.array([np.frombuffer(k, dtype=np.uint8) for k in self.memo])
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(self.cache, keys=keys, values=np.array(list(self.memo.values())))
        self._dirty = False


class Counted(region_search.PartsObjective):
    """One search's view of the scorer, with the engine's objective interface and its bill.

    A ``region_search.PartsObjective`` like ``SmdlObjective``: calling it gives F(S) = s(S kept) + 1 - s(S removed)
    for a batch of sets, ``kept_scores`` gives s of kept sets, and each distinct kept set costs
    one image the first time this search asks for it (the photo and the fully removed image are
    scored once up front: 2 images). The memo behind it may already know the image; the bill is
    what the search would pay on its own.
    """

    lambdas = (1.0, 1.0)

    def __init__(self, scores: KeptScores, areas: np.ndarray | None = None):
        self.scores, self.images, self.areas = scores, 2, areas
        n = scores.n
        self._asked = {np.ones(n, bool).tobytes(), np.zeros(n, bool).tobytes()}

    def kept_scores(self, sets: np.ndarray) -> np.ndarray:
        sets = np.asarray(sets, dtype=bool)
        for row in sets:
            key = row.tobytes()
            if key not in self._asked:
                self._asked.add(key)
                self.images += 1
        return self.scores(sets)

    def __call__(self, sets: np.ndarray) -> np.ndarray:
        sets = np.asarray(sets, dtype=bool)
        values = self.kept_scores(np.concatenate([sets, ~sets]))
        return values[: len(sets)] + 1.0 - values[len(sets) :]


@dataclass
class Photo:
    row: Row
    pixels: torch.Tensor
    target: Target
    labels: np.ndarray
    scores: KeptScores
    area: np.ndarray  # pixel fraction of each region
    top1: int
    full_score: float
    cache_dir: Path
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.scores.n

    @property
    def correct(self) -> bool:
        return self.top1 == self.row.imagenet_index


def load_photo(adapter, data: Path, row: Row, n_regions: int, kind: str) -> Photo:
    pixels = adapter.load_image(open_image(data / row.image))
    target = Target(row.prompt)
    labels = region_search.region_labels(pixels, n_regions, kind)
    stem = Path(row.image).stem
    cache_dir = DATASET_CACHE / f"{adapter.name}-{kind}-{n_regions}" / stem
    scores = KeptScores(adapter, pixels, target, labels, cache_dir / "kept.npz")
    area = np.bincount(labels.ravel(), minlength=scores.n) / labels.size
    with torch.no_grad():
        top1 = int(adapter.logits(pixels).argmax()) if hasattr(adapter, "logits") else -1
    return Photo(row, pixels, target, labels, scores, area, top1, scores.full, cache_dir)


# --- SRG of an order, cached -----------------------------------------------------------------


def srg_parts(deletion: np.ndarray, insertion: np.ndarray, full: float, empty: float) -> tuple[float, float]:
    """(insertion AUC, deletion AUC) of raw curves, normalised and integrated as metrics does."""
    span = full - empty
    if abs(span) < 1e-6:
        span = 1e-6 if span >= 0 else -1e-6
    fractions = np.linspace(0.0, 1.0, len(deletion))
    auc = lambda raw: float(np.trapezoid((np.asarray(raw) - empty) / span, fractions))  # noqa: E731
    return auc(insertion), auc(deletion)


class CurveCache:
    """Raw deletion/insertion curves per map, keyed by the map's pixel order, stored per photo."""

    def __init__(self, adapter, photo: Photo, steps: int):
        self.adapter, self.photo, self.steps = adapter, photo, steps
        self.path = photo.cache_dir / f"curves-{steps}.json"
        self.saved = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def aucs(self, saliency: np.ndarray) -> tuple[float, float]:
        order = metrics.pixel_order(saliency)
        key = hashlib.sha1(order.astype(np.int32).tobytes()).hexdigest()
        if key not in self.saved:
            deletion, insertion, full, empty = metrics.curves_for_orders(
                self.adapter, self.photo.pixels, self.photo.target, [order], self.steps, "black"
            )[0]
            self.saved[key] = [list(map(float, deletion)), list(map(float, insertion)), full, empty]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.saved))
        deletion, insertion, full, empty = self.saved[key]
        return srg_parts(deletion, insertion, full, empty)


# --- statistics --------------------------------------------------------------------------------


def bootstrap_ci(values: np.ndarray, seed: int = 0, draws: int = 10_000) -> tuple[float, float]:
    """95 % percentile bootstrap CI of the mean (seeded): the data-set evaluation's statistics."""
    values = np.asarray(values, dtype=np.float64)
    index = np.random.default_rng(seed).integers(0, len(values), (draws, len(values)))
    low, high = stats.bootstrap_ci(values, index)
    return low, high


# --- searches: (photo, objective) -> order ------------------------------------------------------------


def greedy(photo: Photo, paid: Counted) -> list[int]:
    return region_search.greedy_order(photo.n, paid)[0]


def lazy(photo: Photo, paid: Counted) -> list[int]:
    return region_search.lazy_greedy_order(photo.n, paid)[0]


def fast(photo: Photo, paid: Counted) -> list[int]:
    return region_search.fast_order(photo.n, paid)[0]


def engine(name: str, **options) -> SearchFn:
    """A search of explainers.methods.region_search, run on the memoised objective."""
    return lambda photo, objective: region_search.SEARCH_FUNCTIONS[name](photo.n, objective, **options)[0]


def two_ended_budget(times: float) -> SearchFn:
    """The two-ended search with ``times`` its default budget (a fifth of greedy's passes)."""

    def search(photo: Photo, objective: Counted) -> list[int]:
        budget = int(times * (region_search.greedy_images(photo.n) // 5 - 2))
        return region_search.two_ended_order(photo.n, objective, budget=budget)[0]

    return search


SearchFn = Callable[[Photo, Counted], list[int]]
SEARCHES: dict[str, SearchFn] = {
    "greedy": greedy,
    "lazy": lazy,
    "fast": fast,
    "lima": engine("lima"),
    "two-ended": engine("two-ended"),
    "two-ended-2x": two_ended_budget(2.0),
    "two-ended-0.5x": two_ended_budget(0.5),
}


def run_search(photo: Photo, name: str, search: SearchFn) -> dict:
    """Order, passes and seconds of one search on one photo, cached in the photo's folder."""
    path = photo.cache_dir / "searches.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if name not in saved:
        paid = Counted(photo.scores, photo.area)
        started = time.perf_counter()
        order = [int(r) for r in search(photo, paid)]
        seconds = time.perf_counter() - started
        assert sorted(order) == list(range(photo.n)), name
        saved[name] = {"order": order, "passes": paid.images, "seconds": seconds, "scored_now": photo.scores.scored}
        photo.scores.save()
        path.write_text(json.dumps(saved))
    return saved[name]


# --- the table ------------------------------------------------------------------------------------

# Maps of the engine's other methods on the same photos (for "region search is the most faithful").
OTHER_METHODS = {"gradcam": {}, "ig": {"steps": 32, "baseline": "black"}}


def other_map(adapter, photo: Photo, method: str) -> tuple[np.ndarray, float, int]:
    """(map, seconds, forward passes) of an engine method, cached in the photo's folder."""
    from explainers.methods import run_method

    path = photo.cache_dir / f"{method}.npz"
    if not path.is_file():
        saliency = run_method(method, adapter, photo.pixels, photo.target, **OTHER_METHODS[method])
        np.savez(path, values=saliency.values, seconds=saliency.seconds, passes=saliency.forward_passes)
    saved = np.load(path)
    return saved["values"], float(saved["seconds"]), int(saved["passes"])


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, tuple[float, float]]:
    """Mean of a - b with its 95 % bootstrap CI."""
    diff = np.asarray(a) - np.asarray(b)
    return float(diff.mean()), bootstrap_ci(diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(DATA_ENV, DEFAULT_DATA)))
    parser.add_argument("--every", type=int, default=3, help="take every k-th manifest row (default 3)")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--limit", type=int, default=50, help="at most this many photos (default 50)")
    parser.add_argument("--searches", default="greedy,lazy,lima,fast,two-ended,two-ended-2x")
    parser.add_argument("--others", default="gradcam,ig", help="engine methods tabled beside the searches")
    parser.add_argument("--regions", type=int, default=49)
    parser.add_argument("--kind", default="slic")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--correct-only", action="store_true", help="only photos the model classifies correctly")
    args = parser.parse_args()

    searches = [s for s in args.searches.split(",") if s]
    others = [m for m in args.others.split(",") if m]
    adapter = load_model("bundled")
    rows = manifest_rows(args.data, args.every, args.offset)[: args.limit]
    header(
        f"Region search over {len(rows)} ImageNet photos (bundled, {args.kind} {args.regions}, "
        f"black, {args.steps} curve steps)"
    )
    table: dict[str, dict[str, list]] = {
        name: {"srg": [], "ins": [], "del": [], "passes": [], "seconds": []} for name in searches + others
    }
    correct, regions_found, ill = [], [], []
    for number, row in enumerate(rows, 1):
        photo = load_photo(adapter, args.data, row, args.regions, args.kind)
        if args.correct_only and not photo.correct:
            continue
        curves = CurveCache(adapter, photo, args.steps)
        # The data-set evaluation's rule (explainers.evaluate.stats): a random pixel ordering's
        # normalised AUC beyond +-3 means the photo scores like the removed image, and the
        # normalisation divides by about zero; such photos are left out (and named).
        random_map = np.random.default_rng(0).random(photo.labels.shape)
        if any(abs(auc) > ILL_CONDITIONED_AUC for auc in curves.aucs(random_map)):
            ill.append(row.image)
            print(
                f"  {number}/{len(rows)} {row.image}: ill-conditioned (photo {photo.scores.full:.3f}, "
                f"removed {photo.scores.empty:.3f}), left out",
                flush=True,
            )
            continue
        correct.append(photo.correct)
        regions_found.append(photo.n)
        for name in searches:
            found = run_search(photo, name, SEARCHES[name])
            ins, dele = curves.aucs(region_search.order_map(found["order"], photo.labels))
            for key, value in (
                ("srg", ins - dele),
                ("ins", ins),
                ("del", dele),
                ("passes", found["passes"]),
                ("seconds", found["seconds"]),
            ):
                table[name][key].append(value)
        for name in others:
            values, seconds, passes = other_map(adapter, photo, name)
            ins, dele = curves.aucs(values)
            for key, value in (
                ("srg", ins - dele),
                ("ins", ins),
                ("del", dele),
                ("passes", passes),
                ("seconds", seconds),
            ):
                table[name][key].append(value)
        print(
            f"  {number}/{len(rows)} {row.image}: n={photo.n} "
            + " ".join(f"{name} {table[name]['srg'][-1]:+.2f}" for name in searches + others),
            flush=True,
        )

    n = len(correct)
    print(
        f"\n{n} photos ({sum(correct)} classified correctly), SLIC gave {min(regions_found)}-"
        f"{max(regions_found)} regions (mean {np.mean(regions_found):.1f})"
        + (f"; left out as ill-conditioned: {', '.join(ill)}" if ill else "")
        + ".\n"
    )
    reference = "greedy" if "greedy" in searches else None
    print(
        "| map | forward passes (mean) | passes / greedy | seconds (mean) | insertion | deletion | "
        "SRG mean [95 % CI] | SRG / greedy's | SRG - greedy's [95 % CI] |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in searches + others:
        t = {k: np.asarray(v, dtype=float) for k, v in table[name].items()}
        lo, hi = bootstrap_ci(t["srg"])
        cells = [
            name,
            f"{t['passes'].mean():.0f}",
            "",
            f"{t['seconds'].mean():.1f}",
            f"{t['ins'].mean():.3f}",
            f"{t['del'].mean():.3f}",
            f"{t['srg'].mean():.3f} [{lo:.3f}, {hi:.3f}]",
            "",
            "",
        ]
        if reference:
            g = {k: np.asarray(v, dtype=float) for k, v in table[reference].items()}
            cells[2] = f"{t['passes'].mean() / g['passes'].mean():.2f}" if name in searches else "-"
            cells[7] = f"{100 * t['srg'].mean() / g['srg'].mean():.0f} %"
            mean, (dlo, dhi) = paired(t["srg"], g["srg"])
            cells[8] = f"{mean:+.3f} [{dlo:+.3f}, {dhi:+.3f}]" if name != reference else "-"
        print("| " + " | ".join(cells) + " |")
    default = next(p.default for p in region_search.METHOD.params if p.name == "region_search")
    if default in searches and others:
        print(f"\nRegion search ({default}, the default) against the other methods, paired on the same photos:\n")
        for name in others:
            mean, (lo, hi) = paired(table[default]["srg"], table[name]["srg"])
            print(f"- {default} - {name}: SRG {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    print(
        "\nPasses are what the engine's objective pays (exact). Seconds are the first run of each search, "
        "on a memo that earlier searches of the same photo may already have filled, on a shared 2-core "
        "machine: not comparable between searches (the data-set evaluation times the default search alone)."
    )


if __name__ == "__main__":
    main()
