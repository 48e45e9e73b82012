"""Any transformers ``CLIPModel`` (hub id or local folder) as a ModelAdapter.

Score = logit-scaled cosine between image and prompt embeddings (CLIP, Radford et al. 2021).
Its probability: the softmax of the prompt's logit against the prompts of a fixed vocabulary,
ImageNet's 1000 class names as "a photo of a {name}" (as SMDL scores CLIP; ``VOCABULARY_FILE``);
with contrast prompts, the softmax among the prompts (the score itself). Text features are
computed once per prompt (the vocabulary's once per model) and cached; the model runs in fp32
for gradients.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelLoadError
from ..types import MIN_SPAN, ScoreMeaning, Target
from .base import CamLayer, ModelAdapter, ModelKind, PromptCache, frozen
from .runtime import CompiledForward, Forward

# The fixed vocabulary CLIP's probability is taken against (SMDL's choice for CLIP on ImageNet).
VOCABULARY_FILE = Path(__file__).with_name("imagenet_classes.txt")
VOCABULARY_TEMPLATE = "a photo of a {}"
LOGIT_MEANING = ScoreMeaning(
    "logit",
    "CLIP's logit: how closely the photo and the prompt match (scaled cosine similarity; higher is closer). "
    "Its probability is the softmax of this logit against ImageNet's 1000 class names "
    '("a photo of a …")',
    MIN_SPAN["logit"],
)

# Local folders are a way to read arbitrary files from the server, so they are opt-in.
ALLOW_LOCAL_ENV = "SALIENCY_LAB_ALLOW_LOCAL_MODELS"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# The sanity check's cascade: the projection, then the vision transformer's blocks in this many
# groups from the top (5 stages in all).
RANDOMIZATION_BLOCK_GROUPS = 4
PROMPTS_CACHED = 256  # prompts whose text features an adapter keeps (least recently used dropped)
# The compiled runtime's probe may differ from torch's unit image embeddings by at most this much
# per coordinate (scores are ~100 x the cosine, so this keeps them within ~1e-4).
FEATURE_TOLERANCE = 2e-6


class ClipAdapter(ModelAdapter):
    """A CLIP model scoring prompts by logit-scaled cosine similarity."""

    max_batch = 16

    def __init__(self, model, tokenizer, name: str = "clip", mean=OPENAI_MEAN, std=OPENAI_STD) -> None:
        self.model = frozen(model.float())
        self.tokenizer = tokenizer
        self.name = name
        vision = model.config.vision_config
        self.input_size = (vision.image_size, vision.image_size)
        self.patch_grid = (vision.image_size // vision.patch_size,) * 2
        self.max_prompt_tokens = model.config.text_config.max_position_embeddings
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._text_features: PromptCache[str, torch.Tensor] = PromptCache(PROMPTS_CACHED)
        self.vocabulary = tuple(VOCABULARY_TEMPLATE.format(name) for name in VOCABULARY_FILE.read_text().splitlines())
        self._vocabulary_features: torch.Tensor | None = None
        # Forward-only image embeddings on OpenVINO (models/runtime.py); None: always torch.
        self._runtime: CompiledForward | None = CompiledForward(
            Forward(self._torch_image_features, self.model.vision_model, self.model.visual_projection),
            tolerance=FEATURE_TOLERANCE,
            label=name,
            signature=f"clip|{tuple(mean)}|{tuple(std)}",
            request_images=8,  # a ViT's matrix products want rows (runtime.REQUEST_IMAGES)
            call_images=self.max_batch,
        )

    def warm_up(self) -> None:
        """Compile the vision tower's forward-only graph (models/runtime.py) now, not in the first
        run (its input gradients stay in torch)."""
        if self._runtime is not None and self.device.type == "cpu":
            with torch.no_grad():
                self._runtime(torch.zeros(1, 3, *self.input_size))

    def forward_batch(self) -> int:
        return self.max_batch if self._runtime is None else self._runtime.batch(self.max_batch, self.device)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def to(self, device) -> ClipAdapter:
        self.model.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        self._text_features.clear()
        self._vocabulary_features = None
        return self

    def prompt_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt)["input_ids"])

    def _encode(self, texts: list[str]) -> torch.Tensor:
        """``[P, D]`` unit-norm text embeddings of ``texts`` (no cache)."""
        tokens = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_prompt_tokens,
            return_tensors="pt",
        ).to(self.device)
        with torch.no_grad():
            pooled = self.model.text_model(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            ).pooler_output
            features = self.model.text_projection(pooled)
        return features / features.norm(dim=-1, keepdim=True)

    def text_features(self, prompts: tuple[str, ...]) -> torch.Tensor:
        """``[P, D]`` unit-norm text embeddings; each prompt is encoded once and cached (LRU)."""
        cached = {p: self._text_features.get(p) for p in dict.fromkeys(prompts)}
        found = {p: features for p, features in cached.items() if features is not None}
        missing = [p for p in cached if p not in found]
        if missing:
            for prompt, row in zip(missing, self._encode(missing)):
                found[prompt] = row
                self._text_features.put(prompt, row)
        return torch.stack([found[p] for p in prompts])

    def vocabulary_features(self) -> torch.Tensor:
        """``[V, D]``: the vocabulary's text embeddings, encoded once per model (in batches)."""
        if self._vocabulary_features is None:
            texts = list(self.vocabulary)
            self._vocabulary_features = torch.cat([self._encode(texts[i : i + 256]) for i in range(0, len(texts), 256)])
        return self._vocabulary_features

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` pixels -> ``[B, D]`` unit image embeddings. Without gradients, on the CPU,
        the compiled vision tower (models/runtime.py); otherwise torch's."""
        if self._runtime is not None and (out := self._runtime(pixels)) is not None:
            return out
        return self._torch_image_features(pixels)

    def _torch_image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels - self.mean) / self.std
        pooled = self.model.vision_model(pixel_values=x).pooler_output
        features = self.model.visual_projection(pooled)
        return features / features.norm(dim=-1, keepdim=True)

    def prompt_scores(self, pixels: torch.Tensor, prompts: tuple[str, ...]) -> torch.Tensor:
        text = self.text_features(prompts)
        return self.model.logit_scale.exp() * self.image_features(pixels) @ text.T

    def score_meaning(self, target: Target) -> ScoreMeaning:
        return super().score_meaning(target) if target.contrast else LOGIT_MEANING

    def scores(self, pixels: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
        """(score, probability) from one pass of the image tower: without contrast prompts the
        probability is the softmax of the prompt's logit against the vocabulary's (entries equal
        to the prompt left out, so it does not compete with itself)."""
        image = self.image_features(pixels)
        scale = self.model.logit_scale.exp()
        logits = scale * image @ self.text_features(target.prompts).T
        score = self._target_score(logits, target)
        if target.contrast:
            return score, score
        keep = [i for i, text in enumerate(self.vocabulary) if text.casefold() != target.prompt.casefold()]
        vocabulary = scale * image @ self.vocabulary_features()[keep].T
        probability = torch.softmax(torch.cat([logits[:, :1], vocabulary], dim=1), dim=1)[:, 0]
        return score, probability

    def cam_layer(self) -> CamLayer:
        # Only CLS reaches the embedding, so the last block's patch *outputs* get no gradient.
        # The input of its first layer norm carries the patch tokens that CLS attends to.
        grid_h, grid_w = self.patch_grid

        def to_grid(tokens: torch.Tensor) -> torch.Tensor:
            patches = tokens[:, 1:, :]  # drop CLS
            return patches.reshape(tokens.shape[0], grid_h, grid_w, -1).permute(0, 3, 1, 2)

        return CamLayer(self.model.vision_model.encoder.layers[-1].layer_norm1, "input", to_grid)

    def randomization_stages(self) -> list[tuple[str, list[str]]]:
        """Adebayo et al.'s cascade (NeurIPS 2018) on the image tower: the visual projection (with
        the final layer norm), then the vision transformer's blocks from the top in
        RANDOMIZATION_BLOCK_GROUPS groups, the last with the patch and position embeddings, so the
        final stage has randomised every parameter of the image side. The text tower is never
        randomised: the prompt's embedding stays what the model learnt."""
        stages = [("projection", ["visual_projection", "vision_model.post_layernorm"])]
        layers = np.arange(len(self.model.vision_model.encoder.layers))
        groups = [g for g in np.array_split(layers[::-1], min(RANDOMIZATION_BLOCK_GROUPS, len(layers))) if len(g)]
        for i, group in enumerate(groups):
            low, high = int(group.min()), int(group.max())
            names = [f"vision_model.encoder.layers.{j}" for j in group]
            label = f"layers.{low}" if low == high else f"layers.{low}-{high}"
            if i == len(groups) - 1:
                names += ["vision_model.pre_layrnorm", "vision_model.embeddings"]
                label += ", embeddings"
            stages.append((label, names))
        return stages

    def randomizable_copy(self) -> tuple[ClipAdapter, torch.nn.Module]:
        """This adapter with a deep copy of its CLIP model except the text tower, which is shared
        (never randomised); the cached text features are copied."""
        clone = copy.copy(self)
        shared = (self.model.text_model, self.model.text_projection)
        clone.model = copy.deepcopy(self.model, memo={id(module): module for module in shared})
        clone._text_features = self._text_features.copy()
        clone._runtime = None  # the compiled graph is the trained network's: the copy runs in torch
        return clone, clone.model


def _mean_std(source: str) -> tuple[tuple, tuple]:
    """The normalisation the checkpoint's image processor declares (OpenAI's if none)."""
    try:
        from transformers import CLIPImageProcessor

        processor = CLIPImageProcessor.from_pretrained(source)
        return tuple(processor.image_mean), tuple(processor.image_std)
    except Exception:  # noqa: BLE001 - a missing processor config is normal; fall back
        return OPENAI_MEAN, OPENAI_STD


# What the app offers; the API and CLI accept any CLIP hub id or (opt-in) folder.
APP_CHOICES = ("clip:openai/clip-vit-base-patch32", "clip:openai/clip-vit-base-patch16")


def load_clip(source: str) -> ClipAdapter:
    """Load ``CLIPModel`` + tokenizer from a hub id or (when allowed) a local folder.

    Raises ModelLoadError saying what was tried and why it failed. Never runs remote code.
    """
    source = source.strip()
    try:
        return _load_clip(source)
    except OSError as error:  # e.g. a folder name too long for the file system
        raise ModelLoadError(f"could not load CLIP from {source!r}: {error.strerror or error}") from None


def _load_clip(source: str) -> ClipAdapter:
    from transformers import AutoTokenizer, CLIPModel

    is_folder = Path(source).expanduser().is_dir() or source.startswith(("/", ".", "~"))
    if is_folder:
        if os.environ.get(ALLOW_LOCAL_ENV) != "1":
            raise ModelLoadError(
                f"loading a model from a local folder ({source!r}) is disabled; set {ALLOW_LOCAL_ENV}=1 to allow it"
            )
        folder = Path(source).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"the folder {source!r} has no config.json, so it is not a saved CLIP model")
        try:
            model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"the config.json in {source!r} cannot be read: {error}") from None
        if model_type != "clip":
            raise ModelLoadError(f"the folder {source!r} holds a {model_type!r} model, not a CLIP model")
        where = f"the local folder {source!r}"
    else:
        if not HUB_ID.match(source):
            raise ModelLoadError(
                f"{source!r} is not a Hugging Face model id (expected 'owner/name', e.g. "
                "'openai/clip-vit-base-patch32') nor an existing folder"
            )
        where = f"the Hugging Face Hub id {source!r}"
    try:
        model = CLIPModel.from_pretrained(source, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as error:  # noqa: BLE001 - turned into one plain sentence
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        offline = (
            ""
            if is_folder
            else (" (this machine may be offline: only models already in the local Hugging Face cache can load)")
        )
        raise ModelLoadError(f"could not load CLIP from {where}{offline}: {reason[:300]}") from None
    mean, std = _mean_std(source)
    return ClipAdapter(model, tokenizer, name=f"clip:{source}", mean=mean, std=std)


MODEL_KIND = ModelKind(
    name="clip",
    prefix="clip:",
    load=load_clip,
    choices=tuple((f"{name} (downloads on first use)", name) for name in APP_CHOICES),
    description="CLIP from a Hugging Face Hub id or a local folder (first use: a download of several hundred MB)",
    usage="'clip:<hub id or folder>'",
)
