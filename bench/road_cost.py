"""What the ROAD substrate costs (noisy linear imputation, Rong et al., ICML 2022), next to black
and blur, and what it changes in the AUCs.

    python bench/road_cost.py                      # everything, explain() at 20 curve steps (the app's)
    python bench/road_cost.py --steps 50           # explain() at the CLI's 50 steps
    python bench/road_cost.py --sections 1,2,3     # skip the full explain() table
    python bench/road_cost.py --threads 1          # one torch thread: steadier while other jobs share the CPU
    python bench/road_cost.py --sections 0 --against dab9e36   # the solver now against an older one

Sections (Markdown tables; bundled model, 224x224):

0. The solver now against the ones at git revisions (``--against``, default the last commit before
   issue 20's work and the first rewrite's last commit): CPU and wall ms per imputed image on the
   same 32 curve masks, interleaved, with iteration counts and the error against scipy's direct
   solve on all 32.

1. ms per filled image by batch size for black, blur and road (multigrid, the masks of a batch
   solved together), next to the model's own ms per image. The masks are curve masks of
   chelsea's three maps and three random orderings at random steps.
2. The solver: iterations per mask on the curve masks and on 50 varied stress masks, agreement
   with scipy's exact direct solve (max |difference|, pixel units; no fallback) and the direct
   solve's own cost.
3. One explain()'s curves (3 maps + 3 random orderings, deletion and insertion) at 20 and 50
   steps: images filled, seconds spent filling (a model that costs nothing) and seconds with
   the bundled model, forward passes.
4. explain(photo, prompt, substrate=s) on the assets photos for s in black, blur, road: seconds
   end to end (region search fills its sets with the substrate too), and per method the
   insertion / deletion AUC and SRG = insertion - deletion next to the random reference.

Wall seconds are medians of ``--repeats`` runs where a row is cheap enough to repeat; other
engineers' jobs share this 2-core machine, so the header prints the load.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
from _common import PHOTOS, ROOT, Clock, header, photo_path

from explainers import explain, metrics
from explainers.images import open_image
from explainers.models import load_model
from explainers.models.base import Metered
from explainers.substrates import make_substrate, road_impute, road_impute_direct
from explainers.types import Target

SUBSTRATE_KINDS = ("black", "blur", "road")
METHODS = ("gradcam", "ig", "region")


class FreeModel:
    """Scores every image 0 at no cost, so a curve's time is the masks and the substrate alone."""

    max_batch = 8

    def __init__(self) -> None:
        self.forward_passes = 0

    def score_many(self, pixels, target):
        self.forward_passes += pixels.shape[0]
        return torch.zeros(pixels.shape[0])


class CaptureSubstrates:
    """Keeps every substrate metrics makes (to read the road solver's iteration counts)."""

    def __init__(self) -> None:
        self.made = []
        self._original = metrics.make_substrate

    def __enter__(self):
        def capture(*args, **kwargs):
            substrate = self._original(*args, **kwargs)
            self.made.append(substrate)
            return substrate

        metrics.make_substrate = capture
        return self

    def __exit__(self, *_):
        metrics.make_substrate = self._original


