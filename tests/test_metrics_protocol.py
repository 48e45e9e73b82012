"""The deletion/insertion protocol on a linear toy model, where every curve point is known."""

import numpy as np
import pytest
import torch
from toys import linear

from explainers import metrics
from explainers.models.base import Metered
from explainers.types import Target


def setup(seed=0):
    rng = np.random.default_rng(seed)
    weights = rng.random((4, 4))
    return linear(weights, max_batch=5), torch.ones(1, 3, 4, 4), weights  # batches of 5: several per call


def test_deletion_and_insertion_follow_the_ranking_exactly():
    adapter, pixels, weights = setup()
    steps = 16  # one pixel per step
    curves, _ = metrics.faithfulness(adapter, pixels, Target("x"), {"ideal": weights}, steps=steps)
    deletion, insertion = curves["ideal"]
    by_weight = np.sort(weights.ravel())[::-1]
    total = by_weight.sum()
    expected_deletion = total - np.concatenate([[0], np.cumsum(by_weight)])
    np.testing.assert_allclose(deletion.scores, expected_deletion, rtol=1e-5)
    np.testing.assert_allclose(insertion.scores, total - expected_deletion, rtol=1e-5)
    np.testing.assert_allclose(deletion.normalized, expected_deletion / total, rtol=1e-5)
    assert deletion.auc == pytest.approx(np.trapezoid(expected_deletion / total, np.linspace(0, 1, 17)))
    assert deletion.full_score == pytest.approx(total) and deletion.substrate_score == 0


def test_the_ideal_map_beats_random_and_the_reversed_map_loses():
    adapter, pixels, weights = setup(1)
    curves, reference = metrics.faithfulness(
        adapter, pixels, Target("x"), {"ideal": weights, "reversed": -weights}, steps=16, n_random=5
    )
    assert curves["ideal"].insertion.auc > reference.insertion.auc > curves["reversed"].insertion.auc
    assert curves["ideal"].deletion.auc < reference.deletion.auc < curves["reversed"].deletion.auc


def test_ties_go_to_the_lower_flat_index():
    order = metrics.pixel_order(np.array([[1.0, 2.0], [2.0, 1.0]]))
    assert order.tolist() == [1, 2, 0, 3]


def test_random_reference_is_seeded():
    adapter, pixels, weights = setup()
    _, a = metrics.faithfulness(adapter, pixels, Target("x"), {"m": weights}, steps=8, seed=3)
    _, b = metrics.faithfulness(adapter, pixels, Target("x"), {"m": weights}, steps=8, seed=3)
    _, c = metrics.faithfulness(adapter, pixels, Target("x"), {"m": weights}, steps=8, seed=4)
    np.testing.assert_array_equal(a.insertion.scores, b.insertion.scores)
    assert not np.array_equal(a.insertion.scores, c.insertion.scores)


def test_curves_share_batches_and_end_points():
    adapter, pixels, weights = setup()
    meter = Metered(adapter)
    metrics.faithfulness(meter, pixels, Target("x"), {"a": weights, "b": -weights}, steps=10, n_random=3)
    # 5 orderings x 2 curves x 9 interior points, plus the two shared end points
    assert meter.forward_passes == 5 * 2 * 9 + 2


def test_blur_substrate_keeps_mean_colour():
    pixels = torch.rand(1, 3, 32, 32)
    blurred = metrics.substrate_image(pixels, "blur")
    assert blurred.shape == pixels.shape
    assert abs(float(blurred.mean() - pixels.mean())) < 0.02
    assert float(blurred.std()) < float(pixels.std())


def test_random_orders_shuffle_whole_blocks():
    orders = metrics.random_orders(8, 12, count=3, seed=0, block=4)
    for order in orders:
        assert sorted(order.tolist()) == list(range(96))
        blocks = [(p // 12 // 4, p % 12 // 4) for p in order]
        # each block's 16 pixels come out together
        runs = [blocks[i : i + 16] for i in range(0, 96, 16)]
        assert all(len(set(run)) == 1 for run in runs)
    assert orders[0].tolist() != orders[1].tolist()
