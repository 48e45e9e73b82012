"""Where OpenCV (opencv-python-headless) beats what the engine uses, op by op, on the assets photos:
milliseconds per call (median of --repeats, CPU seconds, interleaved) and the largest difference of
the results.

    python bench/opencv_ops.py [--repeats 20]

Rows: the blur substrate (torchvision's Gaussian blur vs cv2.GaussianBlur, same sigma, kernel and
reflect-101 border); the model's input resize (PIL bicubic with its antialiasing vs cv2 INTER_AREA
and INTER_CUBIC: these change the model's input pixels, so they are measured, not adopted); the
overlay's upscaling of a 224x224 map to the photo (PIL bilinear vs cv2 INTER_LINEAR); the colour
map (matplotlib vs a 256-entry lookup table of the same colours vs cv2.applyColorMap); the display
smoothing of a map (scipy's gaussian_filter vs cv2.GaussianBlur); the ROAD solver's neighbour sum
(shifted torch slices vs cv2.sepFilter2D per plane).
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from _common import PHOTOS, header, photo_path
from PIL import Image

from explainers.images import open_image
from explainers.substrates import BLUR_SIGMA


def cpu_ms(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        started = time.process_time()
        function()
        times.append((time.process_time() - started) * 1000)
    return statistics.median(times)


def row(name: str, ours: str, theirs: str, a: float, b: float, difference: str, verdict: str) -> None:
    print(f"| {name} | {ours} {a:.2f} | {theirs} {b:.2f} | {a / b:.1f}x | {difference} | {verdict} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cv2.setNumThreads(2)
    n = args.repeats
    header("OpenCV against the engine's ops (CPU ms per call, median)")
    print("| op | now, ms | OpenCV, ms | speed-up | max abs difference | used |")
    print("|---|---|---|---|---|---|")

    photo = open_image(photo_path("chelsea"))
    pixels = torch.from_numpy(np.asarray(photo.resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255)
    pixels = pixels.permute(2, 0, 1)[None].contiguous()
    kernel = int(4 * BLUR_SIGMA) | 1
    hwc = np.ascontiguousarray(pixels[0].permute(1, 2, 0).numpy())
    ours = TF.gaussian_blur(pixels, [kernel, kernel], [BLUR_SIGMA, BLUR_SIGMA])
    theirs = cv2.GaussianBlur(hwc, (kernel, kernel), BLUR_SIGMA, borderType=cv2.BORDER_REFLECT_101)
    difference = float(np.abs(ours[0].permute(1, 2, 0).numpy() - theirs).max())
    row(
        "blur substrate, 224x224 (once per photo)",
        "torchvision",
        "cv2.GaussianBlur",
        cpu_ms(lambda: TF.gaussian_blur(pixels, [kernel, kernel], [BLUR_SIGMA, BLUR_SIGMA]), n),
        cpu_ms(lambda: cv2.GaussianBlur(hwc, (kernel, kernel), BLUR_SIGMA, borderType=cv2.BORDER_REFLECT_101), n),
        f"{difference:.1e}",
        "yes" if difference < 1e-5 else "no",
    )

    worst_area = worst_cubic = 0.0
    timings = [[], [], []]
    for name in PHOTOS:
        image = open_image(photo_path(name)).convert("RGB")
        array = np.asarray(image)
        pil = np.asarray(image.resize((224, 224), Image.BICUBIC), dtype=np.float32)
        area = cv2.resize(array, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
        cubic = cv2.resize(array, (224, 224), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        worst_area = max(worst_area, float(np.abs(pil - area).max()) / 255)
        worst_cubic = max(worst_cubic, float(np.abs(pil - cubic).max()) / 255)
        timings[0].append(cpu_ms(lambda: image.resize((224, 224), Image.BICUBIC), n))
        timings[1].append(cpu_ms(lambda: cv2.resize(array, (224, 224), interpolation=cv2.INTER_AREA), n))
        timings[2].append(cpu_ms(lambda: cv2.resize(array, (224, 224), interpolation=cv2.INTER_CUBIC), n))
    pil_ms, area_ms, cubic_ms = (statistics.mean(t) for t in timings)
    row(
        "model input: photo -> 224x224 (once per photo)",
        "PIL bicubic",
        "cv2 INTER_AREA",
        pil_ms,
        area_ms,
        f"{worst_area:.3f} (pixel units)",
        "no: moves every number",
    )
    row("", "PIL bicubic", "cv2 INTER_CUBIC (no antialias)", pil_ms, cubic_ms, f"{worst_cubic:.3f}", "no: aliases")

    heat = (np.random.default_rng(0).random((224, 224, 3)) * 255).astype(np.uint8)
    size = photo.size
    heat_image = Image.fromarray(heat)
    up_pil = np.asarray(heat_image.resize(size, Image.BILINEAR), dtype=np.int16)
    up_cv = cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR).astype(np.int16)
    row(
        f"overlay: 224x224 map -> photo {size[0]}x{size[1]}",
        "PIL bilinear",
        "cv2 INTER_LINEAR",
        cpu_ms(lambda: heat_image.resize(size, Image.BILINEAR), n),
        cpu_ms(lambda: cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR), n),
        f"{int(np.abs(up_pil - up_cv).max())} grey levels",
        "no: the overlays are a few ms",
    )

    from matplotlib import colormaps

    values = np.random.default_rng(1).random((224, 224))
    cmap = colormaps["inferno"]
    lut = (cmap(np.arange(cmap.N))[:, :3] * 255).astype(np.uint8)

    def lookup() -> np.ndarray:
        index = np.clip((values * cmap.N).astype(np.int64), 0, cmap.N - 1)
        return lut[index]

    matplotlib_rgb = (cmap(values)[..., :3] * 255).astype(np.uint8)
    opencv_rgb = cv2.applyColorMap((values * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    row(
        "colour map, 224x224",
        "matplotlib",
        "256-entry lookup of the same colours",
        cpu_ms(lambda: (cmap(values)[..., :3] * 255).astype(np.uint8), n),
        cpu_ms(lookup, n),
        f"{int(np.abs(matplotlib_rgb.astype(int) - lookup()).max())} levels",
        "no: 2 ms a map",
    )
    row(
        "",
        "matplotlib",
        "cv2.applyColorMap",
        cpu_ms(lambda: (cmap(values)[..., :3] * 255).astype(np.uint8), n),
        cpu_ms(lambda: cv2.applyColorMap((values * 255).astype(np.uint8), cv2.COLORMAP_INFERNO), n),
        f"{int(np.abs(matplotlib_rgb.astype(int) - opencv_rgb).max())} levels",
        "no: other colours",
    )

    from scipy.ndimage import gaussian_filter

    sigma = 0.02 * 224
    smooth_scipy = gaussian_filter(values, sigma=sigma)
    smooth_cv = cv2.GaussianBlur(values, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    row(
        "display smoothing of a map (sigma 2 % of the side)",
        "scipy gaussian_filter",
        "cv2.GaussianBlur",
        cpu_ms(lambda: gaussian_filter(values, sigma=sigma), n),
        cpu_ms(lambda: cv2.GaussianBlur(values, (0, 0), sigma, borderType=cv2.BORDER_REFLECT), n),
        f"{float(np.abs(smooth_scipy - smooth_cv).max()):.1e}",
        "no: sub-ms either way",
    )

    field = torch.rand(8, 3, 225, 225)
    taps = np.array([1.0, 2.0, 1.0], dtype=np.float32)

    def shifted() -> torch.Tensor:
        padded = F.pad(field, (0, 0, 1, 1))
        rows = torch.add(padded[..., :-2, :], padded[..., 2:, :]).add_(field, alpha=2.0)
        padded = F.pad(rows, (1, 1, 0, 0))
        return torch.add(padded[..., :-2], padded[..., 2:]).add_(rows, alpha=2.0)

    def separable() -> torch.Tensor:
        out = torch.empty_like(field)
        for plane, target in zip(field.view(-1, 225, 225).numpy(), out.view(-1, 225, 225).numpy()):
            cv2.sepFilter2D(plane, -1, taps, taps, dst=target, borderType=cv2.BORDER_CONSTANT)
        return out

    row(
        "ROAD neighbour sum, 8 x 3 planes of 225x225",
        "torch shifted slices",
        "cv2.sepFilter2D per plane",
        cpu_ms(shifted, n),
        cpu_ms(separable, n),
        f"{float((shifted() - separable()).abs().max()):.1e}",
        "yes (substrates.py)",
    )


if __name__ == "__main__":
    main()
