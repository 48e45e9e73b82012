"""Does region search's lead transfer to substrates it did not search on? (issue 19)

    python bench/region_transfer.py --split dev8 [--shard 0/2] [--searches ...] [--derived ...]
    python bench/region_transfer.py --split dev8 --table [--maps a,b,...]     # the tables so far

Every map is made once (the searches search on black unless their name says otherwise: see
SEARCHES; DERIVED maps are made from them without a forward pass of their own), then its
deletion/insertion curves are drawn on black, blur and ROAD. The data set is
../shared/data/imagenet-samples (or --data / $SALIENCY_LAB_IMAGENET; read in place, never
copied). Splits, so that settings are chosen on one part and confirmed on another: ``dev`` =
manifest rows 0, 4, 8, ... (50 photos), ``dev8`` = rows 0, 8, 16, ... (its half, the development
split used for the README), ``held`` = every row not in ``dev``, ``rows:START:STEP`` any slice
(the README's held-out photos: rows:1:8 and rows:5:8, both outside ``dev``).

Protocol (the CLI's defaults: bundled model, 49 SLIC regions asked, the manifest's prompt, no
contrast): curves at ``--steps`` (black:50,blur:50,road:20 by default: ROAD's imputation costs
about as much as a forward pass, so it is scored at the app's 20 steps), normalised so that the
substrate scores 0 and the photo 1, clipped pointwise to [0, 1] (issue 18); SRG = AUC(insertion)
- AUC(deletion) of the clipped curves; the unclipped SRG is kept beside it. Random reference: one
seeded random pixel ordering per photo and substrate (N_RANDOM; CPU was scarce). Correct/wrong:
the model's top-1 class against the manifest's imagenet_index. A photo whose score beats the
substrate's by less than MIN_SPAN (log-probability units) is ill-conditioned on that substrate
and left out of its table. ``--cache`` names the folder a run writes (runs in parallel must not
share one); ``--table --caches a,b`` merges the maps of several folders per photo.

Forward passes are what each map costs on its own (the search's images, counted as the engine's
objective pays them, plus Grad-CAM's one pass where a map uses it). Every scored image is
memoised on disk by its content (bench/.cache/transfer*/), so a new variant or a rerun pays only
for images never scored before; the bill stays the map's own. The ``+mixNN`` maps are the
engine's ``cam_blend=NN/100, within="gradcam"`` on the search's order (the engine's default map
spends one search image less, to pay for Grad-CAM's pass).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import CACHE, ROOT, load_average
from scipy.ndimage import gaussian_filter

from explainers import metrics
from explainers.evaluate.stats import bootstrap_ci
from explainers.images import open_image
from explainers.methods import region_search, run_method
from explainers.models import load_model
from explainers.regions import label_masks, order_within_regions, region_labels, region_means
from explainers.types import Target

DATA_ENV = "SALIENCY_LAB_IMAGENET"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "imagenet-samples"
TRANSFER_CACHE = CACHE / "transfer"
MIN_SPAN = 0.1  # the photo must beat the fully removed image by this much (log-probability)
N_RANDOM = 1
RESAMPLES = 10_000


# --- scoring, memoised by image content --------------------------------------------------------


class MemoScores:
    """The adapter's scores memoised by the image's bytes (and the prompt), in memory and on disk."""

    def __init__(self, adapter: Any, path: Path) -> None:
        self.adapter, self.path = adapter, path
        self.memo: dict[bytes, float] = {}
        if path.is_file():
            saved = np.load(path)
            self.memo = {bytes(k): float(v) for k, v in zip(saved["keys"], saved["values"])}
        self.dirty = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.adapter, name)

    @torch.no_grad()
    def score(self, pixels: torch.Tensor, target: Target) -> torch.Tensor:
        prompt = target.prompt.encode()
        keys = [
            hashlib.blake2b(prompt + p.contiguous().cpu().numpy().tobytes(), digest_size=16).digest() for p in pixels
        ]
        missing = [i for i, k in enumerate(keys) if k not in self.memo]
        if missing:
            scores = self.adapter.score_many(pixels[missing], target).cpu().numpy()
            self.memo.update({keys[i]: float(s) for i, s in zip(missing, scores)})
            self.dirty = True
        return torch.tensor([self.memo[k] for k in keys], dtype=torch.float32)

    def score_many(self, pixels: torch.Tensor, target: Target) -> torch.Tensor:
        return self.score(pixels, target)

    def save(self) -> None:
        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keys = np.array([np.frombuffer(k, dtype=np.uint8) for k in self.memo])
            np.savez(self.path, keys=keys, values=np.array(list(self.memo.values())))
            self.dirty = False


class Counted:
    """Counts the images a map asks for (its own bill, whatever the memo already knew);
    ``probability`` scores exp(log-probability), the bundled model's target probability."""

    def __init__(self, inner: Any, probability: bool = False) -> None:
        self.inner, self.probability, self.images = inner, probability, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def score_many(self, pixels: torch.Tensor, target: Target) -> torch.Tensor:
        self.images += len(pixels)
        scores = self.inner.score_many(pixels, target)
        return scores.exp() if self.probability else scores

    score = score_many


