"""``vlm:<hub id or folder>``: a vision-language model's answer to a question, as a ModelAdapter.

The target is an answer (``AnswerTarget``): the question the user typed and the answer's tokens,
by default the model's own greedy answer. The score is EAGLE's (Chen et al., "Where MLLMs Attend
and What They Rely On: Explaining Autoregressive Token Generation", 2025): the mean over the
answer's tokens of the probability the model gives each one after the question and the answer's
earlier tokens (teacher forcing), or that probability for one token (``answer_token``). It is a
probability in [0, 1], so the curves are on a bounded score.

The model loads through transformers' AutoProcessor and AutoModelForImageTextToText, never with
remote code. The processor builds the text side once per question (the chat template, the image
placeholder tokens expanded); the image side is done here in torch, so it is differentiable and
batched and the methods mask and integrate in pixel space: pixels ``[B, 3, H, W]`` in [0, 1] at
the input size -> the processor's normalisation -> the family's layout (LLaVA: the image as it
is; Qwen2-VL/2.5-VL: 14-px patches in 2 x 2 merge windows, two frames; Idefics3/SmolVLM: one
global image, no tiles). Grad-CAM reads the image tokens the language model receives (the
projector's output), on the vision tower's patch grid from the config.
"""

from __future__ import annotations

import copy
import re
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

MAX_ANSWER_CHARS = 1000
MAX_ANSWER_TOKENS = 256
QWEN_SIDE = 448  # Qwen2-VL's input side when its processor allows it: 16 x 16 merged tokens
# The sanity check's cascade: the projector, then the vision tower's blocks in this many groups
# from the top, the last with the patch embeddings. The language model is never randomised.
RANDOMIZATION_BLOCK_GROUPS = 4


def parse_token_ids(value: Any) -> tuple[int, ...]:
    """``"12,5,873"`` (commas or spaces) or whole numbers -> token ids; ValueError otherwise."""
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s]+", value.strip().strip("[]()")) if p]
    elif isinstance(value, (list, tuple, np.ndarray)):
        parts = list(value)
    else:
        raise ValueError("not token ids")
    ids = []
    for part in parts:
        if isinstance(part, (bool, np.bool_, float)):
            raise ValueError("token ids are whole numbers")
        number = int(part)
        if number < 0:
            raise ValueError("token ids are not negative")
        ids.append(number)
    if not ids or len(ids) > MAX_ANSWER_TOKENS:
        raise ValueError(f"1 to {MAX_ANSWER_TOKENS} token ids")
    return tuple(ids)


VLM_PARAMS: tuple[Param, ...] = (
    Param(
        "answer",
        None,
        "the answer to explain (default: the model's own greedy answer to the question)",
        kind=str,
        high=MAX_ANSWER_CHARS,
        label="Answer (empty: the model's own)",
    ),
    Param(
        "answer_token",
        None,
        "explain one token of the answer (0 = its first; default: the mean over all its tokens, as EAGLE)",
        low=0,
        high=MAX_ANSWER_TOKENS - 1,
        flag="--answer-token",
        label="Answer token (empty: all)",
    ),
    Param(
        "max_new_tokens",
        16,
        "the most tokens the model may generate for its own answer",
        low=1,
        high=MAX_ANSWER_TOKENS,
        label="Answer: most tokens",
    ),
    Param(
        "answer_ids",
        None,
        "the answer to explain as the model's token ids, comma-separated (exactly those tokens; instead of "
        "answer: how the app passes back the answer the model gave)",
        kind=str,
        parse=parse_token_ids,
        allowed=f"1 to {MAX_ANSWER_TOKENS} comma-separated token ids (whole numbers)",
        flag="--answer-ids",
        label="Answer as token ids (empty: the model's own)",
    ),
)


