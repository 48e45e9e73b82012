"""Why smooth maps lose to random pixels on deletion: Grad-CAM at other layers, other random
references and the blur substrate (bundled model, the one protocol of explainers.metrics).

    python bench/deletion_references.py [--steps 20]

Prints two markdown tables of insertion / deletion AUCs:
1. Grad-CAM read at the last feature map (the default) and at four earlier blocks, next to the
   random pixel reference;
2. every method and four random references (single pixels, 32 px blocks, smooth random fields
   bilinearly upsampled from 7x7 and 4x4), on the black and the blur substrate.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from _common import PHOTOS, photo_path

from explainers import metrics
from explainers.images import open_image
from explainers.methods import gradcam, integrated_gradients, region_search
from explainers.models import load_model
from explainers.types import Target

LAYERS = {
    "head 7x7 (default)": None,
    "block 14, 7x7": 14,
    "block 10, 14x14": 10,
    "block 7, 14x14": 7,
    "block 4, 28x28": 4,
}


def smooth_random_orders(height, width, count, grid, seed=99):
    """Orders from random fields on a ``grid`` x ``grid`` lattice, bilinearly upsampled."""
    orders = []
    for i in range(count):
        field = torch.from_numpy(np.random.default_rng([seed, i]).random((1, 1, grid, grid)).astype(np.float32))
        up = F.interpolate(field, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        orders.append(metrics.pixel_order(up.numpy()))
    return orders


def aucs(raw, steps):
    fractions = np.linspace(0, 1, steps + 1)
    deletion, insertion, full, empty = raw
    return (
        np.trapezoid(metrics._normalise(insertion, full, empty), fractions),
        np.trapezoid(metrics._normalise(deletion, full, empty), fractions),
    )


def mean_aucs(raws, steps):
    pairs = [aucs(r, steps) for r in raws]
    return f"{np.mean([p[0] for p in pairs]):.3f} / {np.mean([p[1] for p in pairs]):.3f}"


def photo_inputs(adapter, photo):
    """(target, pixels) for one assets photo and its prompt."""
    return Target(PHOTOS[photo]), adapter.load_image(open_image(photo_path(photo)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--photos", default="chelsea,coffee,grace_hopper,rocket")
    args = parser.parse_args()
    adapter = load_model("bundled")
    photos = args.photos.split(",")
    print(f"\n### Grad-CAM layer (bundled, black substrate, {args.steps} steps; insertion / deletion AUC)\n")
    print("| photo | " + " | ".join(LAYERS) + " | random pixels |")
    print("|---" * (len(LAYERS) + 2) + "|")
    for photo in photos:
        target, pixels = photo_inputs(adapter, photo)
        orders = []
        for block in LAYERS.values():
            # Read the block's output instead of the adapter's layer: a setting of an explicit
            # variant (the cached adapter is left as it is), not a subclass.
            layer = adapter if block is None else adapter.variant(cam_layer_name=f"blocks.{block}")
            values = gradcam.explain(layer, pixels, target).values
            orders.append(metrics.pixel_order(values))
        orders += metrics.random_orders(*pixels.shape[2:], 3, 0)
        raw = metrics.curves_for_orders(adapter, pixels, target, orders, args.steps)
        cells = [mean_aucs([r], args.steps) for r in raw[: len(LAYERS)]] + [mean_aucs(raw[len(LAYERS) :], args.steps)]
        print(f"| {photo} | " + " | ".join(cells) + " |", flush=True)

    references = {
        "random pixels": lambda h, w: metrics.random_orders(h, w, 3, 0),
        "random 32 px blocks": lambda h, w: metrics.random_orders(h, w, 3, 0, block=32),
        "random smooth 7x7 field": lambda h, w: smooth_random_orders(h, w, 3, 7),
        "random smooth 4x4 field": lambda h, w: smooth_random_orders(h, w, 3, 4),
    }
    print(f"\n### Random references and substrates ({args.steps} steps; insertion / deletion AUC)\n")
    print("| photo, substrate | Grad-CAM | IG | region | " + " | ".join(references) + " |")
    print("|---" * (len(references) + 4) + "|")
    for photo in photos:
        target, pixels = photo_inputs(adapter, photo)
        maps = [
            gradcam.explain(adapter, pixels, target).values,
            integrated_gradients.explain(adapter, pixels, target).values,
            region_search.explain(adapter, pixels, target).values,
        ]
        orders = [metrics.pixel_order(v) for v in maps]
        for make in references.values():
            orders += make(*pixels.shape[2:])
        for substrate in ("black", "blur"):
            raw = metrics.curves_for_orders(adapter, pixels, target, orders, args.steps, substrate)
            cells = [mean_aucs([r], args.steps) for r in raw[:3]]
            cells += [mean_aucs(raw[3 + 3 * i : 6 + 3 * i], args.steps) for i in range(len(references))]
            print(f"| {photo}, {substrate} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
