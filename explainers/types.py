"""The value types that flow through the engine. All frozen: no state passes between calls."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

# progress(fraction in [0, 1], description) -- the app maps it onto gr.Progress, the CLI ignores it.
ProgressFn = Callable[[float, str], None]


def no_progress(fraction: float, description: str) -> None:  # noqa: ARG001 - the null ProgressFn
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
    """A map over the model-input pixels (``values`` is ``[H, W]``, higher = more important)."""

    method: str
    values: np.ndarray
    seconds: float
    forward_passes: int
    backward_passes: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve under the one faithfulness protocol (ARCHITECTURE.md).

    ``scores`` are the raw target scores at each fraction; ``normalized`` maps the substrate's
    score to 0 and the full image's score to 1; ``auc`` is the trapezoid area of ``normalized``
    over fractions 0..1.
    """

    kind: str  # "deletion" | "insertion"
    fractions: np.ndarray
    scores: np.ndarray
    normalized: np.ndarray
    auc: float
    full_score: float
    substrate_score: float
    forward_passes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class MethodResult:
    saliency: SaliencyMap
    deletion: Curve
    insertion: Curve


@dataclass(frozen=True)
class Result:
    """Everything one ``explain`` call produced: enough to render, export and reproduce."""

    model: str
    target: Target
    score: float
    prompt_probabilities: Optional[dict[str, float]]
    image: np.ndarray  # uint8 [H, W, 3], the model-input view of the image the maps refer to
    methods: dict[str, MethodResult]
    random: MethodResult  # the random-order reference (its saliency is a placeholder)
    params: dict[str, Any]
    seconds: float
    notes: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        """The JSON the CLI writes (and the app offers for download); non-finite numbers -> null."""
        return _jsonable({
            "model": self.model,
            "prompt": self.target.prompt,
            "contrast": list(self.target.contrast),
            "score": self.score,
            "prompt_probabilities": self.prompt_probabilities,
            "methods": {
                name: {
                    "insertion_auc": r.insertion.auc,
                    "deletion_auc": r.deletion.auc,
                    "seconds": r.saliency.seconds,
                    "forward_passes": r.saliency.forward_passes,
                    "backward_passes": r.saliency.backward_passes,
                    "curve_forward_passes": r.insertion.forward_passes + r.deletion.forward_passes,
                    "curve_seconds": r.insertion.seconds + r.deletion.seconds,
                    "meta": _jsonable(r.saliency.meta),
                    "curves": _curves_json(r),
                }
                for name, r in self.methods.items()
            },
            "random": {
                "insertion_auc": self.random.insertion.auc,
                "deletion_auc": self.random.deletion.auc,
                "curves": _curves_json(self.random),
            },
            "params": _jsonable(self.params),
            "seconds": self.seconds,
            "notes": list(self.notes),
        })


def _curves_json(r: MethodResult) -> dict[str, Any]:
    return {
        c.kind: {
            "fractions": c.fractions.tolist(),
            "scores": c.scores.tolist(),
            "normalized": c.normalized.tolist(),
            "full_score": c.full_score,
            "substrate_score": c.substrate_score,
        }
        for c in (r.deletion, r.insertion)
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
