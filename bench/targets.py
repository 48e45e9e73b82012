"""The speed targets (issue 20) as ratios to one yardstick, measured in one process, interleaved:
torch eager no-grad forward passes of the same network in batches of 8 (bench/_reference.py; the
bundled model as the project builds it: folded batch norms, channels_last).

    python bench/targets.py                      # bundled, a user's run's RSS and CLIP, 3 photos, 2 rounds
    python bench/targets.py --parts bundled --rounds 3
    python bench/targets.py --parts clip --photos chelsea

Each part runs in a fresh process (its peak RSS is its own). Every timed item is measured with
the compiled runtime (models/runtime.py) and, interleaved, with it off (SALIENCY_LAB_RUNTIME=torch:
every forward pass in torch eager, as before this work), each between two measurements of the
yardstick, so a ratio does not depend on how busy the shared machine was at that moment. Printed:

- explain(): the default methods and parameters end to end (model load excluded), in seconds and
  in reference-image equivalents (its seconds / the yardstick's seconds per image);
- forward-only scoring: the adapter's ``score_many`` on 64 photos' worth of images, as a
  multiple of the yardstick's speed;
- RISE with 1000 masks (the method alone, its 1000 forward passes), in seconds and equivalents;
- the peak RSS: of the bench's own process (both runtimes' memory at once), and of a fresh
  process that explains the photos as a user's run does (``--parts rss``: the runtime on only,
  every graph compiled in it), which is the target's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from _common import PHOTOS, ROOT, load_average, peak_rss_mb, photo_path
from _reference import reference_images, reference_seconds_per_image

from explainers import api
from explainers.models import runtime
from explainers.types import Target

TARGETS = {
    "explain_equivalents": 250,  # bundled: at most
    "scoring_speedup": 2.5,  # at least
    "clip_explain_seconds": 12.0,  # at most
    "rise_seconds": 8.0,  # at most
    "peak_rss_mb": 2048,  # at most
}


class Runtime:
    """``with Runtime(on):`` the compiled runtime on or off for the block."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> None:
        self.before = os.environ.get(runtime.RUNTIME_ENV)
        os.environ[runtime.RUNTIME_ENV] = "openvino" if self.on else "torch"

    def __exit__(self, *_: object) -> None:
        if self.before is None:
            os.environ.pop(runtime.RUNTIME_ENV, None)
        else:
            os.environ[runtime.RUNTIME_ENV] = self.before


def timed(function) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def against_reference(adapter, function, images: torch.Tensor) -> dict:
    """``function`` timed between two yardstick measurements: seconds and seconds per yardstick image."""
    before = reference_seconds_per_image(adapter, images)
    wall, cpu = timed(function)
    after = reference_seconds_per_image(adapter, images)
    reference = (before + after) / 2
    return {"seconds": wall, "cpu": cpu, "reference_ms": 1000 * reference, "equivalents": wall / reference}


def load(part: str):
    if part == "clip":
        from explainers.testing import random_clip_b32

        return random_clip_b32()
    from explainers.models import load_model

    return load_model("bundled")


