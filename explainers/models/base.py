"""The ModelAdapter interface: pixels in [0, 1] -> a differentiable score per image.

Methods and metrics only ever see this interface, so a model adapts by what it declares
(input size, the layer Grad-CAM hooks and how to reshape it), never by subclassing a method.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import torch
from PIL import Image

from ..params import Param
from ..types import MIN_SPAN, ScoreMeaning, Target

# What a contrast target's score is, for every adapter: the prompt's softmax probability among the prompts.
CONTRAST_MEANING = ScoreMeaning(
    "probability",
    "the probability of the prompt rather than the contrast prompts: a softmax of the model's scores of them all",
    MIN_SPAN["probability"],
)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
M = TypeVar("M", bound=torch.nn.Module)


@dataclass(frozen=True)
class ModelKind:
    """One kind of model in the registry (``explainers.models.MODEL_MODULES``): each kind's module
    declares ``MODEL_KIND = ModelKind(...)`` and imports its heavy libraries lazily.

    A model name is ``prefix`` itself (``"bundled"``) or, for a prefix ending in ``":"``, the
    prefix and a source (``"clip:openai/clip-vit-base-patch32"``, a hub id or a folder), which
    ``load`` receives ("" for a whole-name kind).
    """

    name: str  # "bundled", "clip", ...
    prefix: str  # "bundled" (the whole name) or "clip:" (then a hub id or folder)
    load: Callable[[str], ModelAdapter]  # the part after the prefix -> an adapter on the CPU
    choices: tuple[tuple[str, str], ...] = ()  # the app's dropdown: (label, model name)
    params: tuple[Param, ...] = ()  # the target's parameters (a VLM's answer, a detector's box, ...)
    description: str = ""  # what it is, in a few words (the messages that name the kinds)
    usage: str = ""  # how a name of this kind is written, e.g. "clip:<hub id or folder>"

    def source(self, name: str) -> str | None:
        """The part of ``name`` after this kind's prefix ("" for a whole-name kind), or None when
        ``name`` is not of this kind (a prefix with nothing after it is not)."""
        if not self.prefix.endswith(":"):
            return "" if name == self.prefix else None
        if name.startswith(self.prefix) and name[len(self.prefix) :].strip():
            return name[len(self.prefix) :]
        return None


def frozen(module: M) -> M:
    """``module`` in eval mode with every parameter's gradient off (adapters take gradients with
    respect to the pixels only), returned for chaining."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


class PromptCache(Generic[K, V]):
    """A bounded, thread-safe least-recently-used cache (an adapter's per-prompt text features or
    class weights: a long-running app sees endless prompts, and several threads share one adapter).

    Values are computed outside the lock, so two threads asking for the same new key at once may
    both compute it (the same value); no thread waits for another's computation.
    """

    def __init__(self, maxsize: int = 256) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        found = self.get(key)
        if found is None:
            found = make()
            self.put(key, found)
        return found

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def copy(self) -> PromptCache[K, V]:
        clone: PromptCache[K, V] = PromptCache(self.maxsize)
        with self._lock:
            clone._items = OrderedDict(self._items)
        return clone

    def __deepcopy__(self, memo: dict[int, object]) -> PromptCache[K, V]:
        """A deep copy (an adapter's ``copy.deepcopy``) gets its own lock: a lock cannot be copied."""
        clone: PromptCache[K, V] = PromptCache(self.maxsize)
        memo[id(self)] = clone
        with self._lock:
            clone._items = copy.deepcopy(self._items, memo)
        return clone

    def __getitem__(self, key: K) -> V:
        with self._lock:
            self._items.move_to_end(key)  # KeyError when absent
            return self._items[key]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass(frozen=True)
class CamLayer:
    """Where Grad-CAM reads activations: ``module``'s input or output, reshaped to ``[B, C, h, w]``."""

    module: torch.nn.Module
    where: Literal["input", "output"]
    to_grid: Callable[[torch.Tensor], torch.Tensor]