# --- maps ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    """A region search: the engine's search function on the SMDL objective with these options."""

    search: str = "two-ended"
    bounded: bool = False  # normalised scores clipped to [0, 1] in the objective
    probability: bool = False  # the objective on exp(score) (the probability) instead of the log
    substrates: tuple[str, ...] = ("black",)
    prior: bool = False  # Grad-CAM's mean per region breaks the search's ties
    options: tuple[tuple[str, Any], ...] = ()


SEARCHES: dict[str, Search] = {
    "greedy": Search("greedy"),
    "lima": Search("lima"),
    "two-ended": Search(),
    "te-clip": Search(bounded=True),
    "te-prob": Search(probability=True),
    "te-prob-clip": Search(probability=True, bounded=True),
    "te-bb": Search(substrates=("black", "blur")),
    "te-bb-clip": Search(substrates=("black", "blur"), bounded=True),
    "te-blur-clip": Search(substrates=("blur",), bounded=True),
    "greedy-clip": Search("greedy", bounded=True),
    "te-clip-prior": Search(bounded=True, prior=True),
}
# Maps made from others without a forward pass of their own (Grad-CAM's pass is added where used).
DERIVED = ("+gc", "+sm", "@reg", "+mix25", "+mix50", "+pmix50")


def percent_rank(region_map: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each region's rank among the regions by a region-constant map, 1 (highest) .. 0, per pixel."""
    n = int(labels.max()) + 1
    per_region = np.zeros(n)
    per_region[labels.ravel()] = region_map.ravel()
    ranks = np.empty(n)
    ranks[np.argsort(-per_region, kind="stable")] = np.arange(n)
    return (1.0 - ranks / max(n - 1, 1))[labels]


def pixel_percent_rank(saliency: np.ndarray) -> np.ndarray:
    """Each pixel's rank by the map, 1 (highest) .. 0 (ties: the lower flat index ranks higher)."""
    order = metrics.pixel_order(saliency)
    ranks = np.empty(order.size)
    ranks[order] = np.arange(order.size)
    return (1.0 - ranks / max(order.size - 1, 1)).reshape(saliency.shape)


def region_order(region_map: np.ndarray, labels: np.ndarray) -> list[int]:
    """The regions of a region-constant map, highest value first (ties: lower index)."""
    per_region = region_means(region_map, labels)
    return [int(r) for r in np.argsort(-per_region, kind="stable")]


def region_rank_map(blend: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A region-constant blend -> the order map of its regions (1 - rank / n)."""
    n = int(labels.max()) + 1
    per_region = np.zeros(n)
    per_region[labels.ravel()] = blend.ravel()
    return region_search.order_map([int(r) for r in np.argsort(-per_region, kind="stable")], labels)


def region_average(saliency: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Blücher et al.'s region granularity: each map averaged over each SLIC region."""
    return region_means(saliency, labels)[labels].astype(np.float32)


# --- one photo ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    index: int
    image: str
    imagenet_index: int
    prompt: str


def manifest_rows(data: Path) -> list[Row]:
    with open(data / "manifest.csv", newline="") as handle:
        return [Row(i, r["image"], int(r["imagenet_index"]), r["prompt"]) for i, r in enumerate(csv.DictReader(handle))]


def split_rows(rows: list[Row], split: str) -> list[Row]:
    if split == "dev":
        return rows[0::4]
    if split == "dev8":  # half of dev: rows 0, 8, 16, ...
        return rows[0::8]
    if split == "held":
        return [r for r in rows if r.index % 4]
    if split == "all":
        return rows
    if split.startswith("rows"):  # rows:START:STEP, e.g. rows:4:8 (held out: 25 photos)
        _, start, step = split.split(":")
        return rows[int(start) :: int(step)]
    raise ValueError(split)


def order_key(saliency: np.ndarray) -> str:
    return hashlib.sha1(metrics.pixel_order(saliency).astype(np.int32).tobytes()).hexdigest()


class PhotoWork:
    """Maps, curves and results of one photo, each cached in its folder."""

    def __init__(self, adapter: Any, data: Path, row: Row, n_regions: int, cache: Path = TRANSFER_CACHE) -> None:
        self.adapter, self.row = adapter, row
        self.dir = cache / Path(row.image).stem
        self.pixels = adapter.load_image(open_image(data / row.image))
        self.target = Target(row.prompt)
        self.labels = region_labels(self.pixels, n_regions, "slic")
        self.memo = MemoScores(adapter, self.dir / "scores.npz")
        self.maps_path, self.meta_path = self.dir / "maps.npz", self.dir / "maps.json"
        self.maps: dict[str, np.ndarray] = dict(np.load(self.maps_path)) if self.maps_path.is_file() else {}
        self.meta: dict[str, dict] = json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else {}
        with torch.no_grad():
            self.top1 = int(adapter.logits(self.pixels).argmax())

    def save_maps(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(self.maps_path, **self.maps)
        self.meta_path.write_text(json.dumps(self.meta))
        self.memo.save()

    def engine_map(self, name: str, **kwargs: Any) -> None:
        if name in self.maps:
            return
        m = run_method(name, self.adapter, self.pixels, self.target, **kwargs)
        self.maps[name] = m.values.astype(np.float32)
        self.meta[name] = {"passes": m.forward_passes, "backward": m.backward_passes, "seconds": m.seconds}

    def search_map(self, name: str, spec: Search) -> None:
        if name in self.maps:
            return
        started = time.perf_counter()
        counted = Counted(self.memo, spec.probability)
        masks = label_masks(self.labels)
        objective, _, _ = region_search.smdl_objective(
            counted, self.pixels, self.target, masks, bounded=spec.bounded, substrate=spec.substrates
        )
        options = dict(spec.options)
        if spec.prior:
            options["prior"] = region_means(self.maps["gradcam"], self.labels)
        order, _, _ = region_search.SEARCH_FUNCTIONS[spec.search](masks.shape[0], objective, **options)
        self.maps[name] = region_search.order_map(order, self.labels)
        self.meta[name] = {
            "passes": counted.images + (self.meta["gradcam"]["passes"] if spec.prior else 0),
            "backward": self.meta["gradcam"]["backward"] if spec.prior else 0,
            "seconds": time.perf_counter() - started,
            "order": [int(r) for r in order],
        }
        self.memo.save()

    def derived_map(self, name: str) -> None:
        if name in self.maps:
            return
        kind = next(d for d in DERIVED if name.endswith(d))
        base = name[: -len(kind)]
        values = self.maps[base]
        meta = dict(self.meta[base])
        meta.pop("order", None)
        if kind == "+gc":
            values = order_within_regions(values, self.labels, self.maps["gradcam"])
            meta["passes"] += self.meta["gradcam"]["passes"]
            meta["backward"] += self.meta["gradcam"]["backward"]
        elif kind == "+sm":  # pixels next to higher-ranked regions first: no pass at all
            values = order_within_regions(values, self.labels, gaussian_filter(values, 8.0))
        elif kind == "+pmix50":  # a pixel-level blend: the search's region rank and Grad-CAM's pixel rank
            values = (0.5 * percent_rank(values, self.labels) + 0.5 * pixel_percent_rank(self.maps["gradcam"])).astype(
                np.float32
            )
            meta["passes"] += self.meta["gradcam"]["passes"]
            meta["backward"] += self.meta["gradcam"]["backward"]
        elif kind.startswith("+mix"):  # the engine's cam_blend (weight in the name) with within="gradcam"
            cam = self.maps["gradcam"]
            order = region_search.blend_orders(
                region_order(values, self.labels), region_means(cam, self.labels), int(kind[4:]) / 100
            )
            values = order_within_regions(region_search.order_map(order, self.labels), self.labels, cam)
            meta["passes"] += self.meta["gradcam"]["passes"]
            meta["backward"] += self.meta["gradcam"]["backward"]
        elif kind == "@reg":
            values = region_average(values, self.labels)
        self.maps[name] = values
        self.meta[name] = meta

    def curves(self, names: list[str], substrate: str, steps: int) -> dict[str, list]:
        """Raw curves of each map (and N_RANDOM random orderings) on ``substrate``, cached by order."""
        path = self.dir / f"curves-{substrate}-{steps}.json"
        saved = json.loads(path.read_text()) if path.is_file() else {}
        orders = {order_key(self.maps[n]): metrics.pixel_order(self.maps[n]) for n in names}
        height, width = self.labels.shape
        for i, order in enumerate(metrics.random_orders(height, width, N_RANDOM, seed=0)):
            orders[f"random{i}"] = order
        missing = [k for k in orders if k not in saved]
        if missing:
            raw = metrics.curves_for_orders(
                self.adapter, self.pixels, self.target, [orders[k] for k in missing], steps, substrate
            )
            for k, (deletion, insertion, full, empty) in zip(missing, raw):
                saved[k] = [deletion.tolist(), insertion.tolist(), full, empty]
            self.dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(saved))
        out = {n: saved[order_key(self.maps[n])] for n in names}
        out.update({k: saved[k] for k in orders if k.startswith("random")})
        return out


def aucs(deletion: list, insertion: list, full: float, empty: float) -> dict[str, float]:
    span = full - empty
    span = span if abs(span) > 1e-6 else 1e-6
    fractions = np.linspace(0.0, 1.0, len(deletion))
    d = (np.asarray(deletion) - empty) / span
    i = (np.asarray(insertion) - empty) / span
    area = lambda c: float(np.trapezoid(c, fractions))  # noqa: E731
    return {
        "ins": area(np.clip(i, 0, 1)),
        "del": area(np.clip(d, 0, 1)),
        "ins_u": area(i),
        "del_u": area(d),
    }


def map_names(searches: list[str], derived: list[str], engine: list[str]) -> list[str]:
    names = list(engine) + list(searches)
    for suffix in derived:
        if suffix not in DERIVED:  # a full name: "greedy+gc"
            names.append(suffix)
        elif suffix == "@reg":
            names += [f"{m}@reg" for m in engine]
        else:
            names += [f"{s}{suffix}" for s in searches]
    return names


def compute_photo(
    work: PhotoWork,
    searches: list[str],
    derived: list[str],
    engine: list[str],
    steps: dict,
    road_maps: list[str] | None,
) -> dict:
    engine_kwargs = {"gradcam": {}, "ig": {"steps": 32, "baseline": "black"}}
    for name in dict.fromkeys(["gradcam", *engine]):
        work.engine_map(name, **engine_kwargs.get(name, {}))
    for name in searches:
        work.search_map(name, SEARCHES[name])
    names = map_names(searches, derived, engine)
    for name in names:
        work.derived_map(name)
    work.save_maps()
    result: dict[str, Any] = {
        "image": work.row.image,
        "correct": work.top1 == work.row.imagenet_index,
        "substrates": {},
        "passes": {n: work.meta[n]["passes"] for n in names},
    }
    for substrate, count in steps.items():
        chosen = [n for n in names if substrate != "road" or road_maps is None or n in road_maps]
        raw = work.curves(chosen, substrate, count)
        full, empty = raw[chosen[0]][2], raw[chosen[0]][3]
        result["substrates"][substrate] = {
            "full": full,
            "empty": empty,
            "maps": {n: aucs(*raw[n]) for n in raw},
        }
    return result


# --- the table ----------------------------------------------------------------------------------


def ci_text(values: np.ndarray, signed: bool = True) -> str:
    index = np.random.default_rng(0).integers(0, len(values), (RESAMPLES, len(values)))
    low, high = bootstrap_ci(values, index) or (np.nan, np.nan)
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(values.mean())} [{f.format(low)}, {f.format(high)}]"


def table(results: list[dict], names: list[str], substrate: str, title: str) -> str:
    present = [r for r in results if substrate in r["substrates"]]
    names = [n for n in names if any(n in r["substrates"][substrate]["maps"] for r in present)]
    rows = [
        r
        for r in present
        if substrate in r["substrates"]
        and r["substrates"][substrate]["full"] - r["substrates"][substrate]["empty"] >= MIN_SPAN
        and all(n in r["substrates"][substrate]["maps"] for n in names)
    ]
    left_out = sum(
        1
        for r in results
        if substrate in r["substrates"]
        and r["substrates"][substrate]["full"] - r["substrates"][substrate]["empty"] < MIN_SPAN
    )
    if not rows:
        return f"\n{title}: no photos\n"
    get = lambda n, k: np.array([r["substrates"][substrate]["maps"][n][k] for r in rows])  # noqa: E731
    srg = {n: get(n, "ins") - get(n, "del") for n in names}
    random = np.mean([get(f"random{i}", "ins") - get(f"random{i}", "del") for i in range(N_RANDOM)], axis=0)
    lines = [
        f"\n{title}: {len(rows)} photos" + (f" ({left_out} ill-conditioned left out)" if left_out else ""),
        "",
        "| map | SRG clipped [95 % CI] | ins | del | SRG unclipped | − Grad-CAM [95 % CI] | higher than Grad-CAM | − greedy [95 % CI] | passes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        unclipped = (get(n, "ins_u") - get(n, "del_u")).mean()
        vs_gc = ci_text(srg[n] - srg["gradcam"]) if n != "gradcam" and "gradcam" in srg else "–"
        higher = f"{100 * np.mean(srg[n] > srg['gradcam']):.0f} %" if n != "gradcam" and "gradcam" in srg else "–"
        vs_greedy = ci_text(srg[n] - srg["greedy"]) if n != "greedy" and "greedy" in srg else "–"
        passes = np.mean([r["passes"][n] for r in rows])
        lines.append(
            f"| {n} | {ci_text(srg[n])} | {get(n, 'ins').mean():.3f} | {get(n, 'del').mean():.3f} | "
            f"{unclipped:+.3f} | {vs_gc} | {higher} | {vs_greedy} | {passes:.0f} |"
        )
    lines.append(f"| random pixels ({N_RANDOM}) | {ci_text(random)} | | | | | | | |")
    return "\n".join(lines) + "\n"


def parse_steps(text: str) -> dict[str, int]:
    return {name: int(count) for name, count in (part.split(":") for part in text.split(",") if part)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(DATA_ENV, DEFAULT_DATA)))
    parser.add_argument("--split", default="dev", help="dev, dev8, held, all or rows:START:STEP")
    parser.add_argument("--shard", default="0/1", help="i/k: this process takes every k-th photo from the i-th")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--searches", default=",".join(SEARCHES))
    parser.add_argument("--derived", default="+gc,@reg")
    parser.add_argument("--engine", default="gradcam", help="engine methods beside the searches (gradcam,ig)")
    parser.add_argument("--steps", default="black:50,blur:50,road:20")
    parser.add_argument("--regions", type=int, default=49)
    parser.add_argument("--table", action="store_true", help="print the tables of the photos computed so far")
    parser.add_argument("--maps", default=None, help="the maps to table (default: every map computed)")
    parser.add_argument("--road-maps", default=None, help="the maps whose ROAD curves are drawn (default: all)")
    parser.add_argument("--cache", default="transfer", help="folder under bench/.cache for this run's results")
    parser.add_argument("--caches", default="transfer,transfer-anchors", help="--table: the folders to merge")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    searches = [s for s in args.searches.split(",") if s]
    derived = [d for d in args.derived.split(",") if d]
    engine = [m for m in args.engine.split(",") if m]
    steps = parse_steps(args.steps)
    rows = split_rows(manifest_rows(args.data), args.split)[: args.limit]
    names = map_names(searches, derived, engine)
    if args.table:
        results = []
        for row in rows:  # one result per photo, the maps of every cache folder merged
            found = [
                json.loads(p.read_text())
                for p in (CACHE / c / Path(row.image).stem / "result.json" for c in args.caches.split(","))
                if p.is_file()
            ]
            if not found:
                continue
            merged = found[0]
            for other in found[1:]:
                for substrate, block in other["substrates"].items():
                    merged["substrates"].setdefault(substrate, block)["maps"].update(block["maps"])
                merged["passes"].update(other["passes"])
            results.append(merged)
        shown = args.maps.split(",") if args.maps else names
        print(f"# Region-search transfer, split {args.split}: {len(results)} of {len(rows)} photos computed")
        for substrate in steps:
            for group, keep in (("correct", True), ("wrong", False)):
                chosen = [r for r in results if r["correct"] == keep]
                print(
                    table(chosen, shown, substrate, f"## {substrate} ({steps[substrate]} steps), {group} predictions")
                )
        return

    index, count = (int(x) for x in args.shard.split("/"))
    adapter = load_model("bundled")
    mine = rows[index::count]
    print(f"{len(mine)} photos, load {load_average()}", flush=True)
    for number, row in enumerate(mine, 1):
        started = time.perf_counter()
        work = PhotoWork(adapter, args.data, row, args.regions, CACHE / args.cache)
        result = compute_photo(
            work, searches, derived, engine, steps, args.road_maps.split(",") if args.road_maps else None
        )
        path = work.dir / "result.json"
        old = json.loads(path.read_text()) if path.is_file() else None
        if old:  # keep maps computed by other runs (other variants)
            for substrate, block in old["substrates"].items():
                if substrate in result["substrates"]:
                    block["maps"].update(result["substrates"][substrate]["maps"])
                    result["substrates"][substrate]["maps"] = block["maps"]
                else:
                    result["substrates"][substrate] = block
            result["passes"] = {**old["passes"], **result["passes"]}
        path.write_text(json.dumps(result))
        black = result["substrates"].get("black", {}).get("maps", {})
        srgs = " ".join(f"{n} {black[n]['ins'] - black[n]['del']:+.2f}" for n in names if n in black)
        print(
            f"{number}/{len(mine)} {row.image} {'ok' if result['correct'] else 'WRONG'} "
            f"{time.perf_counter() - started:.0f}s load {load_average()} | black {srgs}",
            flush=True,
        )


if __name__ == "__main__":
    main()