def user_run_rss(photos: list[str]) -> dict:
    """Peak RSS of a process that explains the photos with the defaults, the runtime on."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    adapter = load("bundled")
    params = api.validate_params({})
    for photo in photos:
        api.explain(photo_path(photo), PHOTOS[photo], model=adapter, **params)
    return {"part": "rss", "peak_rss_mb": peak_rss_mb(), "photos": photos, "load_after": load_average()}


def run_part(part: str, photos: list[str], rounds: int) -> dict:
    if part == "rss":
        return user_run_rss(photos)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    adapter = load(part)
    params = api.validate_params({})
    images = reference_images(adapter, 16)
    out: dict = {"part": part, "load_before": load_average(), "rows": []}
    for on in (True, False):  # warm-up: kernels for every batch shape, the runtime compiled
        with Runtime(on):
            api.explain(photo_path(photos[0]), PHOTOS[photos[0]], model=adapter, **params)
    for round_ in range(rounds):
        for photo in photos:
            for on in (True, False) if round_ % 2 == 0 else (False, True):
                with Runtime(on):
                    figures = against_reference(
                        adapter,
                        lambda: api.explain(photo_path(photo), PHOTOS[photo], model=adapter, **params),
                        images,
                    )
                out["rows"].append({"item": "explain", "photo": photo, "runtime": on, **figures})
            if round_ == 0:  # where explain()'s time goes, with the runtime on
                prepared = api.prepare(photo_path(photo), Target(PHOTOS[photo]), adapter)
                maps = {}
                for method in api.DEFAULT_METHODS:

                    def one(method: str = method) -> None:
                        maps[method] = api.run_methods(prepared, [method], params)[method].values

                    figures = against_reference(adapter, one, images)
                    out["rows"].append({"item": f"  step {method}", "photo": photo, "runtime": True, **figures})
                figures = against_reference(adapter, lambda: api.evaluate_maps(prepared, maps, params), images)
                out["rows"].append({"item": "  step curves", "photo": photo, "runtime": True, **figures})
        scored = reference_images(adapter, 64, seed=round_ + 1)
        for on in (True, False):
            with Runtime(on), torch.no_grad():
                figures = against_reference(adapter, lambda: adapter.score_many(scored, Target("a cat")), images)
            figures["speedup"] = 1.0 / (figures["seconds"] / len(scored) / (figures["reference_ms"] / 1000))
            out["rows"].append({"item": "scoring", "runtime": on, **figures})
        if part == "bundled":
            prepared = api.prepare(photo_path("chelsea"), Target(PHOTOS["chelsea"]), adapter)
            for on in (True, False):
                with Runtime(on):
                    figures = against_reference(
                        adapter, lambda: api.run_methods(prepared, ["rise"], {**params, "rise_masks": 1000}), images
                    )
                out["rows"].append({"item": "rise", "runtime": on, **figures})
    out["peak_rss_mb"] = peak_rss_mb()
    out["load_after"] = load_average()
    out["threads"] = torch.get_num_threads()
    return out


def report(result: dict) -> None:
    part = result["part"]
    if part == "rss":
        print(
            f"\n### rss: a fresh process explaining {', '.join(result['photos'])} with the defaults (runtime on): "
            f"peak RSS {result['peak_rss_mb']:.0f} MB (target <= {TARGETS['peak_rss_mb']}); load {result['load_after']}"
        )
        return
    print(
        f"\n### {part}: {result['threads']} torch threads, load average {result['load_before']} before, "
        f"{result['load_after']} after; peak RSS {result['peak_rss_mb']:.0f} MB\n"
    )
    print(
        "| item | runtime | seconds (median) | yardstick ms/image | reference-image equivalents | x yardstick speed |"
    )
    print("|---|---|---|---|---|---|")
    order = ["explain", *(f"  step {m}" for m in api.DEFAULT_METHODS), "  step curves", "scoring", "rise"]
    keys = sorted(
        {(r["item"], r.get("photo", ""), r["runtime"]) for r in result["rows"]},
        key=lambda k: (k[1] == "", k[1], order.index(k[0]) if k[0] in order else 99, not k[2]),
    )
    for item, photo, on in keys:
        rows = [r for r in result["rows"] if (r["item"], r.get("photo", ""), r["runtime"]) == (item, photo, on)]
        seconds = statistics.median(r["seconds"] for r in rows)
        reference = statistics.median(r["reference_ms"] for r in rows)
        equivalents = statistics.median(r["equivalents"] for r in rows)
        speed = f"{statistics.median(r['speedup'] for r in rows):.2f}" if item == "scoring" else ""
        label = f"{item} {photo}".strip()
        print(
            f"| {label} | {'OpenVINO' if on else 'torch (off)'} | {seconds:.2f} | {reference:.1f} "
            f"| {equivalents:.0f} | {speed} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="bundled,rss,clip")
    parser.add_argument("--photos", default="chelsea,coffee,rocket")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    photos = args.photos.split(",")
    if args.one:
        print("RESULT " + json.dumps(run_part(args.one, photos, args.rounds)), flush=True)
        return
    print(f"Targets: {json.dumps(TARGETS)}; torch {torch.__version__}; {os.cpu_count()} cores")
    for part in args.parts.split(","):
        child = subprocess.run(
            [sys.executable, __file__, "--one", part, "--photos", args.photos, "--rounds", str(args.rounds)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode or not lines:
            print(f"{part} failed: {(child.stderr.strip().splitlines() or ['?'])[-1][:300]}")
            continue
        report(json.loads(lines[-1][len("RESULT ") :]))


if __name__ == "__main__":
    main()
