"""Integrated gradients' axioms (Sundararajan et al. 2017) on toy models, where they can be checked
exactly: completeness, linearity in the model, and a zero map for a model that ignores its input."""

import numpy as np
import pytest
import torch
from toys import FunctionAdapter

from explainers.methods import run_method
from explainers.types import Target

PIXELS = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
W1 = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
W2 = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))


def ig(function, steps=16, baseline="black"):
    return run_method(
        "ig", FunctionAdapter(function), PIXELS, Target("x"), steps=steps, max_steps=steps, baseline=baseline
    )


def test_completeness_is_exact_for_a_linear_model():
    result = ig(lambda x: (x * W1).sum(dim=(1, 2, 3)), steps=4)
    expected = (PIXELS * W1).sum(dim=1)[0].numpy()  # x' = 0: attribution = w * x exactly
    np.testing.assert_allclose(result.values, np.abs(expected), rtol=1e-5)
    assert result.meta["completeness_error"] < 1e-5


def test_completeness_holds_for_a_smooth_nonlinear_model():
    result = ig(
        lambda x: torch.tanh((x * W1).sum(dim=(1, 2, 3)) / 50) + ((x * W2) ** 2).sum(dim=(1, 2, 3)) / 100, steps=64
    )
    assert result.meta["completeness_error"] < 1e-3
    assert result.meta["attribution_sum"] == pytest.approx(result.meta["score_difference"], rel=1e-3)


def test_linearity_in_the_model():
    f = lambda x: ((x * W1) ** 2).sum(dim=(1, 2, 3))  # noqa: E731 - positive attributions on x' = 0
    g = lambda x: torch.exp((x * W2).sum(dim=(1, 2, 3)) / 100)  # noqa: E731
    combined = ig(lambda x: 2 * f(x) + 3 * g(x))
    np.testing.assert_allclose(combined.values, 2 * ig(f).values + 3 * ig(g).values, rtol=1e-4)


def test_a_model_that_ignores_its_input_gets_a_zero_map():
    result = ig(lambda x: x.sum(dim=(1, 2, 3)) * 0 + 1.5)
    assert np.all(result.values == 0)
    assert result.meta["score_difference"] == 0


def test_refinement_stops_at_the_tolerance_and_counts_its_passes():
    adapter = FunctionAdapter(lambda x: torch.sigmoid(20 * ((x * W1).sum(dim=(1, 2, 3)) / W1.sum() - 0.2)))
    result = run_method("ig", adapter, PIXELS, Target("x"), steps=4, max_steps=256, tolerance=1e-4)
    steps = result.meta["steps"]
    assert result.meta["completeness_error"] <= 1e-4 and steps > 4  # it had to refine
    # the u = 1 end, the interior points of the first grid, then every halving's midpoints
    assert result.backward_passes == 1 + (4 - 1) + (steps - 4)
    assert result.forward_passes == 2 + result.backward_passes  # + the two end scores
