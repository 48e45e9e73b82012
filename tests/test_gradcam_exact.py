"""Grad-CAM against a value computed by hand on a one-conv network."""

import numpy as np
import torch
from toys import OneConv

from explainers.methods import run_method
from explainers.types import Target


def test_gradcam_equals_hand_computation():
    adapter = OneConv()
    pixels = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    result = run_method("gradcam", adapter, pixels, Target("x"))

    x = pixels[0].numpy()
    w = np.array(OneConv.WEIGHT)
    activations = np.einsum("ck,khw->chw", w, x) + np.array(OneConv.BIAS)[:, None, None]
    alphas = np.array(OneConv.V) / 16  # mean over 4x4 of the constant gradient v_c / 16
    cam = np.maximum((alphas[:, None, None] * activations).sum(0), 0)
    np.testing.assert_allclose(result.values, cam / cam.max(), rtol=1e-5, atol=1e-6)
    assert result.forward_passes == 1 and result.backward_passes == 1
