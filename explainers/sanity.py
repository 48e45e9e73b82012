"""The model-parameter randomisation test (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018): does a saliency map depend on what the model learnt?

Cascading randomisation: starting from the top layer, the model's parameters are re-drawn at
random, stage by stage (each stage keeps the ones before it randomised), down to the input
layer; at each stage every selected method draws its map again, with the same parameters, and
the map is compared with the method's map on the trained model (Spearman's rank correlation of
the absolute values, and SSIM). A map that explains the model must change as the model is
destroyed. The stages are the adapter's (``ModelAdapter.randomization_stages``).

The randomisation works on a copy (``ModelAdapter.randomizable_copy``): the shared, cached
adapter is never touched. Each parameter is re-drawn from its own seeded generator, so a stage's
weights depend only on the seed and the parameter's name.

A blank map (every value equal, e.g. Grad-CAM's ReLU zeroing the whole map of a randomised
network) is no pass: it is reported as blank, its correlations NaN, never as a low correlation.
Two reference maps that know nothing of the model say what a correlation means: a centred
Gaussian blob (centre bias) and the photo's edge magnitude (image structure); the trained map's
correlation with each is reported beside the cascade (``reference_correlations``).

The test is a floor, not a ranking (Binder et al., "Shortcomings of Top-Down Randomization-Based
Sanity Checks for Evaluations of Deep Neural Network Explanations", CVPR 2023): a map of pure
noise changes most and so "passes" best.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from .errors import UserError
from .methods import run_method
from .models.base import ModelAdapter
from .types import ProgressFn, SanityCheck, SanityStage, Target, no_progress

# The classroom paragraph the app shows next to the strip of maps.
SANITY_NOTE = (
    "**Sanity check** (model-parameter randomisation, Adebayo et al., NeurIPS 2018). We destroy the "
    "model step by step, re-drawing at random the weights of its top layer first, then of the layers "
    "below, and draw every map again. A map that explains *the model* must change when the model is "
    "destroyed: passing looks like the correlations with the original map falling towards 0 and "
    "maps that no longer look like it. A map that stays the same is showing the photo (its edges, "
    "its bright spots), not what the model learnt. The test is a floor, not a ranking: do not use "
    'it to rank methods. A map of pure noise changes the most, so it "passes" best '
    "(Binder et al., CVPR 2023); the deletion and insertion curves are what compare methods."
)

Stage = tuple[str, Sequence[str]]


def sanity_stages(adapter: ModelAdapter) -> list[Stage]:
    """The adapter's cascade, top first; UserError where the model declares none."""
    try:
        stages = adapter.randomization_stages()
    except NotImplementedError:
        raise UserError(
            f"the sanity check needs a model that declares its layers; the model "
            f"{getattr(adapter, 'name', 'given')!r} does not (the bundled and CLIP models do)"
        ) from None
    if not stages:
        raise UserError(f"the model {getattr(adapter, 'name', 'given')!r} declares no layers to randomise")
    return list(stages)  # a list[Stage] (a list of (str, list[str]) is not one: list is invariant)


