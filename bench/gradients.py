"""Input gradients on the compiled runtime against torch's autograd (explainers/models/runtime.py,
"Input gradients"), in one process, interleaved, per image of a batch of 8 at integrated
gradients' path points (the chelsea photo faded in from black):

- torch: the adapter's score and ``torch.autograd.grad`` in torch eager (SALIENCY_LAB_RUNTIME=torch);
- compiled, one graph: the classifier's score and its input gradient from one compiled graph
  (``CompiledForward.scored``: what integrated gradients uses);
- compiled, two passes: the compiled forward, then the network's compiled vector-Jacobian
  product as its backward (what any other score built on the logits gets);

with the largest difference from torch's gradient (as a share of its largest value) next to how
far torch's own gradient moves when the pixels move by 1e-6 (a ReLU6 network's gradient is
piecewise constant, so float rounding alone flips some units), and the integrated-gradients map
of the default settings end to end both ways.

    python bench/gradients.py [--model bundled|clip-random] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _common import PHOTOS, header, load_average, photo_path

from explainers import api
from explainers.images import open_image
from explainers.models import load_model, runtime
from explainers.types import Target


def gradient_of(adapter, pixels: torch.Tensor, target: Target, logits_only: bool = False) -> torch.Tensor:
    leaf = pixels.detach().clone().requires_grad_(True)
    if logits_only:  # the two-pass path: a score built on the compiled logits in torch
        score = adapter._target_score(adapter.prompt_scores(leaf, target.prompts), target)
    else:
        score = adapter.score(leaf, target)
    return torch.autograd.grad(score.sum(), leaf)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if args.model == "clip-random":
        from explainers.testing import random_clip_b32

        adapter = random_clip_b32()
    else:
        adapter = load_model(args.model)
    header(f"Input gradients, {adapter.name}: ms per image, batch 8 (load {load_average()})")
    photo = adapter.load_image(open_image(photo_path("chelsea")))
    pixels = torch.cat([photo * a for a in torch.linspace(0.1, 1.0, 8)])
    target = Target(PHOTOS["chelsea"])
    ways = {"torch": ("torch", False), "compiled, one graph": ("openvino", False)}
    noise = 1e-6 * torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))
    if hasattr(adapter, "prompt_scores") and hasattr(adapter, "class_weights"):
        ways["compiled, two passes"] = ("openvino", True)
    times: dict[str, list[float]] = {name: [] for name in ways}
    results: dict[str, torch.Tensor] = {}
    for round_ in range(args.rounds + 1):  # round 0: compiles, not counted
        for name, (backend, logits_only) in ways.items():
            os.environ[runtime.RUNTIME_ENV] = backend
            start = time.perf_counter()
            results[name] = gradient_of(adapter, pixels, target, logits_only)
            if round_:
                times[name].append(1000 * (time.perf_counter() - start) / len(pixels))
    reference = results["torch"]
    os.environ[runtime.RUNTIME_ENV] = "torch"
    # A ReLU6 network's gradient is piecewise constant: how far torch's own moves with the pixels.
    times["torch, pixels + 1e-6 noise"] = times["torch"]
    results["torch, pixels + 1e-6 noise"] = gradient_of(adapter, pixels + noise, target)
    print("| way | ms per image (median) | rounds | x torch | max difference from torch / its largest gradient |")
    print("|---|---|---|---|---|")
    base = statistics.median(times["torch"])
    for name, values in times.items():
        difference = float((results[name] - reference).abs().max() / reference.abs().max())
        print(
            f"| {name} | {statistics.median(values):.1f} | {', '.join(f'{v:.0f}' for v in values)} "
            f"| {base / statistics.median(values):.2f} | {difference:.1e} |"
        )
    prepared = api.prepare(photo_path("chelsea"), target, adapter)
    params = api.validate_params({})
    print("\n| integrated gradients, default settings | seconds | steps | completeness error |")
    print("|---|---|---|---|")
    maps = {}
    for backend in ("openvino", "torch", "openvino", "torch"):
        os.environ[runtime.RUNTIME_ENV] = backend
        start = time.perf_counter()
        maps[backend] = api.run_methods(prepared, ["ig"], params)["ig"]
        seconds = time.perf_counter() - start
        meta = maps[backend].meta
        print(f"| {backend} | {seconds:.2f} | {meta['steps']} | {meta['completeness_error']:.4f} |")
    difference = abs(maps["openvino"].values - maps["torch"].values).max() / maps["torch"].values.max()
    print(f"\nIG maps, compiled against torch: max difference {difference:.1e} of the largest value")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
