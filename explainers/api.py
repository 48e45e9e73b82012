"""``explain(image, prompt, ...) -> Result``: the one entry point for the app, the CLI and the benchmarks."""
from __future__ import annotations

import math
import time
import unicodedata
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


def _shown(value: Any, limit: int = 40) -> str:
    """A value as a message shows it: its repr, cut short (a 1e300 or a 10 kB string stays readable)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_params(params: dict[str, Any], labels: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Defaults filled in; every value checked. Raises UserError naming the parameter and its range.

    ``labels`` renames parameters in the messages (the CLI: ``{"curve_steps": "--steps"}``).
    """
    labels = labels or {}
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise UserError(f"unknown parameter(s): {', '.join(sorted(map(str, unknown)))}; known: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    for name, spec in NUMERIC.items():
        value = out[name]
        allowed = f"{labels.get(name, name)} must be a whole number from {spec.low} to {spec.high}"
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise UserError(f"{allowed}, not {_shown(value)}")
        if isinstance(value, (float, np.floating)):
            if not math.isfinite(value) or value != int(value):
                raise UserError(f"{allowed}, not {_shown(float(value))}")
        if not spec.low <= value <= spec.high:
            raise UserError(f"{allowed}, not {_shown(value if isinstance(value, int) else float(value))}")
        out[name] = int(value)
    for name, choices in CHOICES.items():
        value = out[name]
        if isinstance(value, str):
            value = value.strip().lower()
        if not isinstance(value, str) or value not in choices:
            raise UserError(f"{labels.get(name, name)} must be one of {', '.join(choices)}, not {_shown(out[name])}")
        out[name] = value
    return out


def clean_methods(methods: Any) -> list[str]:
    """``"gradcam,ig"`` or a list of method names -> the distinct names, in order; UserError otherwise."""
    known = ", ".join(METHODS)
    if methods is None:
        methods = DEFAULT_METHODS
    if isinstance(methods, str):
        methods = methods.split(",")
    if not isinstance(methods, (list, tuple, set, frozenset)):
        raise UserError(f"methods must be a list of names from {known}, not {_shown(methods)}")
    names = []
    for name in methods:
        if not isinstance(name, str):
            raise UserError(f"methods must be names from {known}, not {_shown(name)}")
        name = name.strip().lower()
        if name:
            get_method(name)  # UserError naming the unknown method and the known ones
            names.append(name)
    names = list(dict.fromkeys(names))
    if not names:
        raise UserError(f"choose at least one method from {known}")
    return names


def clean_model(model: Any) -> str:
    """The model name as load_model takes it; names that are not text are refused here."""
    if model is None:
        return DEFAULT_MODEL
    if not isinstance(model, str):
        raise UserError(f"the model must be a name such as 'bundled' or 'clip:<hub id>', not {_shown(model)}")
    return model.strip() or DEFAULT_MODEL


def _clean_text(text: str) -> str:
    """Control characters -> spaces, lone surrogates dropped, NFC-normalised, whitespace runs -> one
    space. Emoji (with their joiners), CJK and right-to-left text (with its direction marks) are kept."""
    kept = {"Cc": " ", "Cs": ""}
    text = "".join(kept.get(unicodedata.category(ch), ch) for ch in text)
    return " ".join(unicodedata.normalize("NFC", text).split())


def clean_prompts(prompt: Any, contrast: Optional[Sequence[Any]]) -> tuple[Target, list[str]]:
    """Validate the prompt and contrast prompts -> (Target, notes for the user).

    Empty prompts are refused; prompts over MAX_PROMPT_CHARS are cut (with a note); contrast prompts
    that are blank, equal to the prompt or repeated are dropped (with a note for the last two).
    """
    notes: list[str] = []
    if prompt is not None and not isinstance(prompt, str):
        raise UserError(f"the prompt must be text, not {type(prompt).__name__}")
    prompt = _clean_text(prompt or "")
    if not prompt:
        raise UserError("the prompt is empty; type what to look for, e.g. 'a cat'")
    if len(prompt) > MAX_PROMPT_CHARS:
        prompt = prompt[:MAX_PROMPT_CHARS].rstrip()
        notes.append(f"the prompt was cut to its first {MAX_PROMPT_CHARS} characters")
    if contrast is None:
        contrast = []
    elif isinstance(contrast, str):
        contrast = [contrast]
    elif not isinstance(contrast, (list, tuple)):
        raise UserError(f"contrast prompts must be a list of texts, not {type(contrast).__name__}")
    cleaned: list[str] = []
    for c in contrast:
        if c is None:
            continue
        if not isinstance(c, str):
            raise UserError(f"contrast prompts must be text, not {type(c).__name__}")
        c = _clean_text(c)
        cut = len(c) > MAX_PROMPT_CHARS
        c = c[:MAX_PROMPT_CHARS].rstrip()
        if not c:
            continue
        if c.casefold() == prompt.casefold():
            notes.append(f"the contrast prompt {_shown(c)} equals the prompt and was dropped")
        elif c.casefold() in (x.casefold() for x in cleaned):
            notes.append(f"the duplicate contrast prompt {_shown(c)} was dropped")
        else:
            cleaned.append(c)
            if cut:
                notes.append(f"the contrast prompt {_shown(c)} was cut to its first {MAX_PROMPT_CHARS} characters")
    if len(cleaned) > MAX_CONTRAST:
        raise UserError(f"at most {MAX_CONTRAST} contrast prompts, not {len(cleaned)}")
    return Target(prompt, tuple(cleaned)), notes


def _token_notes(adapter, target: Target) -> list[str]:
    """Notes on prompts the model will cut (over its token limit) or cannot read (no known word)."""
    notes = []
    count = getattr(adapter, "prompt_tokens", None)
    limit = getattr(adapter, "max_prompt_tokens", None)
    unknown = getattr(adapter, "prompt_unknown", None)
    for i, p in enumerate(target.prompts):
        which = "the prompt" if i == 0 else "the contrast prompt"
        if count is not None and limit is not None and count(p) > limit:
            notes.append(f"{which} {_shown(p)} is longer than the model's limit of {limit} tokens; "
                         f"only its first {limit} tokens were used")
        if unknown is not None and unknown(p):
            notes.append(f"the model's text encoder knows none of the words in {which} {_shown(p)}, "
                         "so its score means little")
    return notes


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
    methods = clean_methods(methods)
    model = clean_model(model)
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
