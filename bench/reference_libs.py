"""Our integrated gradients and Grad-CAM against the reference libraries.

    python bench/reference_libs.py [--model bundled|clip-random] [--steps 32,128]

- IG vs Captum's ``IntegratedGradients`` (``riemann_trapezoid``, black baseline) at equal step
  counts. Ours is run with refinement off (``max_steps = steps``). The paths differ (ours
  samples a = u**2, Captum a = u), so the maps agree only as steps grow: we report the max abs
  difference of the maps (|channel sum|) relative to Captum's max, both completeness errors,
  and seconds (after a warm-up).
- Grad-CAM vs pytorch-grad-cam's ``GradCAM`` on the same layer: Pearson correlation and max
  abs difference of the maps (each min-max scaled to [0, 1], as pytorch-grad-cam scales), and
  seconds.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import PHOTOS, Clock, header, photo_path
from speed import load

from explainers.images import open_image
from explainers.methods import gradcam, integrated_gradients
from explainers.types import Target


class ScoreModel(torch.nn.Module):
    """adapter.score as an nn.Module returning ``[B, 1]`` (what both libraries call)."""

    def __init__(self, adapter, target) -> None:
        super().__init__()
        self.adapter, self.target = adapter, target
        self.net = getattr(adapter, "network", None) or adapter.model

    def forward(self, x):
        return self.adapter.score(x, self.target)[:, None]


def scaled(a: np.ndarray) -> np.ndarray:
    a = a - a.min()
    return a / a.max() if a.max() > 0 else a


def ig_rows(adapter, pixels, target, steps_list):
    from captum.attr import IntegratedGradients

    model = ScoreModel(adapter, target)
    ig = IntegratedGradients(lambda x: model(x)[:, 0])
    integrated_gradients.explain(adapter, pixels, target, steps=8, max_steps=8)  # warm-up
    for steps in steps_list:
        with Clock() as ours_clock:
            ours = integrated_gradients.explain(adapter, pixels, target, steps=steps, max_steps=steps)
        with Clock() as captum_clock:
            attributions, delta = ig.attribute(
                pixels,
                baselines=torch.zeros_like(pixels),
                n_steps=steps,
                method="riemann_trapezoid",
                internal_batch_size=adapter.max_batch,
                return_convergence_delta=True,
            )
        captum_map = attributions.sum(dim=1)[0].abs().detach().numpy()
        difference = np.abs(ours.values - captum_map).max() / captum_map.max()
        score_difference = ours.meta["score_difference"]
        captum_error = abs(float(attributions.sum()) - score_difference) / abs(score_difference)
        correlation = np.corrcoef(ours.values.ravel(), captum_map.ravel())[0, 1]
        yield (
            f"| IG, {steps} steps | {ours_clock.wall:.2f} | {captum_clock.wall:.2f} | "
            f"max abs diff {difference:.3f} of max, r = {correlation:.3f} | "
            f"{ours.meta['completeness_error']:.3f} | {captum_error:.3f} |"
        )


def gradcam_row(adapter, pixels, target):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = ScoreModel(adapter, target)
    layer = adapter.cam_layer()
    if layer.where == "output":
        module, reshape = layer.module, None
    else:  # CLIP: the input of the last block's layer_norm1 = the output of the block before
        module = adapter.model.vision_model.encoder.layers[-2]

        def reshape(tokens):
            tokens = tokens[0] if isinstance(tokens, tuple) else tokens
            return layer.to_grid(tokens)

    gradcam.explain(adapter, pixels, target)  # warm-up
    with Clock() as ours_clock:
        ours = gradcam.explain(adapter, pixels, target).values
    cam = GradCAM(model=model, target_layers=[module], reshape_transform=reshape)
    with Clock() as theirs_clock:
        theirs = cam(input_tensor=pixels.clone().requires_grad_(True), targets=[ClassifierOutputTarget(0)])[0]
    a, b = scaled(ours), scaled(theirs)
    correlation = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    return (
        f"| Grad-CAM | {ours_clock.wall:.2f} | {theirs_clock.wall:.2f} | r = {correlation:.4f}, "
        f"max abs diff {np.abs(a - b).max():.3f} | - | - |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="bundled", choices=["bundled", "clip-random"])
    parser.add_argument("--steps", default="32,128")
    parser.add_argument("--photos", default="chelsea,coffee")
    args = parser.parse_args()
    adapter = load(args.model)
    header(f"Reference libraries, {adapter.name}")
    print("| photo | comparison | ours s | library s | agreement | ours completeness err | library completeness err |")
    print("|---|---|---|---|---|---|---|")
    for photo in args.photos.split(","):
        target = Target(PHOTOS[photo])
        pixels = adapter.load_image(open_image(photo_path(photo)))
        print(f"| {photo} " + gradcam_row(adapter, pixels, target), flush=True)
        for line in ig_rows(adapter, pixels, target, [int(s) for s in args.steps.split(",")]):
            print(f"| {photo} " + line, flush=True)


if __name__ == "__main__":
    main()