@dataclass(frozen=True)
class AnswerTarget(Target):
    """A VLM's answer to a question: ``prompt`` is the question; ``token_ids`` the answer's tokens
    (``tokens`` their text); ``token_index`` one token to explain, or None for the mean over all;
    ``generated``: the answer is the model's own greedy answer (else the user's)."""

    answer: str = ""
    tokens: tuple[str, ...] = ()
    token_ids: tuple[int, ...] = ()
    token_index: int | None = None
    generated: bool = False
    kind: ClassVar[str] = "answer"

    @property
    def question(self) -> str:
        return self.prompt

    def describe(self) -> str:
        which = f"token {self.token_index} of the answer" if self.token_index is not None else "the answer"
        return f"{which} “{self.answer}” to “{self.prompt}”"

    def pinned(self) -> dict[str, Any]:
        """The answer's token ids (exact: its text may tokenize otherwise) and the token, if one."""
        ids = ",".join(str(i) for i in self.token_ids)
        return {"answer_ids": ids, **({"answer_token": self.token_index} if self.token_index is not None else {})}

    def parts(self) -> list[Target]:
        """One target per token of the answer (``--answer-token K``), when it has more than one."""
        if self.token_index is not None or len(self.tokens) < 2:
            return []
        return [replace(self, token_index=k) for k in range(len(self.tokens))]

    def choice_label(self) -> str:
        if self.token_index is None:
            return f"the whole answer “{self.answer}” (mean over its {len(self.tokens)} tokens)"
        return f"token {self.token_index} of the answer: “{self.tokens[self.token_index]}”"

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "question": self.prompt,
            "answer": self.answer,
            "tokens": list(self.tokens),
            "token_ids": list(self.token_ids),
            "token_index": self.token_index,
            "answer_source": "model" if self.generated else "given",
        }


# --- how each family lays out its image -------------------------------------------------


class Layout:
    """One family's image side: its input size, the model inputs from normalised pixels, the
    module whose output is the image tokens the language model reads (where Grad-CAM looks), the
    grid those tokens form, and the vision tower's parts for the sanity check."""

    model_types: ClassVar[tuple[str, ...]] = ()
    input_size: tuple[int, int]
    grid: tuple[int, int]  # image tokens per column and row, as the language model reads them

    def __init__(self, model: Any, processor: Any) -> None:
        raise NotImplementedError

    def pixel_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised ``[B, 3, H, W]`` -> the model's image keyword arguments."""
        raise NotImplementedError

    def processor_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for the processor's call (e.g. no tiles)."""
        return {}

    def image_tokens_module(self, model: Any) -> nn.Module:
        raise NotImplementedError

    def image_tokens(self, output: Any, tap: nn.Module) -> Any:
        """The module's output with its image-token tensor passed through ``tap``."""
        return tap(output)

    def to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """The tapped image tokens -> ``[B, D, h, w]`` on ``grid``."""
        height, width = self.grid
        dim = tokens.shape[-1]
        if tokens.dim() == 3 and tokens.shape[1] == height * width + 1:
            tokens = tokens[:, 1:]  # a CLS token kept by the "full" feature strategy
        return tokens.reshape(-1, height, width, dim).permute(0, 3, 1, 2)

    def vision_parts(self, model: Any) -> tuple[list[str], list[str], list[str]]:
        """(projector modules, vision blocks bottom first, embedding modules), named in ``model``."""
        raise NotImplementedError


def _field(size: Any, key: str) -> int | None:
    """A field of an image processor's size (a dict, or transformers' SizeDict)."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def _side(size: Any, fallback: int) -> tuple[int, int]:
    """(height, width) of an image processor's crop or resize size."""
    if _field(size, "height") and _field(size, "width"):
        return _field(size, "height") or fallback, _field(size, "width") or fallback
    side = _field(size, "shortest_edge") or fallback
    return side, side


