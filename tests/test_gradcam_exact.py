"""Grad-CAM against a value computed by hand on a one-conv network."""
import numpy as np
import torch

from explainers.methods import gradcam
from explainers.models.base import CamLayer, ModelAdapter
from explainers.types import Target


class OneConv(ModelAdapter):
    """score = sum_c v_c * mean(conv(x)_c): so dscore/dA_c = v_c / (h w) everywhere."""

    input_size = (4, 4)

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, kernel_size=1, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.7, -1.0]]).view(2, 3, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.1, -0.2]))
        self.v = torch.tensor([2.0, -3.0])

    def prompt_scores(self, pixels, prompts):
        a = self.conv(pixels)
        return (a.mean(dim=(2, 3)) * self.v).sum(dim=1, keepdim=True).repeat(1, len(prompts))

    def cam_layer(self):
        return CamLayer(self.conv, "output", lambda t: t)


def test_gradcam_equals_hand_computation():
    adapter = OneConv()
    pixels = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    result = gradcam.explain(adapter, pixels, Target("x"))

    x = pixels[0].numpy()
    w = np.array([[1.0, -2.0, 0.5], [0.3, 0.7, -1.0]])
    activations = np.einsum("ck,khw->chw", w, x) + np.array([0.1, -0.2])[:, None, None]
    alphas = np.array([2.0, -3.0]) / 16  # mean over 4x4 of the constant gradient v_c / 16
    cam = np.maximum((alphas[:, None, None] * activations).sum(0), 0)
    np.testing.assert_allclose(result.values, cam / cam.max(), rtol=1e-5, atol=1e-6)
    assert result.forward_passes == 1 and result.backward_passes == 1
