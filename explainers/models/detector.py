"""``detector:<hub id or folder>``: an open-vocabulary detector's box for a query, as a ModelAdapter.

The target is a box (``BoxTarget``): the query the user typed and a box in pixels of the photo,
by default the detector's best box for the query. The score is VPS's (Chen et al., "Interpreting
Object-level Foundation Models via Visual Precision Search", CVPR 2025): the best match among
the boxes the model predicts for the image, max_j IoU(b_j, b*) x p_j(query), where p_j is box
j's probability for the query. It is a probability in [0, 1] (an IoU times a probability).

The model loads through transformers' AutoProcessor and AutoModelForZeroShotObjectDetection
(OWL-ViT, OWLv2, Grounding DINO), never with remote code. The photo is resized whole to a square
input (no padding, no crop), so a box's coordinates relative to the input are its coordinates
relative to the photo; normalisation is done here in torch, so masks and IG act in pixel space.
Grad-CAM reads the vision tower's patch tokens (OWL: the last block's patch grid, image_size /
patch_size from the config) or the backbone's coarsest feature map (Grounding DINO).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import ModelLoadError, UserError
from ..params import Param, shown
from ..types import MIN_SPAN, ScoreMeaning, Target
from .base import CamLayer, ModelAdapter, ModelKind, PromptCache, frozen
from .sources import load_pretrained

MAX_BOXES = 10  # boxes a detector offers for a query (after non-maximum suppression)
NMS_IOU = 0.5  # boxes overlapping a better one by more than this are the same object
RANDOMIZATION_BLOCK_GROUPS = 4


def parse_box(value: Any) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` (commas or spaces) or four numbers -> a box with x0 < x1 and y0 < y1;
    ValueError otherwise (the Param names the parameter and what it takes)."""
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s]+", value.strip().strip("[]()")) if p]
        numbers = [float(p) for p in parts]
    elif isinstance(value, (Sequence, np.ndarray)):
        numbers = [float(v) for v in value]
    else:
        raise ValueError("not a box")
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise ValueError("a box is four finite numbers")
    x0, y0, x1, y1 = numbers
    if not (x0 < x1 and y0 < y1):
        raise ValueError("x0 < x1 and y0 < y1")
    return (x0, y0, x1, y1)


DETECTOR_PARAMS: tuple[Param, ...] = (
    Param(
        "box",
        None,
        "the box to explain, x0,y0,x1,y1 in pixels of the photo as given (default: the detector's best box "
        "for the query)",
        kind=str,
        parse=parse_box,
        allowed="four numbers x0,y0,x1,y1 in pixels of the photo, with x0 < x1 and y0 < y1",
        label="Box (empty: the detector's best)",
    ),
    Param(
        "box_threshold",
        0.1,
        "the least probability of a box the detector offers for the query (its best box must pass it)",
        kind=float,
        low=0.0,
        high=1.0,
        step=0.01,
        label="Boxes: least probability",
    ),
)


@dataclass(frozen=True)
class BoxTarget(Target):
    """A detector's box for a query: ``prompt`` is the query; ``box`` (x0, y0, x1, y1) in pixels of
    the photo as given (``photo_size`` = its width, height); ``label_probability`` the probability
    of the predicted box that best matches it, for the query; ``detected``: the box is the model's
    own (else the user's)."""

    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    photo_size: tuple[int, int] = (1, 1)
    label_probability: float = math.nan
    detected: bool = False
    kind: ClassVar[str] = "box"

    @property
    def relative_box(self) -> tuple[float, float, float, float]:
        """The box as fractions of the photo's width and height (= of the model's input)."""
        width, height = self.photo_size
        x0, y0, x1, y1 = self.box
        return (x0 / width, y0 / height, x1 / width, y1 / height)

    def describe(self) -> str:
        return f"the box {[round(v) for v in self.box]} for “{self.prompt}”"

    def pinned(self) -> dict[str, Any]:
        return {"box": ",".join(format(float(v), ".10g") for v in self.box)}

    def outline(self) -> tuple[float, float, float, float]:
        return self.relative_box

    def choice_label(self) -> str:
        chance = "" if math.isnan(self.label_probability) else f", probability {self.label_probability:.0%}"
        return f"the box {[round(v) for v in self.box]}{chance}"

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "prompt": self.prompt,
            "box": [float(v) for v in self.box],
            "label_probability": self.label_probability,
            "box_source": "model" if self.detected else "given",
            "photo_size": list(self.photo_size),
        }