def _generator(seed: int, name: str) -> torch.Generator:
    """A generator for one parameter: its draw depends on the seed and its name only, so a stage's
    weights are the same whichever stages ran before it."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@torch.no_grad()
def randomize(network: torch.nn.Module, names: Sequence[str], seed: int) -> int:
    """Re-draw, in place, every parameter of ``network`` under the modules (or parameters)
    ``names``; returns how many tensors were re-drawn.

    Each tensor is drawn from a normal truncated at 2 standard deviations, with the tensor's own
    mean and standard deviation (Adebayo et al. re-initialise from a truncated normal). Keeping
    each tensor's scale keeps the activations in range, so the map changes because the learnt
    structure is gone, not because the signal died out or overflowed. A constant matrix takes
    the standard deviation 1 / sqrt(fan-in); a constant vector (a fresh bias or norm gain) has
    nothing learnt to destroy and stays as it is.
    """
    count = 0
    for name, parameter in network.named_parameters():
        if not any(name == n or name.startswith(n + ".") or n == "" for n in names):
            continue
        values = parameter.detach().double()
        mean = float(values.mean())
        std = float(values.std()) if values.numel() > 1 else 0.0
        if not (math.isfinite(std) and std > 0):
            if parameter.dim() < 2:
                continue
            std = 1.0 / math.sqrt(parameter[0].numel())
        draw = torch.empty(parameter.shape, dtype=torch.float32)
        torch.nn.init.trunc_normal_(draw, mean, std, mean - 2 * std, mean + 2 * std, generator=_generator(seed, name))
        parameter.copy_(draw.to(device=parameter.device, dtype=parameter.dtype))
        count += 1
    return count


def _unit(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _absolute(values: np.ndarray) -> np.ndarray:
    return np.abs(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0))


def is_blank(values: np.ndarray) -> bool:
    """Whether a map is blank: every absolute value equal (non-finite ones counting as 0)."""
    a = _absolute(values)
    return bool(a.size == 0 or a.max() == a.min())


def compare_maps(original: np.ndarray, randomized: np.ndarray) -> tuple[float, float]:
    """(Spearman's rho of |original| and |randomized|, SSIM of the two absolute maps each scaled
    to [0, 1], so data_range = 1), as Adebayo et al. compare maps. Non-finite values count as 0.

    Where either map is blank (``is_blank``; e.g. Grad-CAM's ReLU zeroes the whole map of a
    randomised network) there is no ordering to compare: both figures are NaN, and the caller
    reports the map as blank, never as a pass.
    """
    if is_blank(original) or is_blank(randomized):
        return float("nan"), float("nan")
    a, b = _absolute(original), _absolute(randomized)
    rho = float(spearmanr(a.ravel(), b.ravel()).statistic)
    return rho, float(structural_similarity(_unit(a), _unit(b), data_range=1.0))


REFERENCE_BLOB_SIGMA = 0.25  # of the picture's side: the centred Gaussian blob's standard deviation
REFERENCES = ("centre", "edges")


def reference_maps(pixels: torch.Tensor) -> dict[str, np.ndarray]:
    """Two maps that know nothing of the model, ``[H, W]`` each: ``"centre"``, a centred Gaussian
    blob (sigma REFERENCE_BLOB_SIGMA of each side: the centre bias of photos and of maps), and
    ``"edges"``, the photo's edge magnitude (Sobel of its grey levels: the image structure that
    gradient maps are known to echo, Adebayo et al. 2018)."""
    from skimage.color import rgb2gray
    from skimage.filters import sobel

    image = pixels[0].permute(1, 2, 0).detach().cpu().numpy().astype(np.float64)
    height, width = image.shape[:2]
    rows = (np.arange(height) - (height - 1) / 2) / (REFERENCE_BLOB_SIGMA * height)
    cols = (np.arange(width) - (width - 1) / 2) / (REFERENCE_BLOB_SIGMA * width)
    blob = np.exp(-0.5 * (rows[:, None] ** 2 + cols[None, :] ** 2))
    return {"centre": blob, "edges": sobel(rgb2gray(image))}


def reference_correlations(original: np.ndarray, references: dict[str, np.ndarray]) -> dict[str, float]:
    """The trained map's Spearman correlation with each reference map (``reference_maps``): what a
    correlation of the cascade is worth (NaN where the map is blank)."""
    return {name: compare_maps(original, values)[0] for name, values in references.items()}


def cascading_randomization(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    target: Target,
    originals: dict[str, np.ndarray],
    method_kwargs: dict[str, dict[str, Any]],
    seed: int = 0,
    progress: ProgressFn = no_progress,
    stages: Sequence[Stage] | None = None,
) -> SanityCheck:
    """Adebayo et al.'s cascading randomisation test for every map in ``originals`` (method name ->
    the method's map on the trained model). ``method_kwargs[name]`` are the keywords the map was
    made with (run_method's: the same parameters and seed, and each method draws from its own
    generators seeded by it, so only the weights differ); ``seed`` also seeds the randomisation. ``stages`` default to the
    adapter's. ``progress`` goes from 0 to 1 over stages x methods.
    """
    started = time.perf_counter()
    stages = list(stages) if stages is not None else sanity_stages(adapter)
    copy, network = adapter.randomizable_copy()
    names = list(originals)
    results: dict[str, list[SanityStage]] = {name: [] for name in names}
    randomize_seconds = []
    total = len(stages) * len(names)
    for k, (label, modules) in enumerate(stages):
        clock = time.perf_counter()
        randomize(network, modules, seed)
        randomize_seconds.append(time.perf_counter() - clock)
        for j, name in enumerate(names):
            done = k * len(names) + j
            text = f"sanity check: {name} with {label} randomised ({k + 1} of {len(stages)})"

            def method_progress(fraction: float, _text: str, done: int = done, text: str = text, **_details) -> None:
                # A method's details (e.g. region search's preview map) are dropped: they would show
                # the randomised model's map where the app shows the real one.
                progress((done + fraction) / total, text)

            saliency = run_method(name, copy, pixels, target, progress=method_progress, **method_kwargs[name])
            rho, ssim = compare_maps(originals[name], saliency.values)
            results[name].append(
                SanityStage(
                    label,
                    rho,
                    ssim,
                    saliency.values,
                    saliency.seconds,
                    saliency.forward_passes,
                    saliency.backward_passes,
                    blank=is_blank(saliency.values) or is_blank(originals[name]),
                )
            )
    progress(1.0, "sanity check")
    references = reference_maps(pixels)
    return SanityCheck(
        stages=tuple((label, tuple(modules)) for label, modules in stages),
        methods={name: tuple(entries) for name, entries in results.items()},
        seed=seed,
        seconds=time.perf_counter() - started,
        randomize_seconds=tuple(randomize_seconds),
        references={name: reference_correlations(originals[name], references) for name in names},
    )