class ModelAdapter:
    """Base for model adapters. Subclasses implement ``prompt_scores`` and ``cam_layer``.

    An adapter is shared (the registry caches it across calls and threads), so it keeps no
    per-call state: passes are counted by a ``Metered`` view made for each call.

    What a model can do is declared here, with defaults, and overridden by the adapters that can
    do more (nothing is found by probing for attributes): ``gradients``, ``classifies`` with
    ``top_class``, ``max_prompt_tokens`` with ``prompt_tokens``, ``prompt_unknown``,
    ``matched_classes``, ``randomization_stages`` / ``randomizable_copy``.
    """

    name: str = "model"
    input_size: tuple[int, int] = (224, 224)
    max_batch: int = 32  # images per forward pass when a caller scores many at once
    max_grad_batch: int = 16  # images per forward+backward pass: autograd keeps the activations
    gradients: bool = True  # the score is differentiable in the pixels (Grad-CAM, IG need it)
    classifies: bool = False  # the model has classes of its own (``top_class``)
    max_prompt_tokens: int | None = None  # the text encoder's limit (None: no limit or unknown)
    # The model kind's own target parameters (a VLM's answer, a detector's box): the same Params
    # its ModelKind declares, so an adapter passed as an instance validates them too.
    target_params: tuple[Param, ...] = ()

    # --- declared abilities -------------------------------------------------------------
    def top_class(self, pixels: torch.Tensor) -> int:
        """The index of the class the model ranks first for ``[1, 3, H, W]`` pixels (``classifies``)."""
        raise NotImplementedError(f"{type(self).__name__} has no classes of its own")

    def prompt_tokens(self, prompt: str) -> int | None:  # noqa: ARG002 - the default knows nothing of it
        """How many tokens the text encoder reads in ``prompt`` (None: unknown)."""
        return None

    def prompt_unknown(self, prompt: str) -> bool:  # noqa: ARG002 - the default knows nothing of it
        """True when the text encoder knows none of the prompt's words (its score then means little)."""
        return False

    def matched_classes(self, prompt: str) -> list[tuple[str, float]] | None:  # noqa: ARG002 - the default knows nothing of it
        """The classes a prompt is matched to, with their weights (a classifier scored through prompt
        matching); None for models that score text directly."""
        return None

    def warm_up(self) -> None:
        """Do now what the first run would pay for (compiling a runtime's graphs), so a loaded
        model answers its first Run at full speed (the app calls this when it starts). Default:
        nothing to do."""

    def forward_batch(self) -> int:
        """Images per call when a caller scores many without gradients (the curves, RISE,
        ``score_many``): ``max_batch``, unless the adapter's forward-only passes run on a compiled
        runtime that takes more at once (models/runtime.py ``CompiledForward.batch``)."""
        return self.max_batch

    def variant(self, **attributes: Any) -> ModelAdapter:
        """A shallow copy with some declared settings changed (``max_batch=4``, a classifier's
        ``cam_layer_name="blocks.10"``): the network, its weights and the caches are shared, and
        this adapter (often the registry's cached one) is left as it is."""
        for key in attributes:
            if key.startswith("_") or not hasattr(self, key) or callable(getattr(self, key)):
                raise AttributeError(f"{type(self).__name__} has no setting {key!r}")
        clone = copy.copy(self)
        for key, value in attributes.items():
            setattr(clone, key, value)
        return clone

    @property
    def device(self) -> torch.device:
        """Where the model's weights live; the engine puts pixels there."""
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> ModelAdapter:
        """Move the model to ``device`` (in place) and return it."""
        if torch.device(device) != self.device:
            raise NotImplementedError(f"{type(self).__name__} cannot move to {device}")
        return self

    # --- images -----------------------------------------------------------------------
    def load_image(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> ``[1, 3, H, W]`` float pixels in [0, 1] at the model's input size.

        The whole image is resized (not cropped), so the maps cover everything the user sees.
        """
        rgb = image.convert("RGB").resize(self.input_size[::-1], Image.Resampling.BICUBIC)
        array = np.asarray(rgb, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()

    # --- scores -----------------------------------------------------------------------
    def prompt_scores(self, pixels: torch.Tensor, prompts: tuple[str, ...]) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, P]``: the model's own score of each prompt (differentiable)."""
        raise NotImplementedError

    def score(self, pixels: torch.Tensor, target: Target) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B]``: the target score (differentiable). See ``Target``."""
        return self._target_score(self.prompt_scores(pixels, target.prompts), target)

    @staticmethod
    def _target_score(prompt_scores: torch.Tensor, target: Target) -> torch.Tensor:
        if target.contrast:
            return torch.softmax(prompt_scores, dim=1)[:, 0]
        return prompt_scores[:, 0]

    def score_meaning(self, target: Target) -> ScoreMeaning:
        """What this model's score of ``target`` is (the page's words, and the margin the photo
        must beat the substrate by: ``ScoreMeaning``). With contrast prompts it is a probability;
        an adapter says what its own score is by overriding this (the base knows nothing of it)."""
        if target.contrast:
            return CONTRAST_MEANING
        return ScoreMeaning("score", "the model's own score of the prompt (its adapter does not say what it is)", 1e-6)

    def scores(self, pixels: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, H, W]`` -> (score ``[B]``, the target's probability ``[B]`` in [0, 1]), from ONE
        forward pass. The probability follows from what the score is (``score_meaning``): a
        probability is itself, a log-probability its exp, a logit its sigmoid; a score of no
        declared meaning has none (NaN). Adapters whose probability is something else override it."""
        score = self.score(pixels, target)
        return score, probability_of(score, self.score_meaning(target).name)

    @torch.no_grad()
    def score_many(self, pixels: torch.Tensor, target: Target) -> torch.Tensor:
        """The target score of many images, in batches of ``forward_batch()``, without gradients."""
        out = [self.score(chunk, target) for chunk in pixels.split(self.forward_batch())]
        return torch.cat(out) if out else torch.empty(0)

    @torch.no_grad()
    def scores_many(self, pixels: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        """``scores`` of many images, in batches of ``forward_batch()``, without gradients."""
        return _cat_pairs([self.scores(chunk, target) for chunk in pixels.split(self.forward_batch())])

    # --- the target ---------------------------------------------------------------------
    def resolve_target(
        self,
        pixels: torch.Tensor,  # noqa: ARG002 - a prompt model needs none of these
        target: Target,
        options: dict[str, Any],  # noqa: ARG002
        photo_size: tuple[int, int],  # noqa: ARG002
    ) -> tuple[Target, list[str]]:
        """The target this model explains for what the user asked, and notes for the user.

        ``pixels`` is the photo at the input size (``[1, 3, H, W]``); ``options`` the model kind's
        target parameters (validated, None where not given); ``photo_size`` the photo's (width,
        height) as given. A prompt model explains the prompt as it is.
        """
        return target, []

    def candidate_targets(
        self, pixels: torch.Tensor, target: Target, options: dict[str, Any], photo_size: tuple[int, int]
    ) -> list[Target]:
        """The targets a user may choose among for this prompt, the default first (a detector:
        each of its boxes; a VLM: its answer). A prompt model offers the prompt."""
        return [self.resolve_target(pixels, target, options, photo_size)[0]]

    @torch.no_grad()
    def prompt_probabilities(self, pixels: torch.Tensor, target: Target) -> dict[str, float]:
        """With contrast prompts: the softmax probability of each prompt for one image."""
        scores = self.prompt_scores(pixels, target.prompts)
        probabilities = torch.softmax(scores, dim=1)[0]
        return {p: float(v) for p, v in zip(target.prompts, probabilities)}

    def count_backward(self, images: int) -> None:
        """Methods report their backward passes here; a plain adapter does not count (``Metered`` does)."""

    # --- what Grad-CAM needs --------------------------------------------------------------
    def cam_layer(self) -> CamLayer:
        raise NotImplementedError

    # --- what the sanity check needs (explainers/sanity.py) ---------------------------------
    def randomization_stages(self) -> list[tuple[str, list[str]]]:
        """The stages of the cascading model-parameter randomisation (Adebayo et al., "Sanity
        Checks for Saliency Maps", NeurIPS 2018), top layer first: ``(label, names)`` where the
        names are modules (or parameters) of the network ``randomizable_copy`` returns. The stages
        are cumulative; together they cover every parameter the image score depends on.
        """
        raise NotImplementedError(f"{type(self).__name__} declares no randomisation stages")

    def randomizable_copy(self) -> tuple[ModelAdapter, torch.nn.Module]:
        """A copy of this adapter whose network is a deep copy (so it can be randomised without
        touching this shared adapter) and which shares everything that is not randomised (text
        encoders, class embeddings); with that network, which the stage names are relative to."""
        raise NotImplementedError(f"{type(self).__name__} cannot be copied for randomisation")


def probability_of(score: torch.Tensor, meaning: str) -> torch.Tensor:
    """A score -> the probability it stands for, by what the score is (``ScoreMeaning.name``)."""
    if meaning == "probability":
        return score.clamp(0.0, 1.0)
    if meaning == "log-probability":
        return score.exp().clamp(0.0, 1.0)
    if meaning == "logit":
        return torch.sigmoid(score)
    return torch.full_like(score, float("nan"))


def _cat_pairs(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    if not pairs:
        return torch.empty(0), torch.empty(0)
    return torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs])


