"""Per-image cost of the model at each batch size: no-grad scoring and forward+backward.

    python bench/batch_size.py [--model bundled|clip-random] [--sizes 1,2,4,8,16,32]

The adapters' ``max_batch`` / ``max_grad_batch`` come from this table. Each size is measured
twice (rounds), after a warm-up call, on random pixels; milliseconds per image.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import header

from explainers.types import Target


def per_image_ms(run, images: int, rounds: int = 2) -> list[float]:
    run()  # warm-up: oneDNN builds kernels for a new shape on its first call
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        out.append((time.perf_counter() - started) / images * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--sizes", default="1,2,4,8,16,32")
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    if args.model == "clip-random":
        from explainers.testing import random_clip_b32

        adapter = random_clip_b32()
    else:
        from explainers.models import load_model

        adapter = load_model(args.model)
    target = Target("a cat")
    pixels = torch.rand(args.images, 3, *adapter.input_size)
    header(f"Batch size, {args.model}: ms per image (two rounds)")
    print("| batch | no-grad scoring | forward + backward |")
    print("|---|---|---|")
    for size in [int(s) for s in args.sizes.split(",")]:
        sized = adapter.variant(max_batch=size)  # a copy: the registry's cached adapter keeps its batch

        def scoring():
            sized.score_many(pixels, target)

        def with_gradients():
            for chunk in pixels.split(size):
                chunk = chunk.clone().requires_grad_(True)
                torch.autograd.grad(adapter.score(chunk, target).sum(), chunk)

        scored = per_image_ms(scoring, args.images)
        graded = per_image_ms(with_gradients, args.images)
        print(
            f"| {size} | {' / '.join(f'{v:.1f}' for v in scored)} | {' / '.join(f'{v:.1f}' for v in graded)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
