"""Speed of the default explain() and of each step, on this machine's CPU.

    python bench/speed.py                     # both models, each in its own process
    python bench/speed.py --model bundled     # or: --model clip-random

Models: ``bundled`` (EfficientNet-Lite0 + MiniLM) and ``clip-random``, a randomly initialised
CLIP of ViT-B/32 shape (explainers.testing.random_clip_b32: the real model's cost, no download), both at 224 px.
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

from explainers import api
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
        from explainers.testing import random_clip_b32

        return random_clip_b32()
    return load_model(name)


def row(label, clock, forward, backward, timer_seconds, extra=""):
    share = timer_seconds / clock.wall if clock.wall else 0.0
    print(
        f"| {label} | {clock.wall:.2f} | {clock.cpu:.2f} | {forward} | {backward} | {share:.0%} "
        f"| {peak_rss_mb():.0f} |{extra}",
        flush=True,
    )


def run_model(name: str, photos: list[str], methods: list[str], curve_steps: int | None) -> None:
    adapter = load(name)
    print(f"\n(peak RSS after loading {name}: {peak_rss_mb():.0f} MB)")
    params = api.validate_params({} if curve_steps is None else {"curve_steps": curve_steps})
    timer = ModelTimer(adapter)
    header(f"Speed: {adapter.name}, 224 px, methods {','.join(methods)}, defaults {params}")
    # Warm-up: every batch shape the defaults use, untimed.
    api.explain(photo_path(photos[0]), PHOTOS[photos[0]], model=adapter, methods=methods, **params)

    print("| step | wall s | CPU s | forward | backward | in model | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for photo in photos:
        prepared = api.prepare(photo_path(photo), Target(PHOTOS[photo]), adapter)
        maps = {}
        for method in methods:
            t0 = timer.seconds
            with Clock() as clock:
                m = api.run_methods(prepared, [method], params)[method]
            maps[method] = m.values
            extra = ""
            if method == "ig":
                extra = f" steps used {m.meta['steps']}, completeness error {m.meta['completeness_error']:.3f}"
            if method == "region":
                extra = f" {m.meta['n_regions']} regions, {m.meta['sets_evaluated']} sets"
            if method == "rise":
                extra = f" split-half r {m.meta['split_half_r']:.3f}"
            row(f"{photo}: {method}", clock, m.forward_passes, m.backward_passes, timer.seconds - t0, extra)
        t0 = timer.seconds
        with Clock() as clock:
            curves, reference = api.evaluate_maps(prepared, maps, params)
        passes = sum(c.deletion.forward_passes + c.insertion.forward_passes for c in curves.values())
        passes += reference.deletion.forward_passes + reference.insertion.forward_passes
        row(
            f"{photo}: curves ({len(maps)} maps + {params['n_random']} random, {params['curve_steps']} steps)",
            clock,
            f"~{passes}",
            0,
            timer.seconds - t0,
        )
        t0 = timer.seconds
        with Clock() as clock:
            result = api.explain(photo_path(photo), PHOTOS[photo], model=adapter, methods=methods, **params)
        forward = sum(m.saliency.forward_passes for m in result.methods.values())
        backward = sum(m.saliency.backward_passes for m in result.methods.values())
        row(f"**{photo}: explain() end to end**", clock, f"{forward} + curves", backward, timer.seconds - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["bundled", "clip-random"])
    parser.add_argument("--photos", default=",".join(PHOTOS))
    parser.add_argument("--methods", default=",".join(api.DEFAULT_METHODS))
    parser.add_argument("--curve-steps", type=int)
    args = parser.parse_args()
    if args.model is None:
        for model in ("bundled", "clip-random"):
            extra = ["--curve-steps", str(args.curve_steps)] if args.curve_steps else []
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--model",
                    model,
                    "--photos",
                    args.photos,
                    "--methods",
                    args.methods,
                    *extra,
                ],
                check=True,
                cwd=ROOT,
            )
        return
    run_model(args.model, args.photos.split(","), args.methods.split(","), args.curve_steps)


if __name__ == "__main__":
    main()
