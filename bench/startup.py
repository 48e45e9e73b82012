"""Start-up of a new process, as the app, a CLI call or an evaluate worker pays it: importing the
engine, loading the bundled model (its class names' embeddings computed, or read from the disk
cache), warming it up (the forward graph and integrated gradients' score-and-gradient graph
compiled, or imported from the disk cache: models/runtime.py), then a first IG map on chelsea.

    python bench/startup.py                       # 3 rounds on an empty cache, then 3 on the warm one
    python bench/startup.py --cache warm --rounds 5

Each round is a fresh Python process with its own ``SALIENCY_LAB_CACHE``: "empty" is a new folder
each round (a new machine), "warm" the folder a first, untimed start filled (every later start).
Prints one row per round and the medians; seconds are wall time.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before torch: the import's cost is part of a start

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

from _common import PHOTOS, ROOT, header, load_average, photo_path  # noqa: E402

STAGES = ("import", "load", "warm_up", "first_ig")


def one(threads: int, steps: int) -> dict:
    """This process's start (called in a child process): seconds per stage, where the graphs came from."""
    import torch

    from explainers import api
    from explainers.methods import integrated_gradients

    torch.set_num_threads(threads)
    marks = {"import": time.perf_counter() - STARTED}
    clock = time.perf_counter()
    adapter = api.resolve_model("bundled", "cpu")
    marks["load"] = time.perf_counter() - clock
    clock = time.perf_counter()
    adapter.warm_up()
    marks["warm_up"] = time.perf_counter() - clock
    request = api.validate(PHOTOS["chelsea"], None, ("ig",), model=adapter)
    prepared = api.prepare(api.open_image(str(photo_path("chelsea"))), request.target, adapter, request.options)
    clock = time.perf_counter()
    integrated_gradients.explain(prepared.adapter, prepared.pixels, prepared.target, steps=steps, max_steps=steps)
    marks["first_ig"] = time.perf_counter() - clock
    runtime = adapter._runtime
    marks["sources"] = f"forward {runtime.source}, gradient {getattr(runtime, 'vjp_source', 'not recorded')}"
    return marks


def run_child(cache: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "SALIENCY_LAB_CACHE": cache, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    command = [sys.executable, __file__, "--one", "--threads", str(args.threads), "--steps", str(args.steps)]
    out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", choices=("empty", "warm", "both"), default="both")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="IG steps of the first map")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: one start
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.threads, args.steps)))
        return
    header(f"Start-up of a new process (bundled model, {args.threads} threads)")
    print("| cache | round | import s | load s | warm_up s | first IG s | graphs from |")
    print("|---|---|---|---|---|---|---|")
    kinds = ("empty", "warm") if args.cache == "both" else (args.cache,)
    with tempfile.TemporaryDirectory() as scratch:
        warm = os.path.join(scratch, "warm")
        if "warm" in kinds:
            run_child(warm, args)  # fills the cache; not timed
        for kind in kinds:
            rows = []
            for r in range(args.rounds):
                cache = warm if kind == "warm" else os.path.join(scratch, f"empty{r}")
                marks = run_child(cache, args)
                rows.append(marks)
                cells = " | ".join(f"{marks[s]:.2f}" for s in STAGES)
                print(f"| {kind} | {r + 1} | {cells} | {marks['sources']} |", flush=True)
            medians = " | ".join(f"**{statistics.median(m[s] for m in rows):.2f}**" for s in STAGES)
            print(f"| {kind} | median | {medians} | |", flush=True)
    print(f"\nload average {load_average()}")


if __name__ == "__main__":
    main()
