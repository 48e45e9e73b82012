"""OMP_WAIT_POLICY and thread counts for the app, the CLI and evaluate, on the machine as it is and
with one more busy process beside it.

    python bench/threads.py                         # everything (several minutes)
    python bench/threads.py --modes app --extra 0,1

torch's OpenMP threads spin after each parallel region unless OMP_WAIT_POLICY=PASSIVE; the
variable is read when torch is imported, so every configuration runs in a fresh process with
the environment set before Python starts. Modes:

- app: one default explain() (bundled model, 20 curve steps) in a process that has loaded the
  model and run one explain() before (as the app's server does), with 1 or 2 torch threads;
- cli: ``python -m explainers assets/chelsea.jpg --prompt "a cat" --out DIR`` end to end (model
  load included, 50 curve steps), the environment the shell gives it;
- evaluate: ``python -m explainers.evaluate`` on the first 3 ImageNet samples (10 curve steps,
  gradcam,ig,region) with 1 worker of 2 threads and 2 workers of 1 thread.

``--extra 1`` starts one busy process (a Python loop) for the measurement: another job on the
same 2 cores, as on a shared Space or a laptop. Printed: wall seconds (and CPU seconds for app)
with the load average before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from _common import PHOTOS, ROOT, imagenet_samples, load_average, photo_path

POLICIES = {"default": None, "PASSIVE": "PASSIVE"}


def app_child(threads: int) -> None:
    """Run inside the measured process: warm up, then time one explain()."""
    import torch

    torch.set_num_threads(threads)
    from explainers import api
    from explainers.models import load_model

    adapter = load_model("bundled")
    params = api.validate_params({})
    api.explain(photo_path("coffee"), PHOTOS["coffee"], model=adapter, **params)
    wall, cpu = time.perf_counter(), time.process_time()
    api.explain(photo_path("chelsea"), PHOTOS["chelsea"], model=adapter, **params)
    print("RESULT " + json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}))


def environment(policy: str | None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    else:
        env["GOMP_SPINCOUNT"] = "300000"  # libgomp's own default, stated, so explainers leaves it alone
    return env


def run(command: list[str], env: dict[str, str]) -> tuple[float, dict]:
    started = time.perf_counter()
    child = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if child.returncode:
        raise RuntimeError((child.stderr.strip().splitlines() or ["?"])[-1][:300])
    lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
    return wall, json.loads(lines[-1][len("RESULT ") :]) if lines else {}


def measure(mode: str, policy: str | None, threads: int) -> str:
    env = environment(policy)
    if mode == "app":
        _, figures = run([sys.executable, __file__, "--child", str(threads)], env)
        return f"{figures['wall']:.1f} s wall, {figures['cpu']:.1f} s CPU"
    with tempfile.TemporaryDirectory() as out:
        if mode == "cli":
            wall, _ = run(
                [sys.executable, "-m", "explainers", str(photo_path("chelsea")), "--prompt", "a cat", "--out", out],
                env,
            )
            return f"{wall:.1f} s"
        workers = 1 if threads == 2 else 2
        wall, _ = run(
            [
                sys.executable,
                "-m",
                "explainers.evaluate",
                str(imagenet_samples() / "manifest.csv"),
                "--out",
                out,
                "--limit",
                "3",
                "--steps",
                "10",
                "--methods",
                "gradcam,ig,region",
                "--workers",
                str(workers),
                "--threads",
                str(3 - threads),
                "--no-progress",
            ],
            env,
        )
        return f"{wall:.1f} s ({workers} worker(s) x {3 - threads} thread(s))"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="app,cli,evaluate")
    parser.add_argument("--extra", default="0,1", help="busy processes started beside the measurement")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        app_child(args.child)
        return
    print("| mode | torch threads | extra busy processes | OMP_WAIT_POLICY | result | load before |")
    print("|---|---|---|---|---|---|")
    for extra in [int(e) for e in args.extra.split(",")]:
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(extra)]
        try:
            for mode in args.modes.split(","):
                for threads in (2, 1) if mode != "cli" else (2,):
                    for name, policy in POLICIES.items():
                        load = load_average()
                        try:
                            result = measure(mode, policy, threads)
                        except RuntimeError as error:
                            result = f"failed: {error}"
                        label = {"evaluate": "2 (1 worker)" if threads == 2 else "1 (2 workers)"}.get(mode, threads)
                        print(f"| {mode} | {label} | {extra} | {name} | {result} | {load} |", flush=True)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()


if __name__ == "__main__":
    main()
