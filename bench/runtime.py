"""Forward-only runtimes side by side, in one process, interleaved: torch eager (the reference),
OpenVINO f32 as the adapters use it (explainers/models/runtime.py), the variants it was chosen
over, and ONNX Runtime; then ms per image by images per infer request and per call on the runtime the adapters use.

    python bench/runtime.py                          # bundled, 2 threads, 5 rounds
    python bench/runtime.py --model clip-random      # CLIP of ViT-B/32 shape, random weights
    python bench/runtime.py --threads 1 --rounds 3

Section 1 (batch 8): per runtime, ms per image (median over rounds), the ratio to torch eager
measured in the same round (median of the per-round ratios: other jobs on the machine move
both), and the largest |difference| of the scores from torch's f32 scores on ImageNet photos
(../shared/data/imagenet-samples, read from there, never copied) and on curve images of them
(the bundled model: log-probabilities of each photo's class prompt; CLIP: its logits).
Section 2 (``--requests``): ms per image of the adapter's own forward-only call (``score_many``)
by images per infer request and images per call (models/runtime.py REQUEST_IMAGES), interleaved,
with the torch reference of the same round. One image per request runs the graph compiled at a
static batch of 1 (STATIC_SINGLE_IMAGE); ``1d`` runs it on the dynamic graph instead.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import header, imagenet_samples
from _reference import reference_images, torch_forward

from explainers.images import open_image
from explainers.metrics import pixel_order, pixel_ranks, step_count
from explainers.models import runtime
from explainers.substrates import make_substrate
from explainers.types import Target

SAMPLES = imagenet_samples()


def load(name: str):
    if name == "clip-random":
        from explainers.testing import random_clip_b32

        return random_clip_b32()
    from explainers.models import load_model

    return load_model(name)


def photos(adapter, count: int) -> tuple[torch.Tensor, list[str]]:
    """The first ``count`` ImageNet samples and, for each, 2 curve images (a random map's
    deletion and insertion at 30 % on the black substrate)."""
    import csv

    rows = list(csv.DictReader((SAMPLES / "manifest.csv").open()))[:count]
    images, prompts = [], []
    rng = np.random.default_rng(0)
    for row in rows:
        pixels = adapter.load_image(open_image(SAMPLES / row["image"]))
        ranks = pixel_ranks(pixel_order(rng.random(adapter.input_size)), *adapter.input_size)
        shown = (ranks < step_count(3, 10, pixels.shape[-1] * pixels.shape[-2])).float()
        images += [pixels, make_substrate(pixels, "black").fill(torch.cat([1 - shown, shown]))]
        prompts += [row["prompt"]] * 3
    return torch.cat(images), prompts


def openvino_model(adapter, threads: int):
    """The adapter's network as an OpenVINO model (traced as the runtime traces it)."""
    import openvino as ov

    example = reference_images(adapter, 2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(adapter._runtime.module, example, check_trace=False)
        dynamic = ov.convert_model(traced, example_input=example, input=[ov.PartialShape([-1, 3, *adapter.input_size])])
        static = ov.convert_model(traced, example_input=example, input=[ov.PartialShape([8, 3, *adapter.input_size])])
    return ov, dynamic, static


def runners(adapter, threads: int) -> dict:
    """name -> function(pixels [B, 3, H, W]) -> network output, for every runtime compared."""
    ov, dynamic, static = openvino_model(adapter, threads)
    core = ov.Core()
    f32 = {"INFERENCE_PRECISION_HINT": ov.Type.f32, "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False}
    compiled = {
        f"OpenVINO f32, dynamic batch, 1 stream x {threads} threads": core.compile_model(
            dynamic, "CPU", {**f32, "PERFORMANCE_HINT": "LATENCY"}
        ),
        "OpenVINO f32, static batch 8": core.compile_model(static, "CPU", {**f32, "PERFORMANCE_HINT": "LATENCY"}),
        "OpenVINO, its default precision": core.compile_model(
            dynamic, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        ),
    }
    precision = compiled["OpenVINO, its default precision"].get_property("INFERENCE_PRECISION_HINT")

    def run_ov(model):
        static = model.input(0).get_partial_shape().is_static

        def run(pixels):
            count = len(pixels)
            if static and count < 8:  # a static batch of 8: pad the last chunk, drop the padding after
                pixels = torch.cat([pixels, pixels[-1:].expand(8 - count, -1, -1, -1)])
            request = model.create_infer_request()
            request.infer({0: pixels.contiguous().numpy()}, share_inputs=True)
            return torch.from_numpy(request.get_output_tensor(0).data[:count].copy())

        return run

    out = {
        "torch eager (reference)": lambda pixels: torch_forward(adapter)(pixels),
        f"OpenVINO f32, dynamic batch, {threads} streams x 1 thread (the adapters' runtime)": lambda pixels: (
            adapter._runtime(pixels)
        ),
        **{name: run_ov(model) for name, model in compiled.items()},
    }
    out[f"OpenVINO, its default precision ({precision})"] = out.pop("OpenVINO, its default precision")
    onnx = onnxruntime_runner(adapter, threads)
    if onnx is not None:
        out["ONNX Runtime f32"] = onnx
    return out


def onnxruntime_runner(adapter, threads: int):
    try:
        import onnx  # noqa: F401 - torch's exporter needs it
        import onnxruntime as ort
    except ImportError:
        print("(ONNX Runtime skipped: pip install onnx onnxruntime)")
        return None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            adapter._runtime.module,
            reference_images(adapter, 2),
            buffer,
            dynamo=False,
            input_names=["pixels"],
            dynamic_axes={"pixels": {0: "batch"}},
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    return lambda pixels: torch.from_numpy(session.run(None, {"pixels": pixels.contiguous().numpy()})[0])


def scores(adapter, output: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Each image's score of its prompt from the network's output (log-probability or CLIP logit)."""
    if hasattr(adapter, "_torch_logits"):
        log_probs = torch.log_softmax(output, dim=1)
        columns = []
        for i, prompt in enumerate(prompts):
            indices, weights = adapter.class_weights(prompt)
            columns.append(torch.logsumexp(log_probs[i, indices] + weights.log(), dim=0))
        return torch.stack(columns)
    text = adapter.text_features(tuple(prompts))
    return adapter.model.logit_scale.exp() * (output * text).sum(dim=1)


def time_it(function, pixels: torch.Tensor, batch: int) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        for chunk in pixels.split(batch):
            function(chunk)
    return (time.perf_counter() - started) / len(pixels) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled", choices=["bundled", "clip-random"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=64, help="images timed per runtime and round")
    parser.add_argument("--photos", type=int, default=16, help="ImageNet photos for the score differences")
    parser.add_argument(
        "--requests",
        default="1x64,1dx64,4x8,1x8,1x16,2x64,8x16,8x64",
        help="REQUESTxCALL pairs: images per infer request x images per call (section 2); 1dxN: "
        "one image per request on the dynamic-batch graph",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    adapter = load(args.model)
    pixels = reference_images(adapter, args.images)
    with torch.no_grad():
        adapter.score_many(pixels[:2], Target("a cat"))  # compile the adapter's runtime
    table = runners(adapter, args.threads)
    header(f"Forward-only runtimes, {args.model}, batch 8, {args.rounds} rounds of {args.images} images")
    if Path(SAMPLES / "manifest.csv").is_file():
        images, prompts = photos(adapter, args.photos)
        with torch.no_grad():
            exact = scores(adapter, table["torch eager (reference)"](images), prompts)
            differences = {
                name: float(
                    (scores(adapter, torch.cat([run(c) for c in images.split(8)]), prompts) - exact).abs().max()
                )
                for name, run in table.items()
            }
    else:
        differences = {}
    for run in table.values():  # warm-up: kernels are built on the first call of a shape
        time_it(run, pixels[:16], 8)
    ms: dict[str, list[float]] = {name: [] for name in table}
    ratios: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(args.rounds):
        reference = time_it(table["torch eager (reference)"], pixels, 8)
        for name, run in table.items():
            value = reference if name.startswith("torch") else time_it(run, pixels, 8)
            ms[name].append(value)
            ratios[name].append(reference / value)
    unit = "log-prob" if args.model == "bundled" else "logit"
    print(
        f"| runtime | ms/image | x torch (same round) | max abs diff of the {unit} vs torch f32 ({args.photos} photos + 2 curve images each) |"
    )
    print("|---|---|---|---|")
    for name in table:
        diff = differences.get(name)
        print(
            f"| {name} | {statistics.median(ms[name]):.1f} | {statistics.median(ratios[name]):.2f} "
            f"({min(ratios[name]):.2f}-{max(ratios[name]):.2f}) | {'-' if diff is None else f'{diff:.1e}'} |",
            flush=True,
        )
    header(
        f"Requests and calls, {args.model}: the adapter's score_many on {runtime.runtime_name()} over "
        f"{len(pixels)} images, by images per infer request and per call, ms per image"
    )
    print("| images per request | images per call | score_many ms/image | torch eager batch 8, same round | x torch |")
    print("|---|---|---|---|---|")
    target = Target("a cat")
    compiled = adapter._runtime
    settings = [tuple(pair.split("x")) for pair in args.requests.split(",")]
    got: dict[tuple[str, str], list[float]] = {pair: [] for pair in settings}
    ref: dict[tuple[str, str], list[float]] = {pair: [] for pair in settings}
    for _ in range(args.rounds):  # interleaved: each round times every setting once
        for request, call in settings:
            compiled.request_images, compiled.call_images = int(request.rstrip("d")), int(call)
            runtime.STATIC_SINGLE_IMAGE = not request.endswith("d")
            ref[request, call].append(time_it(table["torch eager (reference)"], pixels, 8))
            got[request, call].append(time_it(lambda p: adapter.score_many(p, target), pixels, len(pixels)))
    runtime.STATIC_SINGLE_IMAGE = True
    for request, call in settings:
        g, r = got[request, call], ref[request, call]
        shown = f"{request.rstrip('d')} (dynamic batch)" if request.endswith("d") else request
        print(
            f"| {shown} | {call} | {statistics.median(g):.1f} | {statistics.median(r):.1f} "
            f"| {statistics.median([a / b for a, b in zip(r, g)]):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