def parameter_units(names: Sequence[str]) -> list[str]:
    """Parameter names -> the units a cascade randomises, bottom first (in the order the network
    registers them, which is the forward order for sequential networks): the name up to its first
    index in a container (``blocks.3._expand_conv.weight`` -> ``blocks.3``, one block), else the
    owning module (``fc.weight`` -> ``fc``), else the parameter itself (a top-level token)."""
    units: dict[str, None] = {}
    for name in names:
        parts = name.split(".")
        index = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        unit = ".".join(parts[: index + 1]) if index is not None else ".".join(parts[:-1]) or name
        units.setdefault(unit, None)
    return list(units)


def units_label(units: Sequence[str]) -> str:
    """``["blocks.3", "blocks.4", "blocks.5", "stem.0"]`` -> ``"blocks.3-5, stem.0"`` (runs of
    consecutive indices in one container are shown as a range)."""
    runs: list[list] = []  # [prefix, first, last] or [name, None, None]
    for unit in units:
        prefix, _, index = unit.rpartition(".")
        if (
            index.isdigit()
            and runs
            and runs[-1][0] == prefix
            and runs[-1][2] is not None
            and abs(int(index) - runs[-1][2]) == 1
        ):
            runs[-1][2] = int(index)
        elif index.isdigit() and prefix:
            runs.append([prefix, int(index), int(index)])
        else:
            runs.append([unit, None, None])
    parts = []
    for prefix, first, last in runs:
        if first is None:
            parts.append(prefix)
        else:
            low, high = sorted((first, last))
            parts.append(f"{prefix}.{low}" if low == high else f"{prefix}.{low}-{high}")
    return ", ".join(parts)


