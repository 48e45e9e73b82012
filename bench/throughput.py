"""Data-set throughput: images per minute of ``explainers.evaluate`` with 1 worker (1 and all
threads), 2 worker processes, and a local Ray with 2 actors, on the first photos of the ImageNet
samples (measurement only: read from ../shared/data, never copied).

    python bench/throughput.py                       # 10 photos, 10 curve steps, the default methods
    python bench/throughput.py --photos 20 --steps 20 --modes 2x1,ray2x1

Each mode runs in a fresh Python process (so each pays its own imports, model loads and Ray
start-up, as a user's command does) into a fresh folder. Printed per mode: wall seconds of the
evaluate() call, images per minute end to end, the steady rate between the first and the last
finished image (start-up excluded), when the first image finished, the workers' CPU seconds per
image (model load included; on a shared machine the figure that measures the work), and each
worker's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, header, imagenet_samples, load_average

MANIFEST = imagenet_samples() / "manifest.csv"
MODES = {  # name -> (workers, threads per worker, Ray)
    "1x1": (1, 1, False),
    "1x2": (1, 2, False),
    "2x1": (2, 1, False),
    "ray2x1": (2, 1, True),
}


def one(mode: str, args: argparse.Namespace) -> dict:
    """Run one mode in this process and return its figures (called in a child process)."""
    from explainers.evaluate import evaluate

    workers, threads, ray = MODES[mode]
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        summary = evaluate(
            args.manifest,
            out,
            methods=args.methods,
            limit=args.photos,
            workers=workers,
            threads=threads,
            ray=ray or None,
            device="cpu",
            progress=False,
            curve_steps=args.steps,
            score_substrates=args.score_substrates,
        )
        wall = time.perf_counter() - started
    run = summary.run
    n = run["images_computed"]
    span = run["last_result_seconds"] - run["first_result_seconds"]
    return {
        "mode": mode,
        "images": n,
        "wall": wall,
        "per_minute": 60 * n / wall,
        "steady_per_minute": 60 * (n - 1) / span if n > 1 and span > 0 else None,
        "first_result": run["first_result_seconds"],
        "rss_mb": [w.get("peak_rss_mb") for w in run["worker_details"]],
        "cpu_per_image": sum(w.get("cpu_seconds", 0.0) for w in run["worker_details"]) / max(n, 1),
        "passes_per_image": sum(
            m["forward_passes_mean"] + m["curve_forward_passes_mean"] for m in summary.methods.values()
        )
        + summary.random["forward_passes_mean"],
        "load": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10, help="curve steps (the CLI's 50 makes each mode minutes)")
    parser.add_argument("--methods", default="gradcam,ig,region")
    parser.add_argument(
        "--score-substrates",
        default="black",
        help="curves scored on (default black: the settings of the first measurement)",
    )
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one mode, print its JSON
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args)), flush=True)
        return
    if not args.manifest.is_file():
        sys.exit(f"no manifest at {args.manifest}: this bench reads the ImageNet samples of ../shared/data")
    header(
        f"evaluate throughput: {args.photos} photos, {args.steps} curve steps, methods {args.methods}, "
        f"{os.cpu_count()} cores"
    )
    print(
        "| mode | workers x threads | wall s | images/min | steady images/min | first image done at s "
        "| worker CPU s per image | peak RSS per worker, MB | forward passes per image | load before |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    for mode in args.modes.split(","):
        load = load_average()
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                mode,
                "--manifest",
                str(args.manifest),
                "--photos",
                str(args.photos),
                "--steps",
                str(args.steps),
                "--methods",
                args.methods,
                "--score-substrates",
                args.score_substrates,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode or not lines:
            print(f"| {mode} | failed: {(child.stderr.strip().splitlines() or ['?'])[-1][:120]} |")
            continue
        r = json.loads(lines[-1][len("RESULT ") :])
        workers, threads, ray = MODES[mode]
        steady = "–" if r["steady_per_minute"] is None else f"{r['steady_per_minute']:.1f}"
        rss = ", ".join(str(m) for m in r["rss_mb"])
        print(
            f"| {mode}{' (Ray)' if ray else ''} | {workers} x {threads} | {r['wall']:.1f} | {r['per_minute']:.1f} "
            f"| {steady} | {r['first_result']:.1f} | {r['cpu_per_image']:.1f} | {rss} | {r['passes_per_image']:.0f} "
            f"| {load} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
