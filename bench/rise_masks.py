"""RISE's mask budget, measured like IG's steps: how steady the map is and how faithful, by masks.

    python bench/rise_masks.py [--masks 125,250,500,1000,2000] [--steps 20]

Per assets photo (bundled model) and mask count: forward passes, seconds, the split-half
correlation (the map of the even masks against the odd ones; Spearman-Brown's 2r / (1 + r)
estimates the full map's reliability), the correlation with the map of the largest budget, and
SRG with insertion / deletion AUC (black substrate, ``--steps`` curve steps, 3 random orderings).
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import PHOTOS, Clock, header, photo_path

from explainers import api
from explainers.models import load_model
from explainers.types import Target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--masks", default="125,250,500,1000,2000")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--photos", default=",".join(PHOTOS))
    args = parser.parse_args()
    budgets = sorted(int(m) for m in args.masks.split(","))
    adapter = load_model("bundled")
    params = api.validate_params({"curve_steps": args.steps})
    header(f"RISE masks, bundled, {args.steps} curve steps, black substrate")
    print(
        "| photo | masks | forward | seconds | split-half r | full-map reliability | r with largest | SRG | ins / del |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    summary: dict[int, list] = {m: [] for m in budgets}
    for photo in args.photos.split(","):
        prepared = api.prepare(photo_path(photo), Target(PHOTOS[photo]), adapter)
        maps, rows = {}, []
        for masks in budgets:
            with Clock() as clock:
                m = api.run_methods(prepared, ["rise"], {**params, "rise_masks": masks})["rise"]
            maps[masks] = m
            rows.append((masks, m, clock.wall))
        curves, _ = api.evaluate_maps(prepared, {str(k): v.values for k, v in maps.items()}, params)
        largest = maps[budgets[-1]].values.ravel()
        for masks, m, seconds in rows:
            r = m.meta["split_half_r"]
            with_largest = float(np.corrcoef(m.values.ravel(), largest)[0, 1])
            c = curves[str(masks)]
            summary[masks].append((r, c.srg))
            print(
                f"| {photo} | {masks} | {m.forward_passes} | {seconds:.1f} | {r:.3f} | {2 * r / (1 + r):.3f} "
                f"| {with_largest:.3f} | {c.srg:.3f} | {c.insertion.auc:.3f} / {c.deletion.auc:.3f} |",
                flush=True,
            )
    print("\n| masks | mean split-half r | mean SRG |")
    print("|---|---|---|")
    for masks, values in summary.items():
        r, srg = np.mean(values, axis=0)
        print(f"| {masks} | {r:.3f} | {srg:.3f} |")


if __name__ == "__main__":
    main()
