"""Region search: the fast search against plain greedy (SMDL's procedure) and lazy greedy.

    python bench/region_search.py [--regions slic|grid] [--n 49] [--searches greedy,lazy,fast]

Per photo and search: forward passes, seconds, insertion and deletion AUC (50 curve steps,
black substrate, the one protocol of explainers.metrics). Greedy's orders are cached in
bench/.cache (they take a minute per photo); delete the folder to recompute them.
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
from explainers.methods import region_search
from explainers.models import load_model
from explainers.regions import make_regions
from explainers.types import Target


def run_search(adapter, pixels, target, n, kind, search):
    cache = CACHE / f"{search}-{adapter.name}-{kind}-{n}-{target.prompt.replace(' ', '_')}.json"
    if search == "greedy" and cache.is_file():
        saved = json.loads(cache.read_text())
        image = (pixels[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        labels = make_regions(image, n, kind)
        rank = np.empty(len(saved["order"]), np.float32)
        rank[saved["order"]] = 1.0 - np.arange(len(rank), dtype=np.float32) / len(rank)
        return rank[labels], saved
    with Clock() as clock:
        m = region_search.explain(adapter, pixels, target, n_regions=n, regions=kind, search=search)
    info = {"order": m.meta["order"], "forward": m.forward_passes, "backward": m.backward_passes,
            "seconds": clock.wall, "cpu": clock.cpu}
    if search == "greedy":
        CACHE.mkdir(exist_ok=True)
        cache.write_text(json.dumps(info))
    return m.values, info


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--regions", default="slic")
    parser.add_argument("--n", type=int, default=49)
    parser.add_argument("--searches", default="greedy,lazy,fast")
    parser.add_argument("--photos", default=",".join(PHOTOS))
    parser.add_argument("--curve-steps", type=int, default=50)
    args = parser.parse_args()
    adapter = load_model(args.model)
    searches = args.searches.split(",")
    header(f"Region search, {args.model}, {args.n} {args.regions} regions, {args.curve_steps} curve steps")
    print("| photo | search | forward | backward | seconds | CPU s | insertion AUC | deletion AUC "
          "| ins / greedy | del - greedy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for photo in args.photos.split(","):
        target = Target(PHOTOS[photo])
        pixels = adapter.load_image(open_image(photo_path(photo)))
        with torch.no_grad():
            adapter.score_many(torch.cat([pixels] * 4), target)  # warm-up
        maps, infos = {}, {}
        for search in searches:
            maps[search], infos[search] = run_search(adapter, pixels, target, args.n, args.regions, search)
        curves, _ = metrics.faithfulness(adapter, pixels, target, maps, steps=args.curve_steps)
        base = curves.get("greedy")
        for search in searches:
            deletion, insertion = curves[search]
            i = infos[search]
            rel = (f"{insertion.auc / base[1].auc:.3f} | {deletion.auc - base[0].auc:+.3f}" if base else "- | -")
            print(f"| {photo} | {search} | {i['forward']} | {i['backward']} | {i['seconds']:.1f} | {i['cpu']:.1f} "
                  f"| {insertion.auc:.3f} | {deletion.auc:.3f} | {rel} |", flush=True)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\n({time.perf_counter() - started:.0f} s in all)")
