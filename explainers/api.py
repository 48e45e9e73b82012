"""``explain(image, prompt, ...) -> Result``: the one entry point for the app, the CLI and the benchmarks."""

from __future__ import annotations

import math
import time
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from . import metrics
from .errors import ModelLoadError, UserError
from .images import ImageInput, open_image
from .methods import METHODS, default_methods, get_method, run_method
from .models import DEFAULT_MODEL, MODEL_KINDS, ModelAdapter, load_model, model_kind
from .params import Param, shown
from .regions import DEFAULT_REGIONS, region_labels
from .sanity import cascading_randomization, sanity_stages
from .substrates import SUBSTRATES
from .types import (
    Curves,
    MethodResult,
    ProgressFn,
    RandomReference,
    Result,
    SaliencyMap,
    SanityCheck,
    ScoreMeaning,
    Target,
    no_progress,
)

MAX_CONTRAST = 16
MAX_PROMPT_CHARS = 1000

# The paper protocol's curve steps: the CLI's default and what data sets are measured at (the app
# uses fewer for speed: curve_steps' default).
PAPER_CURVE_STEPS = 50

# The protocol's parameters (every method's own are declared in its file: METHOD.params).
# The defaults are what the app uses; the CLI raises curve_steps to PAPER_CURVE_STEPS.
PROTOCOL_PARAMS: tuple[Param, ...] = (
    Param(
        "curve_steps",
        20,
        "curve steps: the deletion/insertion curves are scored at this many equal fractions of the pixels",
        low=2,
        high=200,
        flag="--steps",
        label="Curves: steps",
    ),
    Param(
        "substrate",
        "black",
        "what removed pixels become: black (SMDL/LIMA), blur (RISE) or road "
        "(noisy linear imputation, Rong et al. 2022)",
        choices=SUBSTRATES,
        label="Curves: removed pixels become",
    ),
    Param(
        "score_substrates",
        (),
        "what removed pixels become when the curves are scored, the first being the headline: every map "
        "can also be judged on substrates it was not made with (default: the substrate the maps are made "
        "with; each one more costs the curves once more)",
        kind=list,
        choices=SUBSTRATES,
        label="Curves: scored on (none ticked: the substrate above; the first ticked is the one plotted)",
    ),
    Param(
        "curve_ranking",
        "pixels",
        "what the curves flip: single pixels in the map's order, or regions (SLIC, as region search cuts the "
        "photo) in the order of the map's mean over each (Bluecher et al. 2024's region granularity; the "
        "random reference then shuffles the same regions)",
        choices=metrics.CURVE_RANKINGS,
        label="Curves: flip",
    ),
    Param(
        "seed",
        0,
        "seed of the random reference (and of anything else random in the run)",
        low=0,
        high=2**31 - 1,
        label="Seed (random reference)",
    ),
    Param(
        "n_random",
        3,
        "random orderings in the random reference",
        low=1,
        high=20,
        flag="--random-orderings",
        label="Random reference: orderings",
    ),
    Param(
        "random_ranking",
        "pixels",
        "what the random reference shuffles: single pixels, or the regions "
        "region search uses (to see how much of a map's advantage is its granularity)",
        choices=metrics.RANDOM_RANKINGS,
        label="Random reference: shuffle",
    ),
)


def all_params() -> dict[str, Param]:
    """Every parameter explain() takes, by name: the protocol's, then each method's, in registry order."""
    specs = {p.name: p for p in PROTOCOL_PARAMS}
    for method in METHODS.values():
        for p in method.params:
            if p.name in specs:
                raise RuntimeError(f"parameter {p.name!r} of method {method.name!r} is declared twice")
            specs[p.name] = p
    return specs


PARAMS: dict[str, Param] = all_params()
DEFAULTS: dict[str, Any] = {name: p.default for name, p in PARAMS.items()}
DEFAULT_METHODS = tuple(default_methods())