class LlavaLayout(Layout):
    """LLaVA (1.5 and the like): one image at the crop size; CLIP-ViT patches -> projector."""

    model_types = ("llava",)

    def __init__(self, model: Any, processor: Any) -> None:
        vision = model.config.vision_config
        image_processor = processor.image_processor
        crop = getattr(image_processor, "crop_size", None) if getattr(image_processor, "do_center_crop", True) else None
        self.input_size = _side(crop or getattr(image_processor, "size", None), vision.image_size)
        patch = vision.patch_size
        self.grid = (self.input_size[0] // patch, self.input_size[1] // patch)

    def pixel_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixel_values": x}

    def image_tokens_module(self, model: Any) -> nn.Module:
        return model.model.multi_modal_projector

    def vision_parts(self, model: Any) -> tuple[list[str], list[str], list[str]]:
        tower, base = model.model.vision_tower, "model.vision_tower"
        if hasattr(tower, "vision_model"):  # a CLIPVisionModel wrapping its transformer
            tower, base = tower.vision_model, base + ".vision_model"
        layers = len(tower.encoder.layers)
        embeddings = [f"{base}.{name}" for name in ("pre_layrnorm", "embeddings") if hasattr(tower, name)]
        return (
            ["model.multi_modal_projector"],
            [f"{base}.encoder.layers.{i}" for i in range(layers)],
            embeddings,
        )


class QwenLayout(Layout):
    """Qwen2-VL / Qwen2.5-VL: the image at a side that is a multiple of patch x merge, cut into
    patches grouped by 2 x 2 merge windows, each patch repeated over the two frames of a
    temporal patch (the image processor's layout); the merger gives one token per window."""

    model_types = ("qwen2_vl", "qwen2_5_vl")

    def __init__(self, model: Any, processor: Any) -> None:
        image_processor = processor.image_processor
        self.patch = int(image_processor.patch_size)
        self.merge = int(image_processor.merge_size)
        self.temporal = int(image_processor.temporal_patch_size)
        vision = model.config.vision_config
        if (vision.patch_size, vision.spatial_merge_size) != (self.patch, self.merge):
            raise ModelLoadError(
                f"the image processor cuts {self.patch}-px patches merged {self.merge} x {self.merge}, but the "
                f"model's vision tower takes {vision.patch_size}-px patches merged {vision.spatial_merge_size}; "
                "they do not belong together"
            )
        size = getattr(image_processor, "size", None)
        low = _field(size, "shortest_edge") or int(getattr(image_processor, "min_pixels", 0) or 0)
        high = _field(size, "longest_edge") or int(getattr(image_processor, "max_pixels", 0) or 0) or QWEN_SIDE**2
        factor = self.patch * self.merge
        side = max(factor, QWEN_SIDE // factor * factor)
        while side * side > high and side > factor:
            side -= factor
        while side * side < low:
            side += factor
        self.input_size = (side, side)
        self.grid = (side // factor, side // factor)

    def pixel_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, channels, height, width = x.shape
        p, m, t = self.patch, self.merge, self.temporal
        gh, gw = height // p, width // p
        patches = x.reshape(batch, channels, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        flat = patches.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, t, -1, -1).reshape(batch * gh * gw, -1)
        grid = torch.tensor([[1, gh, gw]] * batch, dtype=torch.long, device=x.device)
        return {"pixel_values": flat, "image_grid_thw": grid}

    def image_tokens_module(self, model: Any) -> nn.Module:
        return model.model.visual

    def image_tokens(self, output: Any, tap: nn.Module) -> Any:
        output.pooler_output = tap(output.pooler_output)  # [B * tokens, D], in row-major order
        return output

    def vision_parts(self, model: Any) -> tuple[list[str], list[str], list[str]]:
        blocks = len(model.model.visual.blocks)
        return (
            ["model.visual.merger"],
            [f"model.visual.blocks.{i}" for i in range(blocks)],
            ["model.visual.patch_embed"],
        )


class Idefics3Layout(Layout):
    """Idefics3 (SmolVLM, e.g. HuggingFaceTB/SmolVLM-256M-Instruct): one global image at the
    processor's max image size (no tiles); the connector's pixel shuffle merges scale_factor x
    scale_factor patches into one token. (SmolVLM2's "smolvlm" type is not taken: untested here,
    its processor needs num2words.)"""

    model_types = ("idefics3",)

    def __init__(self, model: Any, processor: Any) -> None:
        vision = model.config.vision_config
        image_processor = processor.image_processor
        longest = _field(getattr(image_processor, "max_image_size", None), "longest_edge") or vision.image_size
        self.input_size = (int(longest), int(longest))
        per_side = int(longest) // vision.patch_size // int(model.config.scale_factor)
        self.grid = (per_side, per_side)

    def processor_kwargs(self) -> dict[str, Any]:
        return {"do_image_splitting": False}

    def pixel_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, _, height, width = x.shape
        mask = torch.ones(batch, 1, height, width, dtype=torch.long, device=x.device)
        return {"pixel_values": x.unsqueeze(1), "pixel_attention_mask": mask}

    def image_tokens_module(self, model: Any) -> nn.Module:
        return model.model.connector

    def vision_parts(self, model: Any) -> tuple[list[str], list[str], list[str]]:
        layers = len(model.model.vision_model.encoder.layers)
        return (
            ["model.connector", "model.vision_model.post_layernorm"],
            [f"model.vision_model.encoder.layers.{i}" for i in range(layers)],
            ["model.vision_model.embeddings"],
        )


LAYOUTS: dict[str, type[Layout]] = {
    t: layout for layout in (LlavaLayout, QwenLayout, Idefics3Layout) for t in layout.model_types
}


# --- the adapter ---------------------------------------------------------------------------


class VlmAdapter(ModelAdapter):
    """An image-text-to-text model scoring an answer by EAGLE's mean token probability."""

    max_batch = 4
    max_grad_batch = 2
    target_params = VLM_PARAMS

    def __init__(self, model: Any, processor: Any, name: str = "vlm") -> None:
        model_type = model.config.model_type
        if model_type not in LAYOUTS:
            raise ModelLoadError(f"the vlm kind has no image layout for {model_type!r} models; it takes {_families()}")
        self.model = frozen(model.float())
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.layout = LAYOUTS[model_type](model, processor)
        self.input_size = self.layout.input_size
        image_processor = processor.image_processor
        normalise = getattr(image_processor, "do_normalize", True)
        mean = image_processor.image_mean if normalise else (0.0, 0.0, 0.0)
        std = image_processor.image_std if normalise else (1.0, 1.0, 1.0)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        text = model.config.get_text_config()
        self.max_prompt_tokens = int(getattr(text, "max_position_embeddings", 0) or 0) or None
        self.image_token = _image_token(processor, model.config, name)
        # Every image token passes this identity on its way to the language model: Grad-CAM hooks
        # it. The hook lives as long as the model; it changes no number.
        self.tap = nn.Identity()
        self.layout.image_tokens_module(model).register_forward_hook(
            lambda _module, _args, output: self.layout.image_tokens(output, self.tap)
        )
        self._prompts: PromptCache[str, dict[str, torch.Tensor]] = PromptCache()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> VlmAdapter:
        self.model.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        self._prompts.clear()
        return self

    # --- text side --------------------------------------------------------------------
    def prompt_text(self, question: str) -> str:
        """The question in the model's chat template, with one image before it."""
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return f"{self.image_token}\n{question}"

    def prompt_inputs(self, question: str) -> dict[str, torch.Tensor]:
        """The text side of the model's inputs for ``question`` (``[1, L]`` tensors: input_ids with
        the image's placeholder tokens expanded, attention mask, token types), cached per question."""

        def encode() -> dict[str, torch.Tensor]:
            blank = Image.new("RGB", self.input_size[::-1], (128, 128, 128))
            encoded = self.processor(
                images=[blank], text=[self.prompt_text(question)], return_tensors="pt", **self.layout.processor_kwargs()
            )
            image_keys = {"pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes"}
            return {
                k: v.to(self.device) for k, v in encoded.items() if k not in image_keys and isinstance(v, torch.Tensor)
            }

        return self._prompts.get_or_make(question, encode)

    def prompt_tokens(self, prompt: str) -> int:
        return int(self.prompt_inputs(prompt)["input_ids"].shape[1])

    def answer_ids(self, answer: str) -> list[int]:
        return list(self.tokenizer(answer, add_special_tokens=False)["input_ids"])

    def token_text(self, ids: list[int] | tuple[int, ...]) -> tuple[str, ...]:
        return tuple(self.tokenizer.decode([i]) for i in ids)

    # --- image side -------------------------------------------------------------------
    def pixel_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[B, 3, H, W]`` in [0, 1] at the input size -> the model's image inputs (differentiable)."""
        return self.layout.pixel_inputs((pixels - self.mean) / self.std)

    def _inputs(self, pixels: torch.Tensor, question: str, answer: tuple[int, ...]) -> dict[str, torch.Tensor]:
        batch = pixels.shape[0]
        inputs = {}
        ids = torch.tensor([answer], dtype=torch.long, device=self.device)
        for key, value in self.prompt_inputs(question).items():
            extra = (
                ids
                if key == "input_ids"
                else (torch.ones_like(ids) if key == "attention_mask" else torch.zeros_like(ids))
            )
            inputs[key] = torch.cat([value, extra.to(value.dtype)], dim=1).expand(batch, -1)
        return {**inputs, **self.pixel_inputs(pixels)}

    # --- scores -----------------------------------------------------------------------
    def token_probabilities(self, pixels: torch.Tensor, question: str, answer: tuple[int, ...]) -> torch.Tensor:
        """``[B, n]``: the probability of each of the answer's n tokens after the question (with
        this image) and the answer's earlier tokens: one teacher-forced pass (differentiable)."""
        n = len(answer)
        out = self.model(**self._inputs(pixels, question, answer), logits_to_keep=n + 1, use_cache=False)
        logits = out.logits[:, -(n + 1) : -1].float()
        ids = torch.tensor(answer, device=logits.device).view(1, n, 1).expand(logits.shape[0], -1, -1)
        return torch.softmax(logits, dim=-1).gather(-1, ids)[..., 0]

    def score(self, pixels: torch.Tensor, target: Target) -> torch.Tensor:
        """EAGLE's score: the mean teacher-forced probability of the answer's tokens (or of one)."""
        if not isinstance(target, AnswerTarget):
            raise UserError("a VLM explains an answer: resolve the question to an answer first (explain() does)")
        probabilities = self.token_probabilities(pixels, target.prompt, target.token_ids)
        if target.token_index is None:
            return probabilities.mean(dim=1)
        return probabilities[:, target.token_index]

    def scores(self, pixels: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        score = self.score(pixels, target)
        return score, score

    def score_meaning(self, target: Target) -> ScoreMeaning:
        index = target.token_index if isinstance(target, AnswerTarget) else None
        return ScoreMeaning(
            "probability",
            (
                f"the probability the model gives token {index} of the answer, after the question "
                "and the answer's earlier tokens (EAGLE)"
                if index is not None
                else "the mean probability the model gives the answer's tokens, each after the question and "
                "the answer's earlier tokens (EAGLE's teacher-forced score)"
            ),
            MIN_SPAN["probability"],
        )

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, question: str, max_new_tokens: int) -> tuple[list[int], bool]:
        """The model's greedy answer to ``question`` about ``pixels`` (``[1, 3, H, W]``): its token ids
        without the end-of-text token, and whether it stopped at ``max_new_tokens``."""
        inputs = {**self.prompt_inputs(question), **self.pixel_inputs(pixels)}
        stops = _stop_ids(self.model, self.tokenizer)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (sorted(stops) or [0])[0]
        out = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad,
        )
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        for i, token in enumerate(new):
            if token in stops:
                return new[:i], False
        return new, len(new) >= max_new_tokens

    def resolve_target(
        self,
        pixels: torch.Tensor,
        target: Target,
        options: dict[str, Any],
        photo_size: tuple[int, int],  # noqa: ARG002
    ) -> tuple[Target, list[str]]:
        """The question's answer: the given ``answer`` (text, or exactly the tokens ``answer_ids``),
        or the model's greedy answer (at most ``max_new_tokens``); UserError for an empty answer, a
        token out of range, or a question and answer over the model's text limit."""
        if isinstance(target, AnswerTarget):
            return target, []
        notes = []
        if target.contrast:
            notes.append("a VLM explains its answer to the question; the contrast prompts were not used")
        question = target.prompt
        max_new = int(options.get("max_new_tokens") or VLM_PARAMS[2].default)
        length = self.prompt_tokens(question)
        given = options.get("answer")
        given_ids = options.get("answer_ids")
        if given is not None and given_ids is not None:
            raise UserError("give the answer as text (answer) or as token ids (answer_ids), not both")
        if given_ids is not None:
            ids = [int(i) for i in given_ids]
            vocabulary = len(self.tokenizer)
            if max(ids) >= vocabulary:
                raise UserError(f"answer token id {max(ids)} is not in the model's vocabulary of {vocabulary} tokens")
            answer = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            self._check_length(length, len(ids), "the answer")
            given = answer
        elif given is None:
            self._check_length(length, max_new, "the longest answer asked for")
            ids, cut = self.generate(pixels, question, max_new)
            answer = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            if not ids or not answer:
                raise UserError(
                    f"the model's answer to {shown(question)} is empty (it ended at once); give an answer to explain"
                )
            notes.append(f"the model answered {shown(answer, 80)} ({len(ids)} tokens); the maps explain that answer")
            if cut:
                notes.append(f"the model's answer was cut at {max_new} tokens (max_new_tokens)")
        else:
            answer = str(given).strip()
            if not answer:
                raise UserError("the answer is empty; give the answer to explain, or none for the model's own")
            ids = self.answer_ids(answer)
            if not ids:
                raise UserError(f"the answer {shown(answer)} has no tokens for this model")
            if len(ids) > MAX_ANSWER_TOKENS:
                raise UserError(f"the answer is {len(ids)} tokens long; at most {MAX_ANSWER_TOKENS}")
            self._check_length(length, len(ids), "the answer")
        index = options.get("answer_token")
        if index is not None and not 0 <= int(index) < len(ids):
            raise UserError(
                f"answer token {index} is out of range: the answer {shown(answer, 60)} has {len(ids)} "
                f"token{'s' if len(ids) != 1 else ''} (0 to {len(ids) - 1})"
            )
        resolved = AnswerTarget(
            prompt=question,
            answer=answer,
            tokens=self.token_text(ids),
            token_ids=tuple(int(i) for i in ids),
            token_index=None if index is None else int(index),
            generated=given is None,
        )
        return resolved, notes

    def _check_length(self, length: int, answer_tokens: int, what: str) -> None:
        limit = self.max_prompt_tokens
        if limit is not None and length + answer_tokens > limit:
            raise UserError(
                f"the question with the image is {length} tokens and {what} {answer_tokens} more, over the "
                f"model's limit of {limit} tokens; ask a shorter question"
            )

    # --- Grad-CAM and the sanity check ----------------------------------------------------
    def cam_layer(self) -> CamLayer:
        """The image tokens the language model receives (the projector's output), on their grid."""
        return CamLayer(self.tap, "output", self.layout.to_grid)

    def randomization_stages(self) -> list[tuple[str, list[str]]]:
        """Adebayo et al.'s cascade (NeurIPS 2018) on the image side: the projector, then the vision
        tower's blocks from the top in RANDOMIZATION_BLOCK_GROUPS groups, the last with the patch
        embeddings. The language model is never randomised: the answer's words stay what it learnt."""
        projector, blocks, embeddings = self.layout.vision_parts(self.model)
        stages = [("projector", projector)]
        indices = np.arange(len(blocks))
        groups = [g for g in np.array_split(indices[::-1], min(RANDOMIZATION_BLOCK_GROUPS, len(blocks))) if len(g)]
        for i, group in enumerate(groups):
            low, high = int(group.min()), int(group.max())
            names = [blocks[j] for j in group]
            label = f"vision blocks {low}" if low == high else f"vision blocks {low}-{high}"
            if i == len(groups) - 1:
                names += embeddings
                label += ", embeddings"
            stages.append((label, names))
        return stages

    def randomizable_copy(self) -> tuple[VlmAdapter, nn.Module]:
        """This adapter with a deep copy of the image side; the language model is shared."""
        clone = copy.copy(self)
        shared = [m for name, m in self.model.named_modules() if _is_language_side(name)]
        clone.model = copy.deepcopy(self.model, memo={id(m): m for m in shared})
        clone._prompts = self._prompts.copy()
        return clone, clone.model


def _is_language_side(name: str) -> bool:
    return name in ("model.language_model", "model.text_model", "lm_head")


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return {int(i) for i in ids}


def _image_token(processor: Any, config: Any, name: str) -> str:
    """The processor's image token, checked against the model's image token id."""
    token = getattr(processor, "image_token", None)
    expected = getattr(config, "image_token_id", getattr(config, "image_token_index", None))
    token_id = processor.tokenizer.convert_tokens_to_ids(token) if isinstance(token, str) else None
    if not token or token_id is None or token_id == processor.tokenizer.unk_token_id:
        raise ModelLoadError(
            f"the processor of {name} declares no image token, so it cannot place an image in the prompt"
        )
    if expected is not None and token_id != expected:
        raise ModelLoadError(
            f"the processor of {name} places images with token {token!r} (id {token_id}), but the model "
            f"expects id {expected}; they do not belong together"
        )
    return token


def _families() -> str:
    return ", ".join(sorted(LAYOUTS))


def load_vlm(source: str) -> VlmAdapter:
    """Load an image-text-to-text model and its processor from a hub id or (when allowed) a local
    folder. Raises ModelLoadError saying what was tried and why it failed. Never runs remote code."""
    from transformers import AutoModelForImageTextToText

    name, processor, model = load_pretrained(
        source, "VLM", "vlm", "llava-hf/llava-1.5-7b-hf", LAYOUTS, AutoModelForImageTextToText
    )
    return VlmAdapter(model, processor, name=name)


def _load(source: str) -> ModelAdapter:
    return load_vlm(source)


MODEL_KIND = ModelKind(
    name="vlm",
    prefix="vlm:",
    load=_load,
    choices=(
        ("SmolVLM-256M (answers; downloads 0.5 GB)", "vlm:HuggingFaceTB/SmolVLM-256M-Instruct"),
        ("Qwen2-VL-2B (answers; downloads 4.4 GB, wants a GPU)", "vlm:Qwen/Qwen2-VL-2B-Instruct"),
        ("LLaVA-1.5-7B (answers; downloads 14 GB, wants a GPU)", "vlm:llava-hf/llava-1.5-7b-hf"),
    ),
    params=VLM_PARAMS,
    usage="'vlm:<hub id or folder>'",
    description="a vision-language model's answer to a question (EAGLE's mean answer-token probability)",
)

__all__ = ["MODEL_KIND", "VLM_PARAMS", "AnswerTarget", "VlmAdapter", "load_vlm"]