class Metered:
    """A per-call view of a shared adapter that counts the images it scores and the backward
    passes methods report (images, not calls, so batched and unbatched code compare).

    Everything else is the adapter's own. One view per call (``explain`` makes one per method
    and one for the curves), so two threads explaining on one cached model count correctly.
    """

    def __init__(self, adapter: ModelAdapter | Metered) -> None:
        self.adapter = adapter
        self.forward_passes = 0
        self.backward_passes = 0

    def __getattr__(self, name: str):
        return getattr(self.adapter, name)

    def score(self, pixels: torch.Tensor, target: Target) -> torch.Tensor:
        scores = self.adapter.score(pixels, target)
        self.forward_passes += pixels.shape[0]
        return scores

    @torch.no_grad()
    def score_many(self, pixels: torch.Tensor, target: Target) -> torch.Tensor:
        out = [self.score(chunk, target) for chunk in pixels.split(self.adapter.forward_batch())]
        return torch.cat(out) if out else torch.empty(0)

    def scores(self, pixels: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.adapter.scores(pixels, target)
        self.forward_passes += pixels.shape[0]
        return out

    @torch.no_grad()
    def scores_many(self, pixels: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        # The adapter's own batched call (where a compiled forward-only runtime may sit), counted here.
        out = self.adapter.scores_many(pixels, target)
        self.forward_passes += pixels.shape[0]
        return out

    def prompt_probabilities(self, pixels: torch.Tensor, target: Target) -> dict[str, float]:
        probabilities = self.adapter.prompt_probabilities(pixels, target)
        self.forward_passes += pixels.shape[0]
        return probabilities

    def count_backward(self, images: int) -> None:
        self.backward_passes += images
