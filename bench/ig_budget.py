"""What integrated gradients' step budget buys, over ImageNet photos: the completeness error and
the SRG of the map at fixed budgets of 16, 32, 64 and 128 intervals and with the default
refinement (32, halved up to 128 while the error is over 5 %), with what each costs in
forward+backward passes and in reference-image equivalents (bench/_reference.py).

    python bench/ig_budget.py [--photos 24] [--steps 20]

IG's forward+backward passes stay in torch (they need gradients) and dominate the default
explain() on the bundled model; this is the trade-off behind the explain() target. The gradients
are taken once per photo at the 128-interval points (the method's path a = u**2 and its nested
trapezoid rule: every budget's points are a subset), and each budget's map is assembled from
them, so the default's map is exactly the method's (checked against run_method on the first
photo). Curves: the protocol's (black substrate, ``--steps`` steps, 3 random pixel orderings);
SRG per budget with a bootstrap CI over photos, and paired against the default.
"""

from __future__ import annotations

import argparse
import csv
import time

import numpy as np
import torch
from _common import header, imagenet_samples
from _reference import reference_images, reference_seconds_per_image

from explainers import metrics
from explainers.evaluate.stats import bootstrap_ci
from explainers.images import open_image
from explainers.methods import integrated_gradients as ig
from explainers.methods import run_method
from explainers.models import load_model
from explainers.substrates import substrate_image
from explainers.types import Target

FINEST = 128
BUDGETS = (16, 32, 64, 128)


def gradients(adapter, pixels: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor, float]:
    """slope * gradient at u = j / FINEST for j = 1..FINEST ([FINEST, 3, H, W]), the difference
    x - x', and s(x) - s(x')."""
    reference = substrate_image(pixels, "black")
    difference = pixels - reference
    u = np.arange(1, FINEST + 1) / FINEST
    out = []
    for start in range(0, FINEST, adapter.max_grad_batch):
        chunk = torch.from_numpy(u[start : start + adapter.max_grad_batch]).float().view(-1, 1, 1, 1)
        interpolants = (reference + chunk**ig.PATH_POWER * difference).requires_grad_(True)
        (g,) = torch.autograd.grad(adapter.score(interpolants, target).sum(), interpolants)
        out.append(ig.PATH_POWER * chunk ** (ig.PATH_POWER - 1) * g)
    with torch.no_grad():
        ends = adapter.score_many(torch.cat([pixels, reference]), target)
    return torch.cat(out), difference, float(ends[0] - ends[1])


def attributions(samples: torch.Tensor, difference: torch.Tensor, intervals: int) -> torch.Tensor:
    """The nested trapezoid with ``intervals`` intervals from the 128-interval samples (u = 1 halved)."""
    stride = FINEST // intervals
    interior = samples[stride - 1 : FINEST - 1 : stride].sum(0, keepdim=True)
    return difference * (interior + samples[-1:] / 2) / intervals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    adapter = load_model("bundled")
    samples_dir = imagenet_samples()
    rows = list(csv.DictReader((samples_dir / "manifest.csv").open()))[: args.photos]
    names = [f"{b} fixed" for b in BUDGETS] + ["default (32 -> 128 while error > 5 %)"]
    results: dict[str, dict[str, list[float]]] = {n: {"error": [], "srg": [], "passes": []} for n in names}
    random_srg, yardstick = [], []
    started = time.perf_counter()
    for i, row in enumerate(rows):
        pixels = adapter.load_image(open_image(samples_dir / row["image"]))
        target = Target(row["prompt"])
        samples, difference, delta = gradients(adapter, pixels, target)
        maps = {}
        for name, budget in zip(names, BUDGETS):
            a = attributions(samples, difference, budget)
            results[name]["error"].append(abs(float(a.sum()) - delta) / max(abs(delta), 1e-12))
            results[name]["passes"].append(budget + 2)  # + the two end scores
            maps[name] = a.sum(1)[0].abs().numpy()
        intervals = ig.DEFAULT_STEPS
        while True:  # the method's refinement, on the same samples
            error = results[f"{intervals} fixed"]["error"][-1]
            if error <= ig.DEFAULT_TOLERANCE or intervals * 2 > ig.DEFAULT_MAX_STEPS:
                break
            intervals *= 2
        default = names[-1]
        results[default]["error"].append(error)
        results[default]["passes"].append(intervals + 2)
        maps[default] = maps[f"{intervals} fixed"]
        if i == 0:  # the assembled default map is the method's own
            method = run_method("ig", adapter, pixels, target).values
            assert np.allclose(method, maps[default], rtol=1e-3, atol=1e-6 * float(np.abs(method).max())), (
                "not IG's map"
            )
        curves, reference = metrics.faithfulness(adapter, pixels, target, maps, steps=args.steps, n_random=3)
        for name in names:
            results[name]["srg"].append(curves[name].srg)
        random_srg.append(reference.srg)
        yardstick.append(reference_seconds_per_image(adapter, reference_images(adapter, 16)))
        print(f"({i + 1}/{len(rows)} photos, {time.perf_counter() - started:.0f} s)", flush=True)

    # One forward+backward pass in reference-image equivalents, measured now.
    probe = reference_images(adapter, 16).requires_grad_(True)
    before = reference_seconds_per_image(adapter, probe.detach())
    clock = time.perf_counter()
    for chunk in probe.split(adapter.max_grad_batch):
        chunk = chunk.detach().requires_grad_(True)
        torch.autograd.grad(adapter.score(chunk, Target("a cat")).sum(), chunk)
    backward = (time.perf_counter() - clock) / len(probe)
    per_pass = backward / ((before + reference_seconds_per_image(adapter, probe.detach())) / 2)

    header(f"IG step budget over {len(rows)} ImageNet photos (bundled, black substrate, {args.steps} curve steps)")
    print(f"One forward+backward pass = {per_pass:.1f} reference-image equivalents (measured beside the yardstick).\n")
    index = np.random.default_rng(0).integers(0, len(rows), size=(10_000, len(rows)))
    default = np.array(results[names[-1]]["srg"])
    print(
        "| budget | fwd+bwd passes (mean) | IG's cost, equivalents | completeness error median / mean "
        "| share <= 5 % | SRG mean [95 % CI] | SRG - default [95 % CI] |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        r = results[name]
        srg, error = np.array(r["srg"]), np.array(r["error"])
        ci, paired = bootstrap_ci(srg, index), bootstrap_ci(srg - default, index)
        print(
            f"| {name} | {np.mean(r['passes']):.0f} | {np.mean(r['passes']) * per_pass:.0f} "
            f"| {np.median(error):.3f} / {np.mean(error):.3f} | {np.mean(error <= ig.DEFAULT_TOLERANCE):.0%} "
            f"| {srg.mean():+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] | {(srg - default).mean():+.3f} "
            f"[{paired[0]:+.3f}, {paired[1]:+.3f}] |"
        )
    r = np.array(random_srg)
    ci = bootstrap_ci(r, index)
    print(f"| random reference | | | | | {r.mean():+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] | |")


if __name__ == "__main__":
    main()