def box_iou(boxes: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """IoU of ``boxes`` ``[..., 4]`` (x0, y0, x1, y1) with one ``box`` ``[4]``; differentiable."""
    x0 = torch.maximum(boxes[..., 0], box[0])
    y0 = torch.maximum(boxes[..., 1], box[1])
    x1 = torch.minimum(boxes[..., 2], box[2])
    y1 = torch.minimum(boxes[..., 3], box[3])
    inter = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    union = area + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return inter / union.clamp(min=1e-12)


def corners(centre_boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1)."""
    cx, cy, w, h = centre_boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


# --- families -------------------------------------------------------------------------------


class Family:
    """What differs between detectors: input size, extra inputs, the probability of each box for
    the query, and where Grad-CAM looks."""

    model_types: ClassVar[tuple[str, ...]] = ()
    input_size: tuple[int, int]
    grid: tuple[int, int] | None = None

    def __init__(self, model: Any, processor: Any) -> None:
        raise NotImplementedError

    def query_text(self, query: str) -> Any:
        """The query as the processor takes it."""
        return query

    def plain_text(self, query: str) -> str:
        """The query as the tokenizer reads it."""
        return query

    def extra_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: ARG002 - a family may need none
        return {}

    def probabilities(self, logits: torch.Tensor, text: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, N, ...]`` logits -> ``[B, N]``: each predicted box's probability for the query."""
        raise NotImplementedError

    def tap(self, model: Any, tap: nn.Module) -> None:
        """Route the feature map Grad-CAM reads through ``tap`` (a forward hook, no change of numbers)."""
        raise NotImplementedError

    def to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def stages(self, model: Any) -> list[tuple[str, list[str]]]:
        raise NotImplementedError(f"{type(self).__name__} declares no randomisation stages")


class OwlFamily(Family):
    """OWL-ViT / OWLv2: one box per ViT patch; p_j = sigmoid of the patch's query logit."""

    model_types = ("owlvit", "owlv2")

    def __init__(self, model: Any, processor: Any) -> None:  # noqa: ARG002 - the config says it all
        vision = model.config.vision_config
        self.input_size = (vision.image_size, vision.image_size)
        self.grid = (vision.image_size // vision.patch_size,) * 2
        self.base = "owlv2" if model.config.model_type == "owlv2" else "owlvit"

    def query_text(self, query: str) -> Any:
        return [[query]]

    def probabilities(self, logits: torch.Tensor, text: dict[str, torch.Tensor]) -> torch.Tensor:  # noqa: ARG002
        return torch.sigmoid(logits[..., 0])

    def tap(self, model: Any, tap: nn.Module) -> None:
        # The layer norm runs twice: on the pooled CLS ([B, D]) and on every token ([B, 1 + N, D]),
        # which the box and class heads read.
        norm = getattr(model, self.base).vision_model.post_layernorm
        norm.register_forward_hook(lambda _m, _a, out: tap(out) if out.dim() == 3 else out)

    def to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        height, width = self.grid or (0, 0)
        return tokens[:, 1:].reshape(tokens.shape[0], height, width, -1).permute(0, 3, 1, 2)

    def stages(self, model: Any) -> list[tuple[str, list[str]]]:
        vision = f"{self.base}.vision_model"
        heads = [n for n in ("class_head", "box_head", "objectness_head", "layer_norm") if hasattr(model, n)]
        layers = len(getattr(model, self.base).vision_model.encoder.layers)
        stages = [("heads", heads + [f"{vision}.post_layernorm"])]
        indices = np.arange(layers)
        groups = [g for g in np.array_split(indices[::-1], min(RANDOMIZATION_BLOCK_GROUPS, layers)) if len(g)]
        for i, group in enumerate(groups):
            low, high = int(group.min()), int(group.max())
            names = [f"{vision}.encoder.layers.{j}" for j in group]
            label = f"layers.{low}" if low == high else f"layers.{low}-{high}"
            if i == len(groups) - 1:
                names += [f"{vision}.pre_layernorm", f"{vision}.embeddings"]
                label += ", embeddings"
            stages.append((label, names))
        return stages


class GroundingDinoFamily(Family):
    """Grounding DINO: a fixed set of query boxes; p_j = the largest sigmoid of box j's logits over
    the query's own word tokens (not [CLS], [SEP] or the closing '.')."""

    model_types = ("grounding-dino",)

    def __init__(self, model: Any, processor: Any) -> None:  # noqa: ARG002 - the processor says it all
        side = _size_field(getattr(processor.image_processor, "size", None), "shortest_edge") or 800
        self.input_size = (side, side)
        self.tokenizer = processor.tokenizer

    def query_text(self, query: str) -> Any:
        return self.plain_text(query)

    def plain_text(self, query: str) -> str:
        query = query.strip().lower()
        return query if query.endswith(".") else query + "."

    def extra_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixel_mask": torch.ones(x.shape[0], x.shape[2], x.shape[3], dtype=torch.long, device=x.device)}

    def probabilities(self, logits: torch.Tensor, text: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = text["input_ids"][0]
        skip = set(self.tokenizer.all_special_ids) | {self.tokenizer.convert_tokens_to_ids(".")}
        words = torch.tensor([int(i) not in skip for i in ids], device=logits.device)
        if not words.any():
            words = torch.ones_like(words)
        return torch.sigmoid(logits[..., : len(ids)][..., words]).amax(dim=-1)

    def tap(self, model: Any, tap: nn.Module) -> None:
        def hook(_module: nn.Module, _args: Any, out: list) -> list:
            feature, mask = out[-1]
            return [*out[:-1], (tap(feature), mask)]

        model.model.backbone.conv_encoder.register_forward_hook(hook)


def _size_field(size: Any, key: str) -> int | None:
    """A field of an image processor's size (a dict, or transformers' SizeDict)."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


FAMILIES: dict[str, type[Family]] = {t: f for f in (OwlFamily, GroundingDinoFamily) for t in f.model_types}


@dataclass(frozen=True)
class Detection:
    """One predicted box: (x0, y0, x1, y1) in pixels of the photo, and its probability for the query."""

    box: tuple[float, float, float, float]
    probability: float


class DetectorAdapter(ModelAdapter):
    """A zero-shot detector scoring a box by VPS's max_j IoU(b_j, b*) x p_j(query)."""

    max_batch = 8
    max_grad_batch = 4
    target_params = DETECTOR_PARAMS

    def __init__(self, model: Any, processor: Any, name: str = "detector") -> None:
        model_type = model.config.model_type
        if model_type not in FAMILIES:
            raise ModelLoadError(f"the detector kind does not know {model_type!r} models; it takes {_families()}")
        self.model = frozen(model.float())
        self.processor = processor
        self.name = name
        self.family = FAMILIES[model_type](model, processor)
        self.input_size = self.family.input_size
        image_processor = processor.image_processor
        normalise = getattr(image_processor, "do_normalize", True)
        mean = image_processor.image_mean if normalise else (0.0, 0.0, 0.0)
        std = image_processor.image_std if normalise else (1.0, 1.0, 1.0)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        text = getattr(model.config, "text_config", None)
        limits = [getattr(text, "max_position_embeddings", None), getattr(model.config, "max_text_len", None)]
        known = [int(v) for v in limits if v]
        self.max_prompt_tokens = min(known) if known else None  # longer queries are cut (with a note)
        self.tap = nn.Identity()
        self.family.tap(model, self.tap)
        self._queries: PromptCache[str, dict[str, torch.Tensor]] = PromptCache()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> DetectorAdapter:
        self.model.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        self._queries.clear()
        return self

    def query_inputs(self, query: str) -> dict[str, torch.Tensor]:
        """The text side of the model's inputs for ``query`` (``[1, L]``), cached per query."""

        def encode() -> dict[str, torch.Tensor]:
            blank = Image.new("RGB", self.input_size[::-1], (128, 128, 128))
            cut = {"truncation": True, "max_length": self.max_prompt_tokens} if self.max_prompt_tokens else {}
            encoded = self.processor(text=self.family.query_text(query), images=[blank], return_tensors="pt", **cut)
            return {
                k: v.to(self.device)
                for k, v in encoded.items()
                if k not in ("pixel_values", "pixel_mask") and isinstance(v, torch.Tensor)
            }

        return self._queries.get_or_make(query, encode)

    def prompt_tokens(self, prompt: str) -> int:
        return len(self.processor.tokenizer(self.family.plain_text(prompt))["input_ids"])

    def predictions(self, pixels: torch.Tensor, query: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 3, H, W]`` in [0, 1] -> (boxes ``[B, N, 4]`` as fractions (x0, y0, x1, y1) of the
        input, each box's probability for ``query`` ``[B, N]``); differentiable."""
        text = self.query_inputs(query)
        batch = pixels.shape[0]
        x = (pixels - self.mean) / self.std
        inputs = {k: v.expand(batch, -1) for k, v in text.items()}
        out = self.model(pixel_values=x, **inputs, **self.family.extra_inputs(x))
        boxes = corners(out.pred_boxes.float()).clamp(0.0, 1.0)  # boxes end at the image's edges
        return boxes, self.family.probabilities(out.logits.float(), text)

    def score(self, pixels: torch.Tensor, target: Target) -> torch.Tensor:
        """VPS's score: max_j IoU(b_j, b*) x p_j(query)."""
        if not isinstance(target, BoxTarget):
            raise UserError("a detector explains a box: resolve the query to a box first (explain() does)")
        boxes, probabilities = self.predictions(pixels, target.prompt)
        wanted = torch.tensor(target.relative_box, dtype=boxes.dtype, device=boxes.device)
        return (box_iou(boxes, wanted) * probabilities).amax(dim=1)

    def scores(self, pixels: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        score = self.score(pixels, target)
        return score, score

    def score_meaning(self, target: Target) -> ScoreMeaning:  # noqa: ARG002 - one meaning for every box
        return ScoreMeaning(
            "probability",
            "VPS's score: the best match among the detector's boxes, the overlap (IoU) of a box with the "
            "explained box times the box's probability for the query",
            MIN_SPAN["probability"],
        )

    @torch.no_grad()
    def detect(
        self, pixels: torch.Tensor, query: str, photo_size: tuple[int, int], threshold: float
    ) -> list[Detection]:
        """The detector's boxes for ``query`` on ``pixels`` (``[1, 3, H, W]``) with a probability of at
        least ``threshold``, best first, overlapping ones suppressed (at most MAX_BOXES), in pixels of
        a photo of ``photo_size`` (width, height)."""
        from torchvision.ops import nms

        boxes, probabilities = self.predictions(pixels, query)
        boxes, probabilities = boxes[0], probabilities[0]
        keep = probabilities >= threshold
        boxes, probabilities = boxes[keep], probabilities[keep]
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, probabilities = boxes[valid], probabilities[valid]
        order = nms(boxes, probabilities, NMS_IOU)[:MAX_BOXES]
        width, height = photo_size
        scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        return [
            Detection(tuple(float(v) for v in (boxes[i] * scale)), float(probabilities[i]))  # type: ignore[arg-type]
            for i in order.tolist()
        ]

    @torch.no_grad()
    def best_probability(self, pixels: torch.Tensor, query: str) -> float:
        return float(self.predictions(pixels, query)[1].max())

    def candidate_targets(
        self, pixels: torch.Tensor, target: Target, options: dict[str, Any], photo_size: tuple[int, int]
    ) -> list[Target]:
        """Each box the detector finds for the query (probability at least box_threshold), best first."""
        if options.get("box") is not None:
            return [self.resolve_target(pixels, target, options, photo_size)[0]]
        threshold = _threshold(options)
        return [
            BoxTarget(
                prompt=target.prompt, box=d.box, photo_size=photo_size, label_probability=d.probability, detected=True
            )
            for d in self.detect(pixels, target.prompt, photo_size, threshold)
        ]

    def resolve_target(
        self, pixels: torch.Tensor, target: Target, options: dict[str, Any], photo_size: tuple[int, int]
    ) -> tuple[Target, list[str]]:
        """The box to explain: the given ``box`` (UserError when it is not inside the photo), or the
        detector's best box for the query (UserError when no box reaches box_threshold)."""
        if isinstance(target, BoxTarget):
            if tuple(target.photo_size) != tuple(photo_size):
                raise UserError(
                    f"the box was found on a photo of {target.photo_size[0]} x {target.photo_size[1]} pixels, "
                    f"not on this one of {photo_size[0]} x {photo_size[1]}"
                )
            return target, []
        notes = []
        if target.contrast:
            notes.append("a detector explains its box for the query; the contrast prompts were not used")
        width, height = photo_size
        given = options.get("box")
        if given is not None:
            x0, y0, x1, y1 = given
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                raise UserError(
                    f"the box {[round(v, 1) for v in given]} is not inside the photo, which is {width} x {height} "
                    "pixels (x0,y0,x1,y1 from 0,0 to its width,height)"
                )
            box = BoxTarget(prompt=target.prompt, box=tuple(float(v) for v in given), photo_size=photo_size)  # type: ignore[arg-type]
            with torch.no_grad():
                boxes, probabilities = self.predictions(pixels, target.prompt)
                wanted = torch.tensor(box.relative_box, dtype=boxes.dtype, device=boxes.device)
                match = int((box_iou(boxes, wanted) * probabilities)[0].argmax())
            return replace(box, label_probability=float(probabilities[0, match])), notes
        threshold = _threshold(options)
        found = self.detect(pixels, target.prompt, photo_size, threshold)
        if not found:
            best = self.best_probability(pixels, target.prompt)
            raise UserError(
                f"the detector finds no box for {shown(target.prompt)} with a probability of at least {threshold:g} "
                f"(its best is {best:.3f}); lower the box threshold, or give the box to explain"
            )
        top = found[0]
        notes.append(
            f"the detector's best box for {shown(target.prompt)} is {[round(v, 1) for v in top.box]} (probability "
            f"{top.probability:.3f}, {len(found)} box{'es' if len(found) != 1 else ''} above {threshold:g}); "
            "the maps explain that box"
        )
        resolved = BoxTarget(
            prompt=target.prompt, box=top.box, photo_size=photo_size, label_probability=top.probability, detected=True
        )
        return resolved, notes

    def cam_layer(self) -> CamLayer:
        return CamLayer(self.tap, "output", self.family.to_grid)

    def randomization_stages(self) -> list[tuple[str, list[str]]]:
        """Adebayo et al.'s cascade on the image side, top first (OWL: the heads, then the vision
        blocks in groups, the last with the embeddings); the text tower is never randomised."""
        return self.family.stages(self.model)

    def randomizable_copy(self) -> tuple[DetectorAdapter, nn.Module]:
        self.family.stages(self.model)  # a family without stages says so before copying
        clone = copy.copy(self)
        text = [m for name, m in self.model.named_modules() if name.endswith("text_model")]
        clone.model = copy.deepcopy(self.model, memo={id(m): m for m in text})
        clone._queries = self._queries.copy()
        return clone, clone.model


def _threshold(options: dict[str, Any]) -> float:
    value = options.get("box_threshold")
    return float(DETECTOR_PARAMS[1].default if value is None else value)


def _families() -> str:
    return ", ".join(sorted(FAMILIES))


def load_detector(source: str) -> DetectorAdapter:
    """Load a zero-shot object detector and its processor from a hub id or (when allowed) a local
    folder. Raises ModelLoadError saying what was tried and why it failed. Never runs remote code."""
    from transformers import AutoModelForZeroShotObjectDetection

    name, processor, model = load_pretrained(
        source,
        "detector",
        "detector",
        "google/owlv2-base-patch16-ensemble",
        FAMILIES,
        AutoModelForZeroShotObjectDetection,
    )
    return DetectorAdapter(model, processor, name=name)


def _load(source: str) -> ModelAdapter:
    return load_detector(source)


MODEL_KIND = ModelKind(
    name="detector",
    prefix="detector:",
    load=_load,
    choices=(
        ("OWLv2 base (boxes; downloads 0.6 GB)", "detector:google/owlv2-base-patch16-ensemble"),
        ("Grounding DINO tiny (boxes; downloads 0.7 GB)", "detector:IDEA-Research/grounding-dino-tiny"),
    ),
    params=DETECTOR_PARAMS,
    usage="'detector:<hub id or folder>'",
    description="an open-vocabulary detector's box for a query (VPS: the best box's IoU x its probability)",
)

__all__ = ["DETECTOR_PARAMS", "MODEL_KIND", "BoxTarget", "Detection", "DetectorAdapter", "load_detector", "parse_box"]
