"""Speed of the default explain() and of each step, on this machine's CPU.

    python bench/speed.py                     # both models, each in its own process
    python bench/speed.py --model bundled     # or: --model clip-random

Models: ``bundled`` (EfficientNet-Lite0 + MiniLM) and ``clip-random``, a randomly initialised
CLIP of ViT-B/32 shape (bench/_models.py: the real model's cost, no download), both at 224 px.
Everything runs once untimed first (oneDNN builds its kernels on the first calls of each batch
shape), then timed. Model load is excluded. Columns:

- wall s / CPU s: elapsed and process CPU seconds (CPU s is less sensitive to other load);
- forward / backward: images through the model (not calls);
- in model: the share of wall time spent inside the model's forward (``prompt_scores``) and
  backward (autograd) calls; the rest is mask building, SLIC, numpy, Python;
- peak RSS: the process's peak resident memory so far (it only grows).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch

from _common import PHOTOS, ROOT, Clock, header, peak_rss_mb, photo_path
from explainers import api, metrics
from explainers.images import open_image
from explainers.methods import get_method
from explainers.models import load_model
from explainers.types import Target


class ModelTimer:
    """Accumulates wall seconds spent in the adapter's forward and in autograd backward calls."""

    def __init__(self, adapter) -> None:
        self.seconds = 0.0
        self._depth = 0
        forward = adapter.prompt_scores
        grad, backward = torch.autograd.grad, torch.Tensor.backward
        adapter.prompt_scores = self._wrap(forward)
        torch.autograd.grad = self._wrap(grad)
        torch.Tensor.backward = self._wrap(backward)

    def _wrap(self, fn):
        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self._depth -= 1
        return timed


def load(name: str):
    if name == "clip-random":
        from _models import random_clip_b32

        return random_clip_b32()
    return load_model(name)


def method_params(params: dict) -> dict:
    return {
        "gradcam": {},
        "ig": {"steps": params["ig_steps"], "baseline": params["ig_baseline"]},
        "region": {"n_regions": params["n_regions"], "regions": params["region_kind"],
                   "search": params["region_search"]},
    }


def row(label, clock, forward, backward, timer_seconds, extra=""):
    share = timer_seconds / clock.wall if clock.wall else 0.0
    print(f"| {label} | {clock.wall:.2f} | {clock.cpu:.2f} | {forward} | {backward} | {share:.0%} "
          f"| {peak_rss_mb():.0f} |{extra}", flush=True)


def run_model(name: str, photos: list[str], curve_steps: int | None) -> None:
    adapter = load(name)
    print(f"\n(peak RSS after loading {name}: {peak_rss_mb():.0f} MB)")
    params = api.validate_params({} if curve_steps is None else {"curve_steps": curve_steps})
    api.load_model = lambda _name: adapter  # explain() gets this adapter (load excluded)
    timer = ModelTimer(adapter)
    header(f"Speed: {adapter.name}, 224 px, defaults {params}")
    # Warm-up: every batch shape the defaults use, untimed.
    api.explain(photo_path(photos[0]), PHOTOS[photos[0]], **params)

    print("| step | wall s | CPU s | forward | backward | in model | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for photo in photos:
        target = Target(PHOTOS[photo])
        pixels = adapter.load_image(open_image(photo_path(photo)))
        maps = {}
        for method, kwargs in method_params(params).items():
            f0, b0, t0 = adapter.forward_passes, adapter.backward_passes, timer.seconds
            with Clock() as clock:
                m = get_method(method).explain(adapter, pixels, target, **kwargs)
            maps[method] = m.values
            extra = ""
            if method == "ig":
                extra = f" steps used {m.meta['steps']}, completeness error {m.meta['completeness_error']:.3f}"
            if method == "region":
                extra = f" {m.meta['n_regions']} regions, {m.meta['sets_evaluated']} sets"
            row(f"{photo}: {method}", clock, adapter.forward_passes - f0, adapter.backward_passes - b0,
                timer.seconds - t0, extra)
        f0, t0 = adapter.forward_passes, timer.seconds
        with Clock() as clock:
            metrics.faithfulness(adapter, pixels, target, maps, steps=params["curve_steps"],
                                 substrate=params["substrate"], n_random=params["n_random"], seed=params["seed"])
        row(f"{photo}: curves (3 maps + {params['n_random']} random, {params['curve_steps']} steps)", clock,
            adapter.forward_passes - f0, 0, timer.seconds - t0)
        f0, b0, t0 = adapter.forward_passes, adapter.backward_passes, timer.seconds
        with Clock() as clock:
            api.explain(photo_path(photo), PHOTOS[photo], **params)
        row(f"**{photo}: explain() end to end**", clock, adapter.forward_passes - f0,
            adapter.backward_passes - b0, timer.seconds - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["bundled", "clip-random"])
    parser.add_argument("--photos", default=",".join(PHOTOS))
    parser.add_argument("--curve-steps", type=int)
    args = parser.parse_args()
    if args.model is None:
        for model in ("bundled", "clip-random"):
            extra = ["--curve-steps", str(args.curve_steps)] if args.curve_steps else []
            subprocess.run([sys.executable, __file__, "--model", model, "--photos", args.photos, *extra],
                           check=True, cwd=ROOT)
        return
    run_model(args.model, args.photos.split(","), args.curve_steps)


if __name__ == "__main__":
    main()
