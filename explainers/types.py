"""The value types that flow through the engine. All frozen: no state passes between calls."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

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
    A model kind with another question to explain subclasses this in its adapter file (a VLM's
    answer: ``models.vlm.AnswerTarget``; a detector's box: ``models.detector.BoxTarget``), with its
    own ``kind`` and ``summary``; ``prompt`` stays what the user typed.
    """

    prompt: str
    contrast: tuple[str, ...] = ()
    kind: ClassVar[str] = "prompt"

    @property
    def prompts(self) -> tuple[str, ...]:
        return (self.prompt, *self.contrast)

    def summary(self) -> dict[str, Any]:
        """What result.json keeps of the target (its ``"target"``); each kind of target says its own."""
        return {"kind": self.kind, "prompt": self.prompt, "contrast": list(self.contrast)}

    def describe(self) -> str:
        """The target in a few words, for the page's headline."""
        return f"“{self.prompt}”"

    # --- what the app offers a user to pick (app_runtime.offer_targets) ----------------------
    def pinned(self) -> dict[str, Any]:
        """The model kind's target parameters that name exactly this target (a VLM's answer and
        token, a detector's box), so that a page can pass the user's pick back as text; {} for a
        prompt, which the prompt itself names."""
        return {}

    def parts(self) -> list[Target]:
        """Narrower targets within this one a user may pick instead (a VLM's answer: each of its
        tokens); none for a prompt."""
        return []

    def outline(self) -> tuple[float, float, float, float] | None:
        """The part of the photo this target is about, as fractions (x0, y0, x1, y1) of its width
        and height, for the pictures to outline (a detector's box); None for the whole photo."""
        return None

    def choice_label(self) -> str:
        """The target as a page's list of choices names it."""
        return self.describe()


@dataclass(frozen=True)
class SavedTarget(Target):
    """A target read back from a result's bundle (``render.bundle_from_zip``): what result.json
    kept of it (``summary``, ``pinned``, ``outline``), whatever its kind was, so that replays draw
    it as the run did without the model kind's class."""

    saved: tuple[tuple[str, Any], ...] = ()  # the summary's items (a tuple: the dataclass is frozen)
    saved_pinned: tuple[tuple[str, Any], ...] = ()
    saved_outline: tuple[float, float, float, float] | None = None

    def summary(self) -> dict[str, Any]:
        return dict(self.saved) or super().summary()

    def pinned(self) -> dict[str, Any]:
        return dict(self.saved_pinned)

    def outline(self) -> tuple[float, float, float, float] | None:
        return self.saved_outline


# The margin by which the photo's score must beat the fully removed image's (score units) for the
# normalised curves to mean something, per kind of score. Log-probabilities and logits: ln 2, the
# photo at least twice as likely (as odds, for a logit) as the image with everything removed;
# probabilities: 0.05, five percentage points. Below it the normalisation (substrate 0, photo 1)
# divides by a difference that is mostly noise, and the photo is listed apart.
MIN_SPAN: dict[str, float] = {"log-probability": math.log(2.0), "logit": math.log(2.0), "probability": 0.05}


