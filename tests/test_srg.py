"""SRG, the protocol's headline (Bluecher et al. 2024): its identity with least- minus
most-relevant-first deletion, random orderings near 0, and the one "more faithful than random" check."""

import numpy as np
import pytest
import torch
from toys import FunctionAdapter, linear

from explainers import metrics
from explainers.types import Target, beats_random


def saturating(weights: np.ndarray) -> FunctionAdapter:
    """A nonlinear toy: log sigmoid of the weighted evidence, so curves are not straight lines."""
    w = torch.from_numpy(weights).float()
    return FunctionAdapter(
        lambda x: torch.nn.functional.logsigmoid(8 * ((x[:, 0] * w).sum(dim=(1, 2)) / w.sum() - 0.5)),
        input_size=w.shape,
    )


@pytest.mark.parametrize("steps", [4, 8, 16])
@pytest.mark.parametrize("substrate", ["black", "blur"])
def test_srg_is_lerf_minus_morf_deletion(steps, substrate):
    """On one substrate the insertion image at f is the least-relevant-first deletion image at 1 - f,
    so SRG = AUC(insertion) - AUC(MoRF deletion) = AUC(LeRF deletion) - AUC(MoRF deletion)."""
    rng = np.random.default_rng(1)
    side = 48  # the blur substrate's kernel needs room; steps divide the 2304 pixels evenly
    weights = rng.random((side, side))
    adapter, pixels = saturating(weights), torch.from_numpy(rng.random((1, 3, side, side))).float()
    saliency = rng.random((side, side))  # distinct values: -saliency is exactly the reversed order
    curves, _ = metrics.faithfulness(
        adapter, pixels, Target("x"), {"morf": saliency, "lerf": -saliency}, steps=steps, substrate=substrate
    )
    morf, lerf = curves["morf"], curves["lerf"]
    assert morf.srg == pytest.approx(morf.insertion.auc - morf.deletion.auc, abs=1e-12)
    assert morf.srg == pytest.approx(lerf.deletion.auc - morf.deletion.auc, abs=1e-9)
    np.testing.assert_allclose(morf.insertion.scores, lerf.deletion.scores[::-1], rtol=1e-6)
    assert abs(morf.srg) > 0.01  # a case where the two deletion curves differ, not a trivial 0 = 0


def test_random_orderings_average_to_zero_srg():
    weights = np.random.default_rng(2).random((8, 8))
    adapter, pixels = saturating(weights), torch.ones(1, 3, 8, 8)
    srgs = []
    for seed in range(10):
        _, reference = metrics.faithfulness(adapter, pixels, Target("x"), {}, steps=16, n_random=4, seed=seed)
        srgs += reference.srgs
        assert reference.srg == pytest.approx(np.mean(reference.srgs), abs=1e-9)
    assert np.std(srgs) > 0.01  # they do differ one by one...
    assert abs(np.mean(srgs)) < 3 * np.std(srgs) / np.sqrt(len(srgs))  # ...and average to zero


def test_the_ideal_map_is_more_faithful_than_random_and_the_reversed_one_is_not():
    weights = np.random.default_rng(3).random((6, 6))
    adapter, pixels = linear(weights), torch.ones(1, 3, 6, 6)
    curves, reference = metrics.faithfulness(
        adapter, pixels, Target("x"), {"ideal": weights, "reversed": -weights}, steps=36, n_random=5
    )
    assert beats_random(curves["ideal"].srg, reference)
    assert not beats_random(curves["reversed"].srg, reference)
    assert curves["reversed"].srg < 0 < curves["ideal"].srg


def test_beats_random_needs_more_than_the_mean_of_the_orderings():
    _, reference = metrics.faithfulness(
        linear(np.random.default_rng(4).random((6, 6))), torch.ones(1, 3, 6, 6), Target("x"), {}, steps=12, n_random=5
    )
    between = (reference.srg + max(reference.srgs)) / 2
    assert reference.srg < between < max(reference.srgs)
    assert not beats_random(between, reference)  # above the mean but within the spread of chance
    assert beats_random(max(reference.srgs) + 1e-6, reference)


def test_random_regions_shuffle_whole_regions():
    labels = np.repeat(np.arange(4), 4).reshape(4, 4)  # four horizontal bands
    orders = metrics.shuffled_orders(labels, count=3, seed=0)
    for order in orders:
        bands = labels.ravel()[order]
        assert all(len(set(bands[i : i + 4])) == 1 for i in range(0, 16, 4))
    adapter, pixels = linear(np.random.default_rng(5).random((4, 4))), torch.ones(1, 3, 4, 4)
    _, reference = metrics.faithfulness(
        adapter, pixels, Target("x"), {}, steps=4, n_random=3, random_ranking="regions", region_labels=labels
    )
    assert reference.ranking == "regions" and reference.orderings == 3
