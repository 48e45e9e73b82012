"""What int8 would buy and cost on the bundled model: OpenVINO's graph quantized by NNCF's
post-training quantization (Intel's NNCF; not in the requirements: ``pip install nncf``).

    python bench/int8_search.py                  # 5 assets photos, 5 rounds
    python bench/int8_search.py --rounds 9

Calibration: the assets photos and 24 black / blur fills of each at random kept fractions (what
the curves and the searches score), MIXED preset, the stem convolution and the classifier kept in
f32 (quantizing them too moved the log-probabilities by up to 0.72 and flipped a top class).
Printed:

1. ms per image, interleaved rounds of 64 images (one image per request, 2 streams, as the
   adapter runs them): torch eager batch 8 (the yardstick), OpenVINO f32, OpenVINO int8; and the
   largest |difference| of the top class's log-probability from f32's, with the top-1 agreement.
2. Region search with its forward passes on the int8 graph, every curve still scored in f32 (the
   map made with the cheap model, judged with the exact one): the SRG on black per photo against
   the f32 search's. The lead's bar for a lower precision is every paired SRG difference's CI
   within +-0.005 over 200 photos; a photo that moves by more than 0.1 already rules it out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
from _common import PHOTOS, header, photo_path
from _reference import torch_forward

from explainers import explain
from explainers.images import open_image
from explainers.methods import METHODS
from explainers.models import load_model, runtime
from explainers.substrates import make_substrate

SHAPE = (3, 224, 224)


def calibration_images(photos: list[torch.Tensor], fills: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    images = []
    for pixels in photos:
        images.append(pixels.numpy())
        for kind in ("black", "blur"):
            substrate = make_substrate(pixels, kind)
            for _ in range(fills):
                generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
                keep = (torch.rand(1, 1, *SHAPE[1:], generator=generator) < rng.random()).float()
                images.append(substrate.fill(keep).numpy())
    return images


def quantized(model, images: list[np.ndarray]):
    import nncf

    layers = [
        op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in ("Convolution", "MatMul")
    ]
    return nncf.quantize(
        model,
        nncf.Dataset(images),
        subset_size=len(images),
        preset=nncf.QuantizationPreset.MIXED,
        ignored_scope=nncf.IgnoredScope(names=[layers[0], layers[-1]]),
    )


@contextmanager
def search_on(adapter, graph):
    """Region search's forward passes on ``graph`` while the block runs; the curves stay on f32."""
    original = METHODS["region"]
    compiled = adapter._runtime._compiled

    def explain_on_graph(*args, **kwargs):
        saved = dict(compiled)
        compiled.update(dict.fromkeys(compiled, graph))
        try:
            return original.explain(*args, **kwargs)
        finally:
            compiled.clear()
            compiled.update(saved)

    METHODS["region"] = replace(original, explain=explain_on_graph)
    try:
        yield
    finally:
        METHODS["region"] = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fills", type=int, default=12, help="black and blur fills per photo for calibration")
    args = parser.parse_args()
    try:
        import nncf  # noqa: F401
    except ImportError:
        sys.exit("This bench needs NNCF, which the project does not install: pip install nncf")
    torch.set_num_threads(2)
    adapter = load_model("bundled")
    adapter.warm_up()
    compiled = adapter._runtime
    model = compiled._convert(SHAPE)
    photos = [adapter.load_image(open_image(photo_path(name))) for name in PHOTOS]
    started = time.perf_counter()
    int8 = compiled._compiled_model(quantized(model, calibration_images(photos, args.fills)), 2)
    f32 = compiled._compiled_model(model, 2)
    print(f"quantized in {time.perf_counter() - started:.1f} s")

    header(f"1. ms per image, {args.rounds} interleaved rounds of 64 images")
    images = torch.cat([p.expand(13, -1, -1, -1) for p in photos])[:64].contiguous()

    def on(graph):
        return runtime._run_in_chunks(graph, [images], [], outputs=1, chunk=1, pad=False)[0]

    def reference():
        forward = torch_forward(adapter)
        with torch.no_grad():
            return torch.cat([forward(chunk) for chunk in images.split(8)])

    runs = {
        "torch eager, batch 8 (yardstick)": reference,
        "OpenVINO f32": lambda: on(f32),
        "OpenVINO int8": lambda: on(int8),
    }
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(1000 * (time.perf_counter() - start) / len(images))
    exact, low = torch.log_softmax(on(f32), 1), torch.log_softmax(on(int8), 1)
    top = exact.argmax(1, keepdim=True)
    difference = float((exact.gather(1, top) - low.gather(1, top)).abs().max())
    agreement = float((low.argmax(1, keepdim=True) == top).float().mean())
    print("| runtime | ms/image (median) | rounds |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {' '.join(f'{v:.1f}' for v in values)} |")
    print(
        f"\nint8 against f32: max |difference| of the top class's log-probability {difference:.3f}, top-1 agreement {agreement:.0%}"
    )

    header("2. Region search on int8, curves in f32: SRG on black per photo")
    print("| photo | prompt | SRG, f32 search | SRG, int8 search | difference | search s f32 / int8 |")
    print("|---|---|---|---|---|---|")
    differences = []
    for name, prompt in PHOTOS.items():
        image = open_image(photo_path(name))
        exact_run = explain(image, prompt, model=adapter, methods=("region",)).methods["region"]
        with search_on(adapter, int8):
            low_run = explain(image, prompt, model=adapter, methods=("region",)).methods["region"]
        differences.append(low_run.srg - exact_run.srg)
        print(
            f"| {name} | {prompt} | {exact_run.srg:.4f} | {low_run.srg:.4f} | {differences[-1]:+.4f} "
            f"| {exact_run.saliency.seconds:.1f} / {low_run.saliency.seconds:.1f} |",
            flush=True,
        )
    print(f"\nlargest |SRG difference| {max(map(abs, differences)):.3f}; mean {statistics.mean(differences):+.3f}")


if __name__ == "__main__":
    main()
