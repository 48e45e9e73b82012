"""Region search: the fast search against plain greedy (SMDL's procedure) and lazy greedy.

    python bench/region_search.py [--regions slic|grid] [--n 49] [--searches greedy,greedy-bounded,lazy,fast]

Per photo and search: forward passes, seconds, insertion and deletion AUC (50 curve steps,
black substrate, the one protocol of explainers.metrics), and the objective along the order
(mean F over its prefixes, what every search maximises; F on the raw normalised score).
``greedy-bounded`` is plain greedy on F with the normalised scores clipped to [0, 1] (as
SMDL's probabilities are): an equally valid reference, there to show how far greedy's own
AUCs move under a change of the score's scale. Greedy orders are cached in bench/.cache (they
take a minute per photo); delete the folder to recompute them.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from _common import CACHE, PHOTOS, Clock, header, photo_path

from explainers import metrics
from explainers.images import open_image
from explainers.methods import region_search, run_method
from explainers.models import load_model
from explainers.models.base import Metered
from explainers.regions import label_masks
from explainers.types import Target


def bounded_greedy(adapter, pixels, target, labels):
    """Plain greedy on F with the normalised scores clipped to [0, 1]."""
    meter = Metered(adapter)
    evaluate, _, _ = region_search.smdl_objective(meter, pixels, target, label_masks(labels), bounded=True)
    order, _, _ = region_search.greedy_order(int(labels.max()) + 1, evaluate)
    return order, meter.forward_passes


def run_search(adapter, pixels, target, n, kind, labels, search):
    cache = CACHE / f"{search}-{adapter.name}-{kind}-{n}-{target.prompt.replace(' ', '_')}.json"
    if search.startswith("greedy") and cache.is_file():
        saved = json.loads(cache.read_text())
        return region_search.order_map(saved["order"], labels), saved
    with Clock() as clock:
        if search == "greedy-bounded":
            order, forward = bounded_greedy(adapter, pixels, target, labels)
            info = {"order": order, "forward": forward, "backward": 0}
        else:
            m = run_method("region", adapter, pixels, target, n_regions=n, regions=kind, search=search)
            info = {"order": m.meta["order"], "forward": m.forward_passes, "backward": m.backward_passes}
    info.update(seconds=clock.wall, cpu=clock.cpu)
    if search.startswith("greedy"):
        CACHE.mkdir(exist_ok=True)
        cache.write_text(json.dumps(info))
    return region_search.order_map(info["order"], labels), info


def path_objective(adapter, pixels, target, labels, order):
    """Mean of F (raw normalised score) over the order's prefixes: what greedy maximises step by step."""
    evaluate, _, _ = region_search.smdl_objective(adapter, pixels, target, label_masks(labels))
    return float(np.mean(evaluate(region_search.prefix_sets(order))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--regions", default="slic")
    parser.add_argument("--n", type=int, default=49)
    parser.add_argument("--searches", default="greedy,greedy-bounded,lazy,fast")
    parser.add_argument("--photos", default=",".join(PHOTOS))
    parser.add_argument("--curve-steps", type=int, default=50)
    args = parser.parse_args()
    adapter = load_model(args.model)
    searches = args.searches.split(",")
    header(f"Region search, {args.model}, {args.n} {args.regions} regions, {args.curve_steps} curve steps")
    print(
        "| photo | search | forward | backward | seconds | CPU s | insertion AUC | deletion AUC "
        "| ins / greedy | del - greedy | mean F on the path |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for photo in args.photos.split(","):
        target = Target(PHOTOS[photo])
        pixels = adapter.load_image(open_image(photo_path(photo)))
        with torch.no_grad():
            adapter.score_many(torch.cat([pixels] * 4), target)  # warm-up
        labels = region_search.region_labels(pixels, args.n, args.regions)
        maps, infos = {}, {}
        for search in searches:
            maps[search], infos[search] = run_search(adapter, pixels, target, args.n, args.regions, labels, search)
        curves, _ = metrics.faithfulness(adapter, pixels, target, maps, steps=args.curve_steps)
        base = curves.get("greedy")
        for search in searches:
            deletion, insertion = curves[search]
            i = infos[search]
            rel = (
                f"{insertion.auc / base.insertion.auc:.3f} | {deletion.auc - base.deletion.auc:+.3f}"
                if base
                else "- | -"
            )
            objective = path_objective(adapter, pixels, target, labels, i["order"])
            print(
                f"| {photo} | {search} | {i['forward']} | {i['backward']} | {i['seconds']:.1f} | {i['cpu']:.1f} "
                f"| {insertion.auc:.3f} | {deletion.auc:.3f} | {rel} | {objective:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\n({time.perf_counter() - started:.0f} s in all)")