def validate_params(params: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Defaults filled in; every value checked. Raises UserError naming the parameter and its range.

    ``labels`` renames parameters in the messages (the CLI: ``{"curve_steps": "--steps"}``).
    """
    labels = labels or {}
    unknown = set(params) - set(PARAMS)
    if unknown:
        raise UserError(f"unknown parameter(s): {', '.join(sorted(map(str, unknown)))}; known: {', '.join(PARAMS)}")
    given = {k: v for k, v in params.items() if v is not None}
    return {
        name: spec.check(given[name], labels.get(name)) if name in given else spec.default
        for name, spec in PARAMS.items()
    }


def scoring_substrates(params: dict[str, Any]) -> list[str]:
    """The substrates the curves are scored on, the headline first: ``score_substrates``, or where
    none is asked, the substrate the maps are made with."""
    return list(params.get("score_substrates") or ()) or [params["substrate"]]


def clean_methods(methods: Any) -> list[str]:
    """``"gradcam,ig"`` or a list of method names -> the distinct names, in order; UserError otherwise."""
    known = ", ".join(METHODS)
    if methods is None:
        methods = DEFAULT_METHODS
    if isinstance(methods, str):
        methods = methods.split(",")
    if not isinstance(methods, (list, tuple, set, frozenset)):
        raise UserError(f"methods must be a list of names from {known}, not {shown(methods)}")
    names = []
    for name in methods:
        if not isinstance(name, str):
            raise UserError(f"methods must be names from {known}, not {shown(name)}")
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
        raise UserError(f"the model must be a name such as 'bundled' or 'clip:<hub id>', not {shown(model)}")
    return model.strip() or DEFAULT_MODEL


def _clean_text(text: str) -> str:
    """Control characters -> spaces, lone surrogates dropped, NFC-normalised, whitespace runs -> one
    space. Emoji (with their joiners), CJK and right-to-left text (with its direction marks) are kept."""
    kept = {"Cc": " ", "Cs": ""}
    text = "".join(kept.get(unicodedata.category(ch), ch) for ch in text)
    return " ".join(unicodedata.normalize("NFC", text).split())


def clean_prompts(prompt: Any, contrast: Sequence[Any] | None) -> tuple[Target, list[str]]:
    """Validate the prompt and contrast prompts -> (Target, notes for the user).

    Empty prompts are refused; prompts over MAX_PROMPT_CHARS are cut (with a note); contrast prompts
    that are blank, equal to the prompt or repeated are dropped (with a note for the last two).
    """
    notes: list[str] = []
    if isinstance(prompt, Target):  # a target the model offered (candidate_targets), explained as it is
        text = _clean_text(prompt.prompt)
        if not text:
            raise UserError("the prompt is empty; type what to look for, e.g. 'a cat'")
        return (prompt if text == prompt.prompt else replace(prompt, prompt=text)), notes
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
            notes.append(f"the contrast prompt {shown(c)} equals the prompt and was dropped")
        elif c.casefold() in (x.casefold() for x in cleaned):
            notes.append(f"the duplicate contrast prompt {shown(c)} was dropped")
        else:
            cleaned.append(c)
            if cut:
                notes.append(f"the contrast prompt {shown(c)} was cut to its first {MAX_PROMPT_CHARS} characters")
    if len(cleaned) > MAX_CONTRAST:
        raise UserError(f"at most {MAX_CONTRAST} contrast prompts, not {len(cleaned)}")
    return Target(prompt, tuple(cleaned)), notes


def target_params(model: Any) -> dict[str, Param]:
    """The target parameters of ``model`` (a name or an adapter): its model kind's (a VLM's answer,
    answer_token, max_new_tokens; a detector's box, box_threshold), by name; none for a prompt model."""
    if isinstance(model, ModelAdapter):
        return {p.name: p for p in model.target_params}
    try:
        kind = model_kind(clean_model(model))
    except ModelLoadError:  # an unknown name: load_model refuses it, naming every kind
        return {}
    return {p.name: p for p in kind.params}


def split_options(model: Any, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``params`` -> (the model kind's target parameters, the rest). A target parameter of another
    kind of model is refused here, naming the kind it belongs to."""
    specs = target_params(model)
    options = {k: v for k, v in params.items() if k in specs}
    rest = {k: v for k, v in params.items() if k not in specs}
    for kind in MODEL_KINDS.values():
        for spec in kind.params:
            if spec.name in rest and rest[spec.name] is not None:
                name = model.name if isinstance(model, ModelAdapter) else clean_model(model)
                raise UserError(
                    f"{spec.name} is a parameter of {kind.prefix}<...> models ({kind.description}); "
                    f"the model here is {shown(name, 60)}"
                )
            rest.pop(spec.name, None)
    return options, rest


def clean_options(model: Any, options: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The model kind's target parameters checked, with their defaults (None: the model decides).
    Text from a CLI or a CSV cell is read as a number where the parameter is one."""
    labels = labels or {}
    specs = target_params(model)
    unknown = set(options) - set(specs)
    if unknown:
        raise UserError(f"unknown parameter(s): {', '.join(sorted(map(str, unknown)))}")
    checked = {}
    for name, spec in specs.items():
        value = options.get(name)
        if isinstance(value, str) and spec.kind in (int, float) and not spec.choices and spec.parse is None:
            value = _number_text(value)
        checked[name] = spec.default if value is None else spec.check(value, labels.get(name))
    return checked


def _number_text(text: str) -> Any:
    """Text -> an int or a float where it reads as one; blank -> None; else the text (refused by the check)."""
    text = text.strip()
    if not text:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _token_notes(adapter: ModelAdapter, target: Target) -> list[str]:
    """Notes on prompts the model will cut (over its token limit) or cannot read (no known word)."""
    notes = []
    limit = adapter.max_prompt_tokens
    for i, p in enumerate(target.prompts):
        which = "the prompt" if i == 0 else "the contrast prompt"
        count = adapter.prompt_tokens(p) if limit is not None else None
        if count is not None and limit is not None and count > limit:
            notes.append(
                f"{which} {shown(p)} is longer than the model's limit of {limit} tokens; "
                f"only its first {limit} tokens were used"
            )
        if adapter.prompt_unknown(p):
            notes.append(
                f"the model's text encoder knows none of the words in {which} {shown(p)}, so its score means little"
            )
    return notes


@dataclass(frozen=True)
class Request:
    """A validated request: what to explain and how (no model, no image yet)."""

    target: Target
    methods: tuple[str, ...]
    params: dict[str, Any]
    notes: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)  # the model kind's target parameters


@dataclass(frozen=True)
class Prepared:
    """A model, an image at its input size on its device, and the prompt's score: what every
    method and the curves start from."""

    adapter: ModelAdapter
    pixels: torch.Tensor  # [1, 3, H, W] in [0, 1], on the adapter's device
    target: Target  # as the model resolved it (a VLM's answer, a detector's box)
    score: float
    prompt_probabilities: dict[str, float] | None
    notes: tuple[str, ...] = ()
    probability: float | None = None  # the target's probability in [0, 1] (None: the model gives none)
    score_meaning: ScoreMeaning | None = None
    photo_size: tuple[int, int] | None = None  # the photo's (width, height) the target refers to


def validate(
    prompt: Any,
    contrast: Sequence[Any] | None = None,
    methods: Any = None,
    labels: dict[str, str] | None = None,
    model: Any = None,
    **params: Any,
) -> Request:
    """Check everything a user typed before any model work; UserError (one sentence) otherwise.
    ``model`` (a name or an adapter) says which target parameters ``params`` may hold."""
    options, params = split_options(model, params)
    checked = validate_params(params, labels)
    names = clean_methods(methods)
    target, notes = clean_prompts(prompt, contrast)
    return Request(target, tuple(names), checked, tuple(notes), clean_options(model, options, labels))


def resolve_model(model: str | ModelAdapter | None, device: Any = "cpu") -> ModelAdapter:
    """A model name (loaded and cached on ``device``) or a ready adapter (used as it is)."""
    if isinstance(model, ModelAdapter):
        return model
    return load_model(clean_model(model), device)


def prepare(
    image: ImageInput,
    target: Target,
    adapter: ModelAdapter,
    options: dict[str, Any] | None = None,
    photo_size: tuple[int, int] | None = None,
) -> Prepared:
    """Open the image, put it at the model's input size on its device, let the model resolve the
    target (``ModelAdapter.resolve_target``: a VLM's answer, a detector's box; ``options`` are its
    target parameters) and score it once, with its probability. ``photo_size``: the (width,
    height) the options' pixels refer to when ``image`` is only the model's view of the photo (a
    replay from a result: ``Result.photo_size``); default the image's own size."""
    pil = open_image(image)
    pixels = adapter.load_image(pil).to(adapter.device)
    options = {**{p.name: p.default for p in adapter.target_params}, **(options or {})}
    size = (int(photo_size[0]), int(photo_size[1])) if photo_size is not None else pil.size
    target, target_notes = adapter.resolve_target(pixels, target, options, size)
    notes = _token_notes(adapter, target) + list(target_notes)
    with torch.no_grad():
        scores, chances = adapter.scores(pixels, target)
    score, probability = float(scores[0]), float(chances[0])
    probabilities = adapter.prompt_probabilities(pixels, target) if target.contrast else None
    return Prepared(
        adapter,
        pixels,
        target,
        score,
        probabilities,
        tuple(notes),
        probability if math.isfinite(probability) else None,
        adapter.score_meaning(target),
        size,
    )


def candidate_targets(
    image: ImageInput,
    prompt: str,
    model: str | ModelAdapter = DEFAULT_MODEL,
    device: str = "cpu",
    **options: Any,
) -> list[Target]:
    """What ``model`` offers to explain for ``prompt`` on ``image``, its default first: a VLM's
    greedy answer to the question (one ``AnswerTarget``: ``answer``, ``tokens``); a detector's
    boxes for the query with their probabilities (a ``BoxTarget`` each, best first, ``box`` in
    pixels of the image as given, ``label_probability``); a prompt model's prompt. ``options``
    are the model kind's target parameters (``max_new_tokens``, ``box_threshold``, ...).

    One forward pass (a detector) or one generation (a VLM), for the app to show before the
    maps: pass the chosen target back as ``explain(image, chosen, model=...)`` to explain it as
    it is (no second generation). Never empty: UserError on bad input, or with the model's
    reason when it offers nothing (a detector: no box reaches ``box_threshold``).
    """
    options, rest = split_options(model, options)  # before any model loads
    if rest:
        raise UserError(f"unknown parameter(s): {', '.join(sorted(rest))}")
    checked = clean_options(model, options)
    target, _ = clean_prompts(prompt, None)
    pil = open_image(image)
    adapter = resolve_model(model, device)
    pixels = adapter.load_image(pil).to(adapter.device)
    offered = adapter.candidate_targets(pixels, target, checked, pil.size)
    if not offered:  # the model's own sentence for why (a detector: no box above its threshold)
        adapter.resolve_target(pixels, target, checked, pil.size)
        raise UserError(f"the model offers nothing to explain for {shown(target.prompt, 60)} on this photo")
    return offered


CURVES_PROGRESS_SHARE = 0.3  # of the progress bar, against the methods' shares (Method.progress_share)


def _within(progress: ProgressFn, start: float, end: float) -> ProgressFn:
    """A progress function for a stage that fills ``start``..``end`` of ``progress``'s bar."""
    return lambda fraction, text, **details: progress(min(1.0, start + (end - start) * fraction), text, **details)


def iter_methods(
    prepared: Prepared, methods: Sequence[str], params: dict[str, Any], progress: ProgressFn = no_progress
) -> Iterator[tuple[str, SaliencyMap]]:
    """Each method's map as soon as it is made, in order, each metered on its own (seconds,
    forward and backward passes). ``progress`` goes from 0 to 1 over all of them, each method
    taking its registered share; its reports carry ``method=`` the method running (with the
    details the method adds, e.g. region search's ``preview``)."""
    shares = np.cumsum([0.0] + [get_method(name).progress_share for name in methods])
    for name, start, end in zip(methods, shares[:-1] / shares[-1], shares[1:] / shares[-1]):
        # No global seed: every method draws from its own generators seeded by params["seed"].
        yield (
            name,
            run_method(
                name,
                prepared.adapter,
                prepared.pixels,
                prepared.target,
                progress=_within(_naming(progress, name), start, end),
                **method_kwargs(name, params),
            ),
        )


def run_methods(
    prepared: Prepared, methods: Sequence[str], params: dict[str, Any], progress: ProgressFn = no_progress
) -> dict[str, SaliencyMap]:
    """Every method's map (``iter_methods``), by name."""
    return dict(iter_methods(prepared, methods, params, progress))


def _naming(progress: ProgressFn, method: str) -> ProgressFn:
    return lambda fraction, text, **details: progress(fraction, text, **{"method": method, **details})


def method_kwargs(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """What run_method passes to method ``name``: its own parameters and the protocol's substrate and seed."""
    return {"substrate": params["substrate"], "seed": params["seed"], **get_method(name).kwargs(params)}


def check_sanity(
    prepared: Prepared, maps: dict[str, SaliencyMap], params: dict[str, Any], progress: ProgressFn = no_progress
) -> SanityCheck:
    """The model-parameter randomisation test (Adebayo et al., NeurIPS 2018; explainers/sanity.py)
    for these maps: each method again, with the parameters it ran with, on a seeded copy of the
    model randomised stage by stage from the top layer down."""
    return cascading_randomization(
        prepared.adapter,
        prepared.pixels,
        prepared.target,
        {n: m.values for n, m in maps.items()},
        {n: method_kwargs(n, params) for n in maps},
        seed=params["seed"],
        progress=progress,
    )


def ranking_labels(
    prepared: Prepared, params: dict[str, Any], maps: Mapping[str, SaliencyMap | np.ndarray]
) -> np.ndarray | None:
    """The regions the curves flip or the random reference shuffles, where either asks for regions:
    those of the first map that carries them (region search's), else SLIC superpixels at the
    default count; None when neither asks for regions."""
    if "regions" not in (params["random_ranking"], params["curve_ranking"]):
        return None
    labels = next((m.regions for m in maps.values() if isinstance(m, SaliencyMap) and m.regions is not None), None)
    return labels if labels is not None else region_labels(prepared.pixels, DEFAULT_REGIONS, "slic")


def score_curves(
    prepared: Prepared,
    maps: Mapping[str, SaliencyMap | np.ndarray],
    params: dict[str, Any],
    progress: ProgressFn = no_progress,
) -> tuple[dict[str, dict[str, Curves]], dict[str, RandomReference]]:
    """The faithfulness protocol for these maps (SaliencyMaps, or bare ``[H, W]`` arrays) on every
    scoring substrate (``score_substrates``): ``({substrate: {method: Curves}}, {substrate:
    RandomReference})``, the headline first."""
    values = {name: m.values if isinstance(m, SaliencyMap) else m for name, m in maps.items()}
    return metrics.faithfulness_by_substrate(
        prepared.adapter,
        prepared.pixels,
        prepared.target,
        values,
        scoring_substrates(params),
        steps=params["curve_steps"],
        n_random=params["n_random"],
        seed=params["seed"],
        progress=progress,
        random_ranking=params["random_ranking"],
        region_labels=ranking_labels(prepared, params, maps),
        curve_ranking=params["curve_ranking"],
    )


def evaluate_maps(
    prepared: Prepared,
    maps: Mapping[str, SaliencyMap | np.ndarray],
    params: dict[str, Any],
    progress: ProgressFn = no_progress,
) -> tuple[dict[str, Curves], RandomReference]:
    """The faithfulness protocol for these maps on the headline scoring substrate (the first of
    ``score_substrates``): their curves and the random reference. ``score_curves`` gives every one."""
    curves, references = score_curves(
        prepared, maps, {**params, "score_substrates": scoring_substrates(params)[:1]}, progress
    )
    first = next(iter(references))
    return curves[first], references[first]


@dataclass(frozen=True)
class MethodMap:
    """A stage of ``explain_stages``: one method's map, as soon as it is made (before the curves)."""

    method: str
    saliency: SaliencyMap


Stage = Prepared | MethodMap | Result


def explain_stages(
    image: ImageInput,
    prompt: str | Target,
    contrast: Sequence[str] | None = None,
    model: str | ModelAdapter = DEFAULT_MODEL,
    methods: Sequence[str] | None = None,
    progress: ProgressFn = no_progress,
    device: str = "cpu",
    sanity: bool = False,
    **params: Any,
) -> Iterator[Stage]:
    """``explain`` one stage at a time, for front ends that show results as they come: yields the
    ``Prepared`` photo (the model's score of it), then one ``MethodMap`` per method as it finishes,
    then the ``Result`` (curves and verdicts in). With ``sanity=True`` a second, final Result
    follows with the sanity check. The last Result is what ``explain`` returns; bad input raises
    ``UserError`` before the first stage."""
    started = time.perf_counter()
    request = validate(prompt, contrast, DEFAULT_METHODS if methods is None else methods, model=model, **params)
    if not isinstance(sanity, (bool, np.bool_)):
        raise UserError(f"sanity must be True or False, not {shown(sanity)}")
    photo = open_image(image)  # a bad image is refused before any model loads
    adapter = resolve_model(model, device)
    check_abilities(adapter, request.methods)
    prepared = prepare(photo, request.target, adapter, request.options)
    # A model that cannot be randomised is refused before the methods run; the test re-runs every
    # method once per stage, which sizes its share of the progress bar.
    sanity_share = len(sanity_stages(prepared.adapter)) if sanity else 0
    method_shares = sum(get_method(name).progress_share for name in request.methods)
    total = method_shares * (1 + sanity_share) + CURVES_PROGRESS_SHARE
    methods_end, curves_end = method_shares / total, (method_shares + CURVES_PROGRESS_SHARE) / total
    yield prepared
    maps: dict[str, SaliencyMap] = {}
    for name, saliency in iter_methods(
        prepared, request.methods, request.params, progress=_within(progress, 0.0, methods_end)
    ):
        maps[name] = saliency
        yield MethodMap(name, saliency)
    curves, references = score_curves(
        prepared,
        maps,
        request.params,
        progress=_within(progress, methods_end, curves_end),
    )
    check = None
    if sanity:
        yield assemble(request, prepared, maps, curves, references, seconds=time.perf_counter() - started)
        check = check_sanity(prepared, maps, request.params, progress=_within(progress, curves_end, 1.0))
    progress(1.0, "done")
    yield assemble(request, prepared, maps, curves, references, seconds=time.perf_counter() - started, sanity=check)


def explain(
    image: ImageInput,
    prompt: str | Target,
    contrast: Sequence[str] | None = None,
    model: str | ModelAdapter = DEFAULT_MODEL,
    methods: Sequence[str] | None = None,
    progress: ProgressFn = no_progress,
    device: str = "cpu",
    sanity: bool = False,
    **params: Any,
) -> Result:
    """Explain why ``model`` scores ``image`` as ``prompt``, with every method in ``methods``.

    ``model`` is a registered name (``"bundled"``, ``"clip:<hub id>"``, ``"vlm:<hub id>"``,
    ``"detector:<hub id>"``), loaded on ``device`` (``"auto"`` picks CUDA where there is one), or a
    ready ``ModelAdapter`` (e.g. a ``ClassifierAdapter`` around your own classifier), used as it
    is. A VLM explains its answer to the question ``prompt``, a detector its box for the query
    ``prompt``; their target parameters (``answer``, ``answer_token``, ``box``, ...) go with
    ``params``, or ``prompt`` is a target ``candidate_targets`` offered, explained as it is. ``methods`` default to the
    registry's default ones. Parameters: ``PARAMS`` (the protocol's and each method's, with
    their ranges and defaults). ``sanity=True`` adds the model-parameter randomisation test
    (``Result.sanity``; every method again at each stage, so several times the methods' cost).
    Raises ``UserError`` (one plain sentence) on bad input.

    ``explain_stages`` gives the same run one stage at a time (each map as it finishes). The
    stages are public for callers that already hold some of them (data-set evaluation,
    benchmarks): ``validate`` -> ``prepare`` -> ``run_methods`` -> ``evaluate_maps`` (-> ``check_sanity``)
    -> ``assemble``.
    """
    result = None
    for stage in explain_stages(image, prompt, contrast, model, methods, progress, device, sanity, **params):
        if isinstance(stage, Result):
            result = stage
    assert result is not None  # explain_stages always ends with the Result
    return result


def image_view(pixels: torch.Tensor) -> np.ndarray:
    """``[1, 3, H, W]`` pixels in [0, 1] -> the uint8 ``[H, W, 3]`` picture the maps refer to (Result.image)."""
    return (pixels[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def check_abilities(adapter: ModelAdapter, methods: Sequence[str]) -> None:
    """Refuse methods the model cannot serve (gradient methods on a model that declares no gradients)."""
    needs_gradients = [get_method(name).title for name in methods if not get_method(name).black_box]
    if needs_gradients and not adapter.gradients:
        which = " and ".join(needs_gradients)
        black_box = ", ".join(name for name, m in METHODS.items() if m.black_box)
        raise UserError(
            f"{which} {'needs' if len(needs_gradients) == 1 else 'need'} the model's gradients, which "
            f"{adapter.name!r} does not offer; choose methods that only ask for scores ({black_box})"
        )


def assemble(
    request: Request,
    prepared: Prepared,
    maps: dict[str, SaliencyMap],
    curves: dict[str, dict[str, Curves]],
    references: dict[str, RandomReference],
    seconds: float,
    sanity: SanityCheck | None = None,
) -> Result:
    """The Result of one request: maps, their curves and the random reference on each scoring
    substrate (``score_curves``' pair; the first substrate is the headline), every parameter, the
    notes (and the sanity check, where one ran)."""
    first = next(iter(references))
    return Result(
        model=prepared.adapter.name,
        target=prepared.target,
        score=prepared.score,
        prompt_probabilities=prepared.prompt_probabilities,
        image=image_view(prepared.pixels),
        methods={
            n: MethodResult(maps[n], curves[first][n], {s: by_method[n] for s, by_method in curves.items()})
            for n in request.methods
        },
        random=references[first],
        params={"methods": list(request.methods), **request.params, **request.options},
        seconds=seconds,
        notes=request.notes + prepared.notes,
        sanity=sanity,
        probability=prepared.probability,
        score_meaning=prepared.score_meaning,
        random_by_substrate=dict(references),
        photo_size=prepared.photo_size,
    )


def describe_prompt(model: str | ModelAdapter, prompt: str) -> list[tuple[str, float]] | None:
    """What a prompt means to ``model`` where the model can say: a classifier's matched classes
    with their weights (best 3); None for models that score text directly (CLIP)."""
    target, _ = clean_prompts(prompt, None)
    return resolve_model(model).matched_classes(target.prompt)
