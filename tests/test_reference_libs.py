"""Our Grad-CAM and integrated gradients against the field's reference libraries (pytorch-grad-cam,
Captum) on a small random torchvision ResNet: the same maps, so writing them here lost nothing."""

import numpy as np
import pytest
import torch
from toys import FunctionAdapter

from explainers.methods import run_method
from explainers.models import ClassifierAdapter
from explainers.types import Target

CLASSES = ["tabby cat", "golden retriever", "school bus", "oak tree", "sailboat"]


@pytest.fixture(scope="module")
def resnet():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return ClassifierAdapter(resnet18(num_classes=len(CLASSES)), CLASSES, input_size=(64, 64), cam_layer="layer4")


class ScoreModule(torch.nn.Module):
    """adapter.score as the ``[B, 1]`` module both libraries call."""

    def __init__(self, adapter, target):
        super().__init__()
        self.adapter, self.target = adapter, target
        self.network = adapter.network  # registered, so the library finds the model's parameters

    def forward(self, x):
        return self.adapter.score(x, self.target)[:, None]


def test_gradcam_matches_pytorch_grad_cam(resnet):
    from pytorch_grad_cam import GradCAM

    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ours = run_method("gradcam", resnet, pixels, Target("a cat")).values
    module = ScoreModule(resnet, Target("a cat"))
    with GradCAM(model=module, target_layers=[resnet.network.layer4]) as cam:
        theirs = cam(input_tensor=pixels.clone().requires_grad_(True), targets=[lambda out: out[0]])[0]
    # pytorch-grad-cam min-max scales its map; ours divides by the maximum (the minimum is 0 after ReLU
    # unless the map has no zero): compare the maps up to that scaling.
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.999


def test_integrated_gradients_converge_to_captums():
    from captum.attr import IntegratedGradients

    weights = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    function = lambda x: torch.tanh((x * weights).sum(dim=(1, 2, 3)) / 20)  # noqa: E731 - a smooth nonlinear toy
    pixels = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    ours = run_method(
        "ig", FunctionAdapter(function, input_size=(16, 16)), pixels, Target("x"), steps=256, max_steps=256
    ).values
    theirs = IntegratedGradients(function).attribute(
        pixels, baselines=torch.zeros_like(pixels), n_steps=256, method="riemann_trapezoid"
    )
    theirs = theirs.sum(dim=1)[0].abs().numpy()
    # Ours samples the path at a = u**2, Captum at a = u: both approximate the same integral (to
    # about 0.4 % at 256 steps on this toy; at 32 steps the two differ far more, see bench/reference_libs.py).
    np.testing.assert_allclose(ours, theirs, rtol=0.01, atol=1e-6)
