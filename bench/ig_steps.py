"""Integrated gradients on the bundled model: completeness error and cost by step budget, and
whether the map beats the random reference on the curves.

    python bench/ig_steps.py [INITIAL_STEPS ...]

For each photo and initial step count: the steps the nested-trapezoid refinement ended at,
the relative completeness error |sum(attr) - (s(x) - s(x'))| / |s(x) - s(x')|, seconds,
backward passes, and insertion/deletion AUC (20 curve steps, black substrate) of the map
(|channel sum|) and of the signed channel sum, next to the random reference.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from _common import PHOTOS, ROOT  # also puts the project on sys.path

from explainers import metrics
from explainers.images import open_image
from explainers.methods import integrated_gradients as ig
from explainers.methods import run_method
from explainers.models import load_model
from explainers.types import Target


def main() -> None:
    adapter = load_model("bundled")
    initial = [int(s) for s in (sys.argv[1:] or ["32"])]
    print(
        "| photo | initial | max | steps used | completeness error | seconds | backward | "
        "ins/del AUC |map| | ins/del AUC signed | ins/del random |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for photo, prompt in PHOTOS.items():
        pixels = adapter.load_image(open_image(ROOT / "assets" / f"{photo}.jpg"))
        target = Target(prompt)
        for steps in initial:
            for max_steps in (steps, ig.DEFAULT_MAX_STEPS, 256):
                if max_steps < steps:
                    continue
                started = time.perf_counter()
                m = run_method("ig", adapter, pixels, target, steps=steps, max_steps=max_steps)
                seconds = time.perf_counter() - started
                signed = _signed(adapter, pixels, target, m.meta["steps"])
                curves, ref = metrics.faithfulness(
                    adapter, pixels, target, {"map": m.values, "signed": signed}, steps=20, n_random=3
                )
                print(
                    f"| {photo} | {steps} | {max_steps} | {m.meta['steps']} | {m.meta['completeness_error']:.4f} "
                    f"| {seconds:.2f} | {m.backward_passes} | {curves['map'].insertion.auc:.3f}/{curves['map'].deletion.auc:.3f} "
                    f"| {curves['signed'].insertion.auc:.3f}/{curves['signed'].deletion.auc:.3f} "
                    f"| {ref.insertion.auc:.3f}/{ref.deletion.auc:.3f} |",
                    flush=True,
                )


def _signed(adapter, pixels, target, steps):
    """The signed channel sum at a fixed step count (same path and rule as the method)."""
    import torch

    u = np.arange(1, steps + 1) / steps
    weights = np.full(steps, 1.0 / steps)
    weights[-1] /= 2
    total = torch.zeros_like(pixels)
    for start in range(0, steps, adapter.max_batch):
        chunk = torch.from_numpy(u[start : start + adapter.max_batch]).float().view(-1, 1, 1, 1)
        w = torch.from_numpy(weights[start : start + adapter.max_batch]).float().view(-1, 1, 1, 1)
        x = (chunk**2 * pixels).requires_grad_(True)
        (g,) = torch.autograd.grad(adapter.score(x, target).sum(), x)
        total += (w * 2 * chunk * g).sum(0, keepdim=True)
    return (pixels * total).sum(1)[0].numpy()


if __name__ == "__main__":
    main()
