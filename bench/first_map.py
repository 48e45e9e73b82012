"""Results as they come: seconds from Run to each map and to the curves, through the app's run
runtime (``explainers.app_runtime.stream`` of the explain job: what the page receives), with the
model already loaded and warmed, as the app has it when it starts (``ModelLocks.preload``).

    python bench/first_map.py [--photos chelsea,coffee] [--model bundled] [--threads 2] [--cold]

Prints one row per photo: the seconds to each method's map (in the order they come) and to the
Result with its curves. The page draws each map when its event arrives (about 0.1 s more).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch
from _common import PHOTOS, header, load_average, photo_path

from explainers import api, app_runtime
from explainers.images import open_image
from explainers.methods import default_methods


async def timeline(photo: str, model: str) -> tuple[list[tuple[str, float]], float]:
    job = app_runtime.explain_job(
        open_image(photo_path(photo)), PHOTOS[photo], [], model, default_methods(), "cpu", False, {}
    )
    started, maps = time.perf_counter(), []
    async for event in app_runtime.stream(model, job, lambda *_, **__: None, app_runtime.ModelLocks()):
        if isinstance(event, app_runtime.MapReady):
            maps.append((event.method, time.perf_counter() - started))
    return maps, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", default="chelsea,coffee")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="no warm-up: the graphs compile in the first run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Loaded and warmed once, before any timing, as the app does when it starts (LOCKS.preload);
    # --cold skips the warm-up (the first photo then pays for compiling the graphs).
    adapter = api.resolve_model(args.model)
    if not args.cold:
        adapter.warm_up()
    header(f"Seconds from Run to each map and to the curves ({args.model}, default methods and settings)")
    names = default_methods()
    print("| photo | " + " | ".join(names) + " | curves (Result) |")
    print("|---" * (len(names) + 2) + "|")
    for photo in args.photos.split(","):
        maps, total = asyncio.run(timeline(photo, args.model))
        seen = dict(maps)
        cells = [f"{seen[n]:.2f}" if n in seen else "–" for n in names]
        print(f"| {photo} | " + " | ".join(cells) + f" | {total:.2f} |", flush=True)
    print(f"\nload average {load_average()}")


if __name__ == "__main__":
    main()