@dataclass(frozen=True)
class ScoreMeaning:
    """What a model's score of a target is, as the model declares it (``ModelAdapter.score_meaning``).

    ``name``: ``"log-probability"``, ``"logit"`` or ``"probability"`` (``"score"`` for an adapter
    that declares nothing); ``words``: one sentence for the page; ``min_span``: the photo must beat
    the fully removed image by this much (score units), else its normalised curves are
    ill-conditioned and a data set lists it apart (``MIN_SPAN``).
    """

    name: str
    words: str
    min_span: float

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "words": self.words, "min_span": self.min_span}


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
    score to 0 and the full image's score to 1 (unbounded: a part of the photo may score above
    the whole, or below the substrate); ``auc`` is the trapezoid area over fractions 0..1 of
    ``normalized`` clipped pointwise to [0, 1] (``clipped_auc``), the protocol's bounded figure.
    What clipping cuts off is kept: ``auc_unclipped``, ``peak`` / ``overshoot_area`` (above 1) and
    ``floor`` / ``undershoot_area`` (below 0). ``probabilities`` are the target's probability at
    each fraction (the adapter's, in [0, 1]; None where it gives none) and ``auc_probability``
    their plain AUC, the SMDL/RISE number. ``substrate`` names what removed pixels became.
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
    probabilities: np.ndarray | None = None
    substrate: str = "black"  # the protocol's default substrate

    @property
    def higher_is_better(self) -> bool:
        return CURVE_KINDS[self.kind]

    @property
    def auc_unclipped(self) -> float:
        return _area(self.normalized, self.fractions)

    @property
    def peak(self) -> float:
        """The highest point of the unclipped normalised curve (for insertion, SMDL's "highest
        confidence": above 1 when some part of the photo alone scores higher than the whole)."""
        finite = _finite(self.normalized)
        return float(finite.max()) if finite.size else float("nan")

    @property
    def peak_fraction(self) -> float:
        """The fraction of the pixels at ``peak`` (the first, if several)."""
        values = np.where(np.isfinite(self.normalized), self.normalized, -np.inf)
        return float(self.fractions[int(np.argmax(values))]) if values.size else float("nan")

    @property
    def floor(self) -> float:
        """The lowest point of the unclipped normalised curve (for deletion: below 0 when removing
        the first pixels leaves an image that scores below the substrate itself)."""
        finite = _finite(self.normalized)
        return float(finite.min()) if finite.size else float("nan")

    @property
    def overshoot_area(self) -> float:
        """The area of the normalised curve above 1 (pointwise), which clipping leaves out."""
        return _area(np.maximum(np.asarray(self.normalized, dtype=np.float64) - 1.0, 0.0), self.fractions)

    @property
    def undershoot_area(self) -> float:
        """The area of the normalised curve below 0 (pointwise), which clipping leaves out:
        ``auc_unclipped = auc + overshoot_area - undershoot_area``."""
        return _area(np.maximum(-np.asarray(self.normalized, dtype=np.float64), 0.0), self.fractions)

    @property
    def auc_probability(self) -> float:
        """The AUC of the raw probability curve (no normalisation): what SMDL and RISE report."""
        if self.probabilities is None:
            return float("nan")
        return _area(self.probabilities, self.fractions)


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def _area(values: np.ndarray, fractions: np.ndarray) -> float:
    return float(np.trapezoid(np.asarray(values, dtype=np.float64), np.asarray(fractions, dtype=np.float64)))


def clipped_auc(normalized: np.ndarray, fractions: np.ndarray) -> float:
    """The protocol's AUC: the trapezoid area of the normalised curve clipped pointwise to [0, 1].
    Pointwise, so that on one substrate SRG = AUC(insertion) - AUC(deletion) stays AUC(LeRF) -
    AUC(MoRF) (the insertion curve at f is the LeRF deletion curve at 1 - f, point by point)."""
    return _area(np.clip(np.asarray(normalized, dtype=np.float64), 0.0, 1.0), fractions)


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
        """The headline: on the curves clipped to [0, 1] (``Curve.auc``)."""
        return self.insertion.auc - self.deletion.auc

    @property
    def srg_unclipped(self) -> float:
        return self.insertion.auc_unclipped - self.deletion.auc_unclipped

    @property
    def substrate(self) -> str:
        return self.insertion.substrate

    def __iter__(self):
        return iter((self.deletion, self.insertion))

    def figures(self) -> dict[str, float]:
        """The numbers result.json, rows.csv and the summaries keep of these curves."""
        return {
            "insertion_auc": self.insertion.auc,
            "deletion_auc": self.deletion.auc,
            "srg": self.srg,
            "srg_unclipped": self.srg_unclipped,
            "insertion_auc_unclipped": self.insertion.auc_unclipped,
            "deletion_auc_unclipped": self.deletion.auc_unclipped,
            "insertion_peak": self.insertion.peak,
            "insertion_peak_fraction": self.insertion.peak_fraction,
            "overshoot_area": self.insertion.overshoot_area,
            "deletion_floor": self.deletion.floor,
            "insertion_auc_probability": self.insertion.auc_probability,
            "deletion_auc_probability": self.deletion.auc_probability,
        }


@dataclass(frozen=True)
class MethodResult:
    """A method's map and its curves on each scoring substrate (``by_substrate``, in the order
    asked; ``curves`` is the first's, the headline)."""

    saliency: SaliencyMap
    curves: Curves
    by_substrate: dict[str, Curves] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.by_substrate:
            object.__setattr__(self, "by_substrate", {self.curves.substrate: self.curves})

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
    srgs: tuple[float, ...]  # SRG of each ordering (clipped, as the maps')
    ranking: str
    seed: int
    srgs_unclipped: tuple[float, ...] = ()

    @property
    def substrate(self) -> str:
        return self.curves.substrate

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
    that explains the model should give low values once the model is destroyed. A blank map
    (every value equal: e.g. Grad-CAM's ReLU zeroes the whole map of a randomised network) is no
    pass: ``blank`` is set and both figures are NaN, never a low correlation."""

    stage: str  # the stage's label, as the adapter declares it (ModelAdapter.randomization_stages)
    spearman: float  # NaN where a map is blank (sanity.compare_maps)
    ssim: float
    values: np.ndarray  # the randomised model's map, [H, W] (for the app's strip; not in the JSON)
    seconds: float = 0.0
    forward_passes: int = 0
    backward_passes: int = 0
    blank: bool = False


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
    # per method: the trained map's rank correlation with maps that know nothing of the model
    # ({"centre": a centred Gaussian blob, "edges": the photo's edge magnitude}; sanity.reference_maps)
    references: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def forward_passes(self) -> int:
        return sum(s.forward_passes for stages in self.methods.values() for s in stages)

    @property
    def backward_passes(self) -> int:
        return sum(s.backward_passes for stages in self.methods.values() for s in stages)

    def summary(self) -> dict[str, list[dict[str, Any]]]:
        """What result.json keeps: ``{method: [{"stage", "spearman", "ssim", "blank"}, ...]}`` (no maps)."""
        return {
            name: [{"stage": s.stage, "spearman": s.spearman, "ssim": s.ssim, "blank": s.blank} for s in stages]
            for name, stages in self.methods.items()
        }

    def reference_summary(self) -> dict[str, dict[str, float]]:
        """result.json's ``sanity_references``: ``{method: {"centre": rho, "edges": rho}}``."""
        return {name: dict(values) for name, values in self.references.items()}


@dataclass(frozen=True)
class Result:
    """Everything one ``explain`` call produced: enough to render, export and reproduce.

    ``random`` is the random reference on the first scoring substrate (the headline);
    ``random_by_substrate`` holds it on each scoring substrate, as ``MethodResult.by_substrate``
    holds each map's curves. ``probability`` is the target's probability in [0, 1] as the model
    gives it (None where it gives none); ``score_meaning`` what the score is (the model's word).
    """

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
    probability: float | None = None
    score_meaning: ScoreMeaning | None = None
    random_by_substrate: dict[str, RandomReference] = field(default_factory=dict)
    # The photo's (width, height) as given, which a target's parameters refer to (a detector's box
    # is in its pixels) while ``image`` is the model's view of it; None where unknown.
    photo_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not self.random_by_substrate:
            object.__setattr__(self, "random_by_substrate", {self.random.substrate: self.random})

    @property
    def substrates(self) -> tuple[str, ...]:
        """The scoring substrates, the headline first."""
        return tuple(self.random_by_substrate)

    def more_faithful_than_random(self, method: str, substrate: str | None = None) -> bool:
        """The protocol's verdict: the method's SRG is above the random reference's mean SRG
        and above every random ordering's (so it is not within the spread of chance), on
        ``substrate`` (default: the headline one)."""
        if substrate is None:
            return beats_random(self.methods[method].srg, self.random)
        return beats_random(self.methods[method].by_substrate[substrate].srg, self.random_by_substrate[substrate])

    def _method_json(self, name: str, substrate: str, curves: Curves) -> dict[str, Any]:
        return {
            **curves.figures(),
            "more_faithful_than_random": self.more_faithful_than_random(name, substrate),
            "curve_forward_passes": curves.insertion.forward_passes + curves.deletion.forward_passes,
            "curve_seconds": curves.insertion.seconds + curves.deletion.seconds,
            "curves": _curves_json(curves),
        }

    @staticmethod
    def _random_json(reference: RandomReference) -> dict[str, Any]:
        return {
            **reference.curves.figures(),
            "srg_max": max(reference.srgs),
            "srg_orderings": list(reference.srgs),
            "srg_unclipped_orderings": list(reference.srgs_unclipped),
            "curves": _curves_json(reference.curves),
        }

    def summary(self) -> dict[str, Any]:
        """The JSON the CLI writes (and the app offers for download); non-finite numbers -> null.

        Per method (and for ``random``) the top-level figures are the first scoring substrate's;
        ``substrates`` holds the same figures (and curves) on every scoring substrate."""
        methods = {}
        for name, r in self.methods.items():
            first = next(iter(r.by_substrate))
            methods[name] = {
                **self._method_json(name, first, r.by_substrate[first]),
                "seconds": r.saliency.seconds,
                "forward_passes": r.saliency.forward_passes,
                "backward_passes": r.saliency.backward_passes,
                "meta": _jsonable(r.saliency.meta),
                "substrates": {s: self._method_json(name, s, c) for s, c in r.by_substrate.items()},
            }
        return _jsonable(
            {
                "model": self.model,
                "target": self.target.summary(),
                # How to name this target again (its kind's parameters) and the part of the photo it
                # is about: a bundle read back keeps them (SavedTarget) without knowing the kind.
                "target_pinned": self.target.pinned(),
                "target_outline": _jsonable(self.target.outline()),
                "photo_size": _jsonable(self.photo_size),
                "prompt": self.target.prompt,
                "contrast": list(self.target.contrast),
                "score": self.score,
                "probability": self.probability,
                "score_meaning": self.score_meaning.summary() if self.score_meaning is not None else None,
                "prompt_probabilities": self.prompt_probabilities,
                "score_substrates": list(self.substrates),
                "methods": methods,
                "random": {
                    **self._random_json(self.random),
                    "ranking": self.random.ranking,
                    "orderings": self.random.orderings,
                    "seed": self.random.seed,
                    "substrates": {s: self._random_json(ref) for s, ref in self.random_by_substrate.items()},
                },
                **(
                    {"sanity": self.sanity.summary(), "sanity_references": self.sanity.reference_summary()}
                    if self.sanity is not None
                    else {}
                ),
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
            "probabilities": None if c.probabilities is None else np.asarray(c.probabilities).tolist(),
            "full_score": c.full_score,
            "substrate_score": c.substrate_score,
            "substrate": c.substrate,
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
