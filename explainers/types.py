"""The value types that flow through the engine. All frozen: no state passes between calls."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# progress(fraction in [0, 1], description, **details) -- the app maps it onto gr.Progress, the CLI
# ignores it. Details a stage may add: preview=[H, W] map found so far (region search, anytime).
ProgressFn = Callable[..., None]


def no_progress(fraction: float, description: str, **details: Any) -> None:  # noqa: ARG001 - the null ProgressFn
    return None


@dataclass(frozen=True)
class Target:
    """What we explain: a prompt, optionally against contrast prompts.

    Without contrast prompts the score is the model's own prompt score; with them it is the
    softmax probability of ``prompt`` among ``(prompt, *contrast)`` -- the score SMDL/LIMA use.
    """

    prompt: str
    contrast: tuple[str, ...] = ()

    @property
    def prompts(self) -> tuple[str, ...]:
        return (self.prompt, *self.contrast)


@dataclass(frozen=True)
class SaliencyMap:
    """A map over the model-input pixels (``values`` is ``[H, W]``, higher = more important).

    A method returns the map and its ``meta``; the cost (seconds, passes) is filled in by the
    meter that ran it (``explainers.methods.run_method``), never by the method itself, and so are
    ``title`` and ``colour`` (from the method's registry entry). What a picture of the map needs
    travels with it: ``regions`` (``[H, W]`` int labels) for a map painted region by region.
    """

    method: str
    values: np.ndarray
    seconds: float = 0.0
    forward_passes: int = 0
    backward_passes: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    regions: np.ndarray | None = None  # [H, W] int labels of a map painted per region (region search)
    title: str = ""  # what the page calls the method (its registry title)
    colour: str = ""  # its line on the curve plots (its registry colour)


# What the page, the plots and the tables call the random reference.
RANDOM_TITLE = "Random order"

# Every kind of curve the protocol draws, and whether a faithful map makes its AUC higher.
CURVE_KINDS: dict[str, bool] = {"deletion": False, "insertion": True}


@dataclass(frozen=True)
class Curve:
    """One curve of the faithfulness protocol (ARCHITECTURE.md): ``kind`` is a key of CURVE_KINDS.

    ``scores`` are the raw target scores at each fraction; ``normalized`` maps the substrate's
    score to 0 and the full image's score to 1; ``auc`` is the trapezoid area of ``normalized``
    over fractions 0..1.
    """

    kind: str
    fractions: np.ndarray
    scores: np.ndarray
    normalized: np.ndarray
    auc: float
    full_score: float
    substrate_score: float
    forward_passes: int = 0
    seconds: float = 0.0

    @property
    def higher_is_better(self) -> bool:
        return CURVE_KINDS[self.kind]


@dataclass(frozen=True)
class Curves:
    """The deletion and insertion curves of one pixel ordering, and its headline figure.

    SRG, the symmetric relevance gain = AUC(insertion) - AUC(deletion). On one substrate the
    insertion image at fraction f is the least-relevant-first deletion image at 1 - f, so SRG
    is AUC(LeRF) - AUC(MoRF) of Bluecher et al. (TMLR 2024, "Decoupling pixel flipping and
    occlusion strategy"): damage done by an unnatural substrate hits both curves alike and
    cancels, and a random ordering scores about 0.
    """

    deletion: Curve
    insertion: Curve

    @property
    def srg(self) -> float:
        return self.insertion.auc - self.deletion.auc

    def __iter__(self):
        return iter((self.deletion, self.insertion))


@dataclass(frozen=True)
class MethodResult:
    """A method's map and its curves."""

    saliency: SaliencyMap
    curves: Curves

    @property
    def deletion(self) -> Curve:
        return self.curves.deletion

    @property
    def insertion(self) -> Curve:
        return self.curves.insertion

    @property
    def srg(self) -> float:
        return self.curves.srg


@dataclass(frozen=True)
class RandomReference:
    """The curves of random orderings: their mean curves and each ordering's SRG (its spread).

    ``ranking`` is what is shuffled: single ``"pixels"``, or the ``"regions"`` region search
    uses (so a map's advantage from its granularity alone shows).
    """

    curves: Curves  # the mean deletion and insertion curves over the orderings
    srgs: tuple[float, ...]  # SRG of each ordering
    ranking: str
    seed: int

    @property
    def deletion(self) -> Curve:
        return self.curves.deletion

    @property
    def insertion(self) -> Curve:
        return self.curves.insertion

    @property
    def srg(self) -> float:
        return self.curves.srg

    @property
    def orderings(self) -> int:
        return len(self.srgs)


@dataclass(frozen=True)
class SanityStage:
    """One method's map on the model randomised down to one stage of the cascade, compared with
    the method's map on the trained model (Adebayo et al., NeurIPS 2018): Spearman's rank
    correlation of the absolute values and SSIM of the absolute maps scaled to [0, 1]. A method
    that explains the model should give low values once the model is destroyed."""

    stage: str  # the stage's label, as the adapter declares it (ModelAdapter.randomization_stages)
    spearman: float  # 0 where a map is blank (sanity.compare_maps)
    ssim: float
    values: np.ndarray  # the randomised model's map, [H, W] (for the app's strip; not in the JSON)
    seconds: float = 0.0
    forward_passes: int = 0
    backward_passes: int = 0


@dataclass(frozen=True)
class SanityCheck:
    """The model-parameter randomisation test of one explain() call: for each method, its map at
    each cumulative stage of the cascade (top layer first), on a seeded, randomised copy of the
    model (the model itself is never touched)."""

    stages: tuple[tuple[str, tuple[str, ...]], ...]  # (label, names of the randomised modules), top first
    methods: dict[str, tuple[SanityStage, ...]]  # per method, one entry per stage, in order
    seed: int
    seconds: float  # all of it: the copy, the randomisation and every map
    randomize_seconds: tuple[float, ...] = ()  # per stage: re-drawing its parameters

    @property
    def forward_passes(self) -> int:
        return sum(s.forward_passes for stages in self.methods.values() for s in stages)

    @property
    def backward_passes(self) -> int:
        return sum(s.backward_passes for stages in self.methods.values() for s in stages)

    def summary(self) -> dict[str, list[dict[str, Any]]]:
        """What result.json keeps: ``{method: [{"stage", "spearman", "ssim"}, ...]}`` (no maps)."""
        return {
            name: [{"stage": s.stage, "spearman": s.spearman, "ssim": s.ssim} for s in stages]
            for name, stages in self.methods.items()
        }


@dataclass(frozen=True)
class Result:
    """Everything one ``explain`` call produced: enough to render, export and reproduce."""

    model: str
    target: Target
    score: float
    prompt_probabilities: dict[str, float] | None
    image: np.ndarray  # uint8 [H, W, 3], the model-input view of the image the maps refer to
    methods: dict[str, MethodResult]
    random: RandomReference
    params: dict[str, Any]
    seconds: float
    notes: tuple[str, ...] = ()
    sanity: SanityCheck | None = None  # the model-randomisation check, if asked

    def more_faithful_than_random(self, method: str) -> bool:
        """The protocol's verdict: the method's SRG is above the random reference's mean SRG
        and above every random ordering's (so it is not within the spread of chance)."""
        return beats_random(self.methods[method].srg, self.random)

    def summary(self) -> dict[str, Any]:
        """The JSON the CLI writes (and the app offers for download); non-finite numbers -> null."""
        return _jsonable(
            {
                "model": self.model,
                "prompt": self.target.prompt,
                "contrast": list(self.target.contrast),
                "score": self.score,
                "prompt_probabilities": self.prompt_probabilities,
                "methods": {
                    name: {
                        "insertion_auc": r.insertion.auc,
                        "deletion_auc": r.deletion.auc,
                        "srg": r.srg,
                        "more_faithful_than_random": self.more_faithful_than_random(name),
                        "seconds": r.saliency.seconds,
                        "forward_passes": r.saliency.forward_passes,
                        "backward_passes": r.saliency.backward_passes,
                        "curve_forward_passes": r.insertion.forward_passes + r.deletion.forward_passes,
                        "curve_seconds": r.insertion.seconds + r.deletion.seconds,
                        "meta": _jsonable(r.saliency.meta),
                        "curves": _curves_json(r.curves),
                    }
                    for name, r in self.methods.items()
                },
                "random": {
                    "insertion_auc": self.random.insertion.auc,
                    "deletion_auc": self.random.deletion.auc,
                    "srg": self.random.srg,
                    "srg_max": max(self.random.srgs),
                    "srg_orderings": list(self.random.srgs),
                    "ranking": self.random.ranking,
                    "orderings": self.random.orderings,
                    "seed": self.random.seed,
                    "curves": _curves_json(self.random.curves),
                },
                **({"sanity": self.sanity.summary()} if self.sanity is not None else {}),
                "params": _jsonable(self.params),
                "seconds": self.seconds,
                "notes": list(self.notes),
            }
        )


def beats_random(srg: float, reference: RandomReference) -> bool:
    """The one "more faithful than random order" check: ``srg`` above the random reference's
    mean SRG and above each random ordering's SRG."""
    return bool(srg > reference.srg and srg > max(reference.srgs))


def _curves_json(curves: Curves) -> dict[str, Any]:
    return {
        c.kind: {
            "fractions": c.fractions.tolist(),
            "scores": c.scores.tolist(),
            "normalized": c.normalized.tolist(),
            "full_score": c.full_score,
            "substrate_score": c.substrate_score,
        }
        for c in curves
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    return value