def measure(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``repeats`` calls (CPU seconds move less with other load)."""
    walls, cpus = [], []
    for _ in range(repeats):
        with Clock() as clock:
            fn()
        walls.append(clock.wall)
        cpus.append(clock.cpu)
    return statistics.median(walls), statistics.median(cpus)


def orders_for(result, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    orders = [metrics.pixel_order(result.methods[m].saliency.values) for m in METHODS]
    return orders + metrics.random_orders(height, width, 3, seed)


def curve_masks(orders, steps: int, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` keep masks drawn from the curves' jobs (ordering, deletion or insertion, step)."""
    height = width = 224
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(count):
        order = orders[rng.integers(len(orders))]
        k = int(rng.integers(1, steps))
        shown = (metrics.pixel_ranks(order, height, width) < metrics.step_count(k, steps, height * width)).float()
        masks.append(shown if rng.random() < 0.5 else 1.0 - shown)
    return torch.cat(masks)


def section_fill_by_batch(adapter, pixels, target, masks, repeats: int) -> None:
    header("1. ms per filled 224x224 image, by batch size (curve masks of chelsea)")
    n = len(masks)
    wall, cpu = measure(lambda: adapter.score_many(pixels.expand(8, -1, -1, -1), target), repeats)
    print(f"The bundled model: {1000 * wall / 8:.1f} ms per image wall, {1000 * cpu / 8:.1f} ms CPU (batches of 8).\n")
    print("Wall / CPU ms per image.\n")
    print("| batch | black | blur | road | road iterations per mask (mean / max) |")
    print("|---|---|---|---|---|")
    fixed = {kind: make_substrate(pixels, kind) for kind in ("black", "blur")}
    for batch in (1, 2, 4, 8, 16, 32):
        cells = []
        for kind in ("black", "blur"):
            wall, cpu = measure(lambda: [fixed[kind].fill(masks[i : i + batch]) for i in range(0, n, batch)], repeats)
            cells.append(f"{1000 * wall / n:.2f} / {1000 * cpu / n:.2f}")
        iterations = []

        def road() -> None:
            iterations.clear()
            for i in range(0, n, batch):
                road_impute(pixels, masks[i : i + batch], chunk=batch, iterations=iterations)

        wall, cpu = measure(road, repeats)
        cells.append(f"{1000 * wall / n:.1f} / {1000 * cpu / n:.1f}")
        cells.append(f"{np.mean(iterations):.1f} / {max(iterations)}")
        print(f"| {batch} | " + " | ".join(cells) + " |", flush=True)


def stress_masks(size: int = 224, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """Varied keep masks: uniform random, smooth blobs at three scales, salt clusters (like IG's
    top pixels) at kept fractions from 1 % to 99 %, and regular patterns."""
    generator = torch.Generator().manual_seed(seed)

    def field(scale: int) -> torch.Tensor:
        coarse = torch.randn(1, 1, size // scale + 2, size // scale + 2, generator=generator)
        return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)

    names, masks = [], []
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for frac in (0.01, 0.02, 0.05, 0.2, 0.5, 0.8, 0.95, 0.98, 0.99):
        fields = {
            "uniform": torch.rand(1, 1, size, size, generator=generator),
            **{f"smooth {s} px": field(s) for s in (4, 16, 64)},
            "salt": field(16) + 1.5 * torch.randn(1, 1, size, size, generator=generator),
        }
        for name, f in fields.items():
            masks.append((f >= torch.quantile(f.flatten(), 1 - frac)).float())
            names.append(f"{name}, {frac:.0%} kept")
    patterns = {
        "checkerboard": (yy + xx) % 2 == 0,
        "every 4th pixel kept": (yy % 2 == 0) & (xx % 2 == 0),
        "grid lines kept": (yy % 8 == 0) | (xx % 8 == 0),
        "one column kept": xx < 1,
        "a 5-pixel dot kept": (yy - size // 2) ** 2 + (xx - size // 2) ** 2 < 4,
    }
    for name, m in patterns.items():
        masks.append(m.float().view(1, 1, size, size))
        names.append(name)
    return names, torch.cat(masks)


def section_solver(pixels, masks, iterations_seen: list[int]) -> None:
    header("2. The multigrid solver against scipy's direct solve")
    if iterations_seen:
        counts = np.bincount(iterations_seen)
        spread = ", ".join(f"{i}: {c}" for i, c in enumerate(counts) if c)
        print(
            f"Iterations per mask over every road curve mask of section 3 ({len(iterations_seen)} masks, "
            f"chelsea): mean {np.mean(iterations_seen):.2f}, max {max(iterations_seen)}; "
            f"masks by iterations {{{spread}}}\n"
        )
    names, stress = stress_masks()
    print(
        "| masks | count | multigrid s/mask (wall / CPU) | scipy direct s/mask (wall / CPU) | iterations mean / max "
        "| max abs difference | median |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, sample in (("curve masks (chelsea, 50 steps)", masks[:8]), ("stress masks", stress)):
        iterations: list[int] = []
        with Clock() as fast_clock:
            fast = road_impute(pixels, sample, iterations=iterations, fallback=False)
        with Clock() as direct_clock:
            exact = road_impute_direct(pixels, sample)
        error = (fast - exact).abs().amax(dim=(1, 2, 3))
        n = len(sample)
        print(
            f"| {label} | {n} | {fast_clock.wall / n:.3f} / {fast_clock.cpu / n:.3f} | "
            f"{direct_clock.wall / n:.3f} / {direct_clock.cpu / n:.3f} | {np.mean(iterations):.1f} / "
            f"{max(iterations)} | {float(error.max()):.1e} | {float(error.median()):.1e} |",
            flush=True,
        )
        if label == "stress masks":
            worst = int(error.argmax())
            print(
                f"\nStress masks: {', '.join(names[:5])}, ... ; the largest difference is on "
                f'"{names[worst]}" ({iterations[worst]} iterations).'
            )


def section_curves(adapter, pixels, target, orders, repeats: int) -> list[int]:
    header("3. One explain()'s curves: 3 maps + 3 random orderings, deletion and insertion")
    print(
        "Wall / CPU seconds. The fill column scores with a model that costs nothing: the masks and the "
        "substrate alone.\n"
    )
    print(
        "| steps | substrate | images filled | fill s (free model) | curves s (bundled) | forward passes "
        "| road iterations per mask (mean / max) |"
    )
    print("|---|---|---|---|---|---|---|")
    iterations_seen = []
    for steps in (20, 50):
        for kind in SUBSTRATE_KINDS:
            free = FreeModel()
            runs = repeats if kind != "road" else 1  # road's rows take long enough to be read once
            with CaptureSubstrates() as captured:
                fill_wall, fill_cpu = measure(
                    lambda: metrics.curves_for_orders(free, pixels, target, orders, steps=steps, substrate=kind), runs
                )
            images = free.forward_passes // runs - 1  # the photo itself is not filled
            metered = Metered(adapter)
            with Clock() as clock:
                metrics.curves_for_orders(metered, pixels, target, orders, steps=steps, substrate=kind)
            its = ""
            if kind == "road":
                counts = [c for s in captured.made for c in s.iterations]
                iterations_seen += counts
                its = f"{np.mean(counts):.1f} / {max(counts)}"
            print(
                f"| {steps} | {kind} | {images} | {fill_wall:.2f} / {fill_cpu:.2f} | {clock.wall:.2f} / {clock.cpu:.2f} | "
                f"{metered.forward_passes} | {its} |",
                flush=True,
            )
    return iterations_seen


def substrates_at(revision: str):
    """explainers/substrates.py as it was at a git ``revision``, loaded as a module of its own."""
    import importlib.util
    import subprocess
    import sys
    import tempfile

    source = subprocess.run(
        ["git", "show", f"{revision}:explainers/substrates.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "substrates_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("explainers._substrates_then", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def section_against(pixels, masks, revisions: list[str], repeats: int) -> None:
    header(
        f"0. The solver now against the solver at {', '.join(revisions)} (the same {len(masks)} curve masks, "
        "batches of 8, interleaved)"
    )
    from explainers import substrates as now

    solvers = {"now": now, **{revision: substrates_at(revision) for revision in revisions}}
    print(
        f"| solver | CPU ms per image (median of rounds) | wall ms per image | CG iterations mean / max | max abs difference from scipy's direct solve ({len(masks)} masks) |"
    )
    print("|---|---|---|---|---|")
    exact = road_impute_direct(pixels, masks)
    figures = {label: [] for label in solvers}
    counts = {}
    outputs = {}
    for _ in range(repeats):
        for label, module in solvers.items():
            iterations: list[int] = []
            with Clock() as clock:
                outputs[label] = torch.cat(
                    [
                        module.road_impute(pixels, masks[i : i + 8], iterations=iterations, fallback=False)
                        for i in range(0, len(masks), 8)
                    ]
                )
            figures[label].append((clock.cpu / len(masks) * 1000, clock.wall / len(masks) * 1000))
            counts[label] = iterations
    for label in solvers:
        cpu = statistics.median(c for c, _ in figures[label])
        wall = statistics.median(w for _, w in figures[label])
        error = float((outputs[label] - exact).abs().max())
        print(
            f"| {label} | {cpu:.1f} | {wall:.1f} | {np.mean(counts[label]):.2f} / {max(counts[label])} | {error:.1e} |",
            flush=True,
        )


def section_explain(photos: list[str], steps: int) -> None:
    header(f"4. explain() per substrate (bundled, {steps} curve steps, methods {', '.join(METHODS)})")
    print(
        "| photo | substrate | wall / CPU s | "
        + " | ".join(f"{m} ins / del / SRG" for m in METHODS)
        + " | random ins / del / SRG |"
    )
    print("|---|---|---|" + "---|" * (len(METHODS) + 1))
    wins = dict.fromkeys(SUBSTRATE_KINDS, 0)
    for photo in photos:
        for kind in SUBSTRATE_KINDS:
            with Clock() as clock:
                result = explain(
                    photo_path(photo), PHOTOS[photo], methods=list(METHODS), substrate=kind, curve_steps=steps
                )
            random_srg = result.random.insertion.auc - result.random.deletion.auc
            cells = []
            for m in METHODS:
                r = result.methods[m]
                srg = r.insertion.auc - r.deletion.auc
                better = (
                    result.more_faithful_than_random(m)
                    if hasattr(result, "more_faithful_than_random")
                    else srg > random_srg
                )
                wins[kind] += bool(better)
                cells.append(f"{r.insertion.auc:.3f} / {r.deletion.auc:.3f} / {srg:.3f}{'' if better else ' ✗'}")
            print(
                f"| {photo} | {kind} | {clock.wall:.1f} / {clock.cpu:.1f} | "
                + " | ".join(cells)
                + f" | {result.random.insertion.auc:.3f} / {result.random.deletion.auc:.3f} / {random_srg:.3f} |",
                flush=True,
            )
    print(
        "\n✗ = the SRG does not beat the random reference. Method-photo pairs beating random: "
        + ", ".join(f"{k} {v}/{len(photos) * len(METHODS)}" for k, v in wins.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", default=",".join(PHOTOS))
    parser.add_argument("--steps", type=int, default=20, help="curve steps of section 4's explain() calls")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default="0,1,2,3,4")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument(
        "--against",
        default="dab9e36,30ab05c",
        help="section 0: the git revisions whose solvers to compare with (comma-separated; default: before issue "
        "20's work, and the first rewrite)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = {int(s) for s in args.sections.split(",")}
    header("ROAD substrate cost")
    adapter = load_model("bundled")
    target = Target(PHOTOS["chelsea"])
    pixels = adapter.load_image(open_image(photo_path("chelsea")))
    reference = explain(photo_path("chelsea"), PHOTOS["chelsea"], methods=list(METHODS))  # also warms up
    orders = orders_for(reference, 224, 224)
    masks = curve_masks(orders, 50, 32)
    iterations_seen: list[int] = []
    if 0 in sections:
        section_against(pixels, masks, args.against.split(","), args.repeats)
    if 1 in sections:
        section_fill_by_batch(adapter, pixels, target, masks, args.repeats)
    if 3 in sections:
        iterations_seen = section_curves(adapter, pixels, target, orders, args.repeats)
    if 2 in sections:
        section_solver(pixels, masks, iterations_seen)
    if 4 in sections:
        section_explain(args.photos.split(","), args.steps)


if __name__ == "__main__":
    main()
