"""``explain(image, prompt, ...) -> Result``: the one entry point for the app, the CLI and the benchmarks."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from . import metrics
from .errors import UserError
from .images import ImageInput, open_image
from .methods import METHODS, get_method
from .models import DEFAULT_MODEL, load_model
from .types import MethodResult, ProgressFn, Result, Target, no_progress

DEFAULT_METHODS = ("gradcam", "ig", "region")
MAX_CONTRAST = 16
MAX_PROMPT_CHARS = 1000


@dataclass(frozen=True)
class Param:
    """A numeric parameter's type and allowed range (inclusive), for validation messages."""

    kind: type
    low: float
    high: float


# The defaults are what the app uses; the CLI raises curve_steps to 50 (the paper protocol).
DEFAULTS: dict[str, Any] = {
    "curve_steps": 20, "substrate": "black", "ig_steps": 32, "ig_baseline": "black",
    "n_regions": 49, "region_kind": "slic", "region_search": "fast", "seed": 0, "n_random": 3,
}
NUMERIC: dict[str, Param] = {
    "curve_steps": Param(int, 2, 200),
    "ig_steps": Param(int, 2, 256),
    "n_regions": Param(int, 4, 196),
    "seed": Param(int, 0, 2**31 - 1),
    "n_random": Param(int, 1, 20),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "substrate": metrics.SUBSTRATES,
    "ig_baseline": metrics.SUBSTRATES,
    "region_kind": ("slic", "grid"),
    "region_search": ("fast", "lazy", "greedy"),
}


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in; every value checked. Raises UserError naming the parameter and its range."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise UserError(f"unknown parameter(s): {', '.join(sorted(unknown))}; known: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    for name, spec in NUMERIC.items():
        value = out[name]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise UserError(f"{name} must be a whole number from {spec.low} to {spec.high}, not {value!r}")
        if isinstance(value, (float, np.floating)):
            if not math.isfinite(value) or value != int(value):
                raise UserError(f"{name} must be a whole number from {spec.low} to {spec.high}, not {value!r}")
        value = int(value)
        if not spec.low <= value <= spec.high:
            raise UserError(f"{name} must be from {spec.low} to {spec.high}, not {value}")
        out[name] = value
    for name, choices in CHOICES.items():
        if out[name] not in choices:
            raise UserError(f"{name} must be one of {', '.join(choices)}, not {out[name]!r}")
    return out


def clean_prompts(prompt: Any, contrast: Optional[Sequence[Any]]) -> tuple[Target, list[str]]:
    """Validate the prompt and contrast prompts -> (Target, notes for the user)."""
    notes: list[str] = []
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError("the prompt is empty; type what to look for, e.g. 'a cat'")
    prompt = " ".join(prompt.split())
    if len(prompt) > MAX_PROMPT_CHARS:
        prompt = prompt[:MAX_PROMPT_CHARS]
        notes.append(f"the prompt was cut to its first {MAX_PROMPT_CHARS} characters")
    if isinstance(contrast, str):
        contrast = [contrast]
    cleaned: list[str] = []
    for c in contrast or ():
        if not isinstance(c, str):
            raise UserError(f"contrast prompts must be text, not {type(c).__name__}")
        c = " ".join(c.split())[:MAX_PROMPT_CHARS]
        if not c:
            continue
        if c.casefold() == prompt.casefold():
            notes.append(f"the contrast prompt {c!r} equals the prompt and was dropped")
        elif c.casefold() in (x.casefold() for x in cleaned):
            notes.append(f"the duplicate contrast prompt {c!r} was dropped")
        else:
            cleaned.append(c)
    if len(cleaned) > MAX_CONTRAST:
        raise UserError(f"at most {MAX_CONTRAST} contrast prompts, not {len(cleaned)}")
    return Target(prompt, tuple(cleaned)), notes


def _token_notes(adapter, target: Target) -> list[str]:
    count = getattr(adapter, "prompt_tokens", None)
    limit = adapter.max_prompt_tokens
    if count is None or limit is None:
        return []
    return [f"the prompt {p[:40]!r}... is longer than the model's {limit} tokens and was cut"
            for p in target.prompts if count(p) > limit]


def explain(
    image: ImageInput,
    prompt: str,
    contrast: Optional[Sequence[str]] = None,
    model: str = DEFAULT_MODEL,
    methods: Sequence[str] = DEFAULT_METHODS,
    progress: ProgressFn = no_progress,
    **params: Any,
) -> Result:
    """Explain why ``model`` scores ``image`` as ``prompt``, with every method in ``methods``.

    Parameters (defaults in ``DEFAULTS``): ``curve_steps``, ``substrate`` (black|blur),
    ``ig_steps``, ``ig_baseline`` (black|blur), ``n_regions``, ``region_kind`` (slic|grid),
    ``region_search`` (fast|lazy|greedy), ``seed``, ``n_random``.
    Raises ``UserError`` (one plain sentence) on bad input.
    """
    started = time.perf_counter()
    params = validate_params(params)
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise UserError(f"choose at least one method from {', '.join(METHODS)}")
    for name in methods:
        get_method(name)
    target, notes = clean_prompts(prompt, contrast)
    pil = open_image(image)
    adapter = load_model(model)
    notes += _token_notes(adapter, target)
    torch.manual_seed(params["seed"])
    pixels = adapter.load_image(pil)

    # Each stage reports progress on its own share of the bar.
    shares = {"gradcam": 0.05, "ig": 0.25, "region": 0.4}
    total = sum(shares[m] for m in methods) + 0.3
    done = 0.0

    def stage(share: float) -> ProgressFn:
        start = done

        def report(fraction: float, description: str) -> None:
            progress(min(1.0, (start + share * fraction) / total), description)
        return report

    with torch.no_grad():
        score = float(adapter.score(pixels, target)[0])
    probabilities = adapter.prompt_probabilities(pixels, target) if target.contrast else None
    maps = {}
    for name in methods:
        method_params = {
            "gradcam": {},
            "ig": {"steps": params["ig_steps"], "baseline": params["ig_baseline"]},
            "region": {"n_regions": params["n_regions"], "regions": params["region_kind"],
                       "search": params["region_search"]},
        }[name]
        maps[name] = get_method(name).explain(adapter, pixels, target, progress=stage(shares[name]),
                                              **method_params)
        done += shares[name]
    curves, reference = metrics.faithfulness(
        adapter, pixels, target, {n: m.values for n, m in maps.items()}, steps=params["curve_steps"],
        substrate=params["substrate"], n_random=params["n_random"], seed=params["seed"],
        progress=stage(0.3),
    )
    progress(1.0, "done")
    image_view = (pixels[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Result(
        model=adapter.name, target=target, score=score, prompt_probabilities=probabilities,
        image=image_view,
        methods={n: MethodResult(maps[n], *curves[n]) for n in methods},
        random=reference, params={"methods": methods, **params}, seconds=time.perf_counter() - started,
        notes=tuple(notes),
    )


def describe_prompt(model: str, prompt: str) -> Optional[list[tuple[str, float]]]:
    """What a prompt means to ``model`` where the model can say: the bundled model's matched
    ImageNet classes with their weights (best 3); None for models that score text directly (CLIP)."""
    adapter = load_model(model)
    matched = getattr(adapter, "matched_classes", None)
    if matched is None:
        return None
    target, _ = clean_prompts(prompt, None)
    return matched(target.prompt)
