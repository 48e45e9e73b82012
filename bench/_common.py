"""Shared helpers for the bench scripts: the photos and prompts, timing and memory probes."""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The benches measure what the engine's entry points run: torch's OpenMP threads waiting
# passively (explainers/_threads.py). The policy is read when torch loads, and the benches import
# torch before this module, so where it is not set yet the script starts again with it set.
# (Set OMP_WAIT_POLICY or GOMP_SPINCOUNT yourself to measure something else.)
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if "torch" in sys.modules:
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])

# Every assets photo with a prompt the bundled model can answer (its ImageNet classes): the
# astronaut holds a helmet ("an astronaut" matches no class; the photo then scores like black).
PHOTOS = {
    "chelsea": "a cat",
    "coffee": "a cup of espresso",
    "rocket": "a rocket",
    "grace_hopper": "a military uniform",
    "astronaut": "a helmet",
}
CACHE = ROOT / "bench" / ".cache"


def imagenet_samples() -> Path:
    """../shared/data/imagenet-samples beside the checkout (or beside a folder above it, for a
    worktree): measurement only, read from there, never copied into the repo."""
    for folder in ROOT.parents:
        candidate = folder / "shared" / "data" / "imagenet-samples"
        if candidate.is_dir():
            return candidate
    return ROOT.parent / "shared" / "data" / "imagenet-samples"


def photo_path(name: str) -> Path:
    return ROOT / "assets" / f"{name}.jpg"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f} on {os.cpu_count()} cores"


class Clock:
    """Wall and CPU seconds of a block (``with Clock() as c: ...; c.wall, c.cpu``)."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def header(title: str) -> None:
    import torch

    print(f"\n### {title}\n")
    policy = os.environ.get("OMP_WAIT_POLICY") or f"unset (GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')})"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY {policy}, "
        f"load average {load_average()}\n"
    )
