"""Deterministic forward-pass counts behind bench/ (no timing here): region search and curves.

A cheap differentiable toy model (toys.evidence) stands in for the network, so greedy's 2,452 passes at 49
regions cost a second; the counts are the same for any model because they depend only on the
search and the protocol (the fast search's count also depends on where F saturates, which the
fake reaches like a real classifier: a sigmoid of evidence, so gains grow as regions combine).
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from toys import evidence

from explainers import metrics
from explainers.images import open_image
from explainers.methods import region_search, run_method
from explainers.models.base import Metered
from explainers.types import Target

PHOTO = Path(__file__).resolve().parents[1] / "assets" / "chelsea.jpg"


@pytest.fixture(scope="module")
def photo():
    adapter = evidence()
    return adapter, adapter.load_image(open_image(PHOTO))


def greedy_passes(n: int) -> int:
    """Plain greedy: n(n+1)/2 sets, 2 images each, plus the full and the removed image once, less
    the 6 images it has scored before: its last two steps' 3 sets are complements of first-step
    sets or the photo itself (the objective scores each distinct image once)."""
    return n * (n + 1) + 2 - 6


@pytest.mark.parametrize("regions", ["grid", "slic"])
def test_plain_greedy_passes_are_n_times_n_plus_one_less_four(photo, regions):
    adapter, pixels = photo
    m = run_method("region", adapter, pixels, Target("a cat"), n_regions=16, regions=regions, search="greedy")
    n = m.meta["n_regions"]
    assert m.forward_passes == greedy_passes(n)
    assert m.meta["sets_evaluated"] == n * (n + 1) // 2
    assert m.backward_passes == 0


@pytest.mark.parametrize("regions", ["grid", "slic"])
def test_fast_search_uses_at_most_a_fifth_of_greedys_passes_at_49_regions(photo, regions):
    adapter, pixels = photo
    m = run_method("region", adapter, pixels, Target("a cat"), n_regions=49, regions=regions, search="fast")
    n = m.meta["n_regions"]
    assert n >= 30  # SLIC gives about the number asked for (39 on this photo)
    assert m.forward_passes <= greedy_passes(n) / 5
    # its own count: the two end images; the prior's sets come in complementary pairs that share
    # their two images; then 2 images per set, exactly the budget: 2 + 5n passes for even n
    assert m.meta["sets_evaluated"] == region_search.FAST_BUDGET_PER_REGION * n
    prior_sets = 2 * ((n + 1) // 2)
    assert m.forward_passes == 2 + 2 * m.meta["sets_evaluated"] - prior_sets
    assert m.backward_passes == 0
    assert sorted(m.meta["order"]) == list(range(n))


@pytest.mark.parametrize("regions", ["grid", "slic"])
def test_two_ended_search_uses_at_most_a_fifth_of_greedys_passes_and_counts_them_exactly(photo, regions):
    adapter, pixels = photo
    m = run_method("region", adapter, pixels, Target("a cat"), n_regions=49, regions=regions, search="two-ended")
    n = m.meta["n_regions"]
    assert n >= 30
    assert m.forward_passes <= greedy_passes(n) / 5
    # the search's own bill (each distinct image it asked for) plus the objective's two end images
    assert m.forward_passes == 2 + m.meta["sets_evaluated"]
    assert m.forward_passes >= 2 + 2 * n  # every region alone and removed alone, at least
    assert sorted(m.meta["order"]) == list(range(n))


@pytest.mark.parametrize("regions", ["grid", "slic"])
def test_lima_style_search_scores_the_front_as_greedy_and_a_pending_tail(photo, regions):
    adapter, pixels = photo
    m = run_method("region", adapter, pixels, Target("a cat"), n_regions=49, regions=regions, search="lima")
    n, pending = m.meta["n_regions"], region_search.LIMA_PENDING
    # step k: the m_k remaining regions for the front, ``pending`` for the tail while m_k > pending
    remaining, sets = n, 0
    while remaining > 0:
        sets += remaining + (pending if remaining > pending else 0)
        remaining -= 2 if remaining > pending else 1
    assert m.meta["sets_evaluated"] == sets
    assert greedy_passes(n) / 1.7 < m.forward_passes < greedy_passes(n) / 1.3  # LIMA: ~1.6x under greedy
    assert sorted(m.meta["order"]) == list(range(n))


def test_a_set_and_its_complement_cost_two_images_together_and_nothing_when_asked_again(photo):
    toy, pixels = photo
    adapter = Metered(toy)
    masks = region_search.label_masks(region_search.region_labels(pixels, 16, "grid"))
    evaluate, _, _ = region_search.smdl_objective(adapter, pixels, Target("a cat"), masks)
    some = np.random.default_rng(0).random(16) < 0.5
    before = adapter.forward_passes
    together = evaluate(np.stack([some, ~some]))
    assert adapter.forward_passes - before == 2
    alone = evaluate(some[None])
    assert adapter.forward_passes - before == 2
    fresh, _, _ = region_search.smdl_objective(adapter, pixels, Target("a cat"), masks)
    np.testing.assert_allclose(together[0], fresh(some[None])[0], rtol=1e-6)
    np.testing.assert_allclose(together[0], alone[0], rtol=1e-6)
    np.testing.assert_allclose(together.sum(), 2.0, rtol=1e-6)  # F(S) + F(I \ S) = 2 when both weights are 1


def test_fast_search_with_a_pool_of_every_region_is_plain_greedy(photo):
    adapter, pixels = photo
    greedy = run_method("region", adapter, pixels, Target("a cat"), n_regions=16, regions="grid", search="greedy")
    masks = region_search.label_masks(region_search.region_labels(pixels, 16, "grid"))
    evaluate, _, _ = region_search.smdl_objective(adapter, pixels, Target("a cat"), masks)
    order, _, evaluated = region_search.fast_order(16, evaluate, prior=np.zeros(16), pool=16, budget=10**6)
    assert order == greedy.meta["order"]
    assert evaluated == 16 * 17 // 2


@pytest.mark.parametrize("steps,n_maps,n_random", [(20, 3, 3), (50, 3, 3), (10, 1, 5)])
def test_curves_cost_two_end_images_plus_two_per_interior_step_per_ordering(photo, steps, n_maps, n_random):
    toy, pixels = photo
    adapter = Metered(toy)
    rng = np.random.default_rng(0)
    maps = {f"m{i}": rng.random(pixels.shape[2:]) for i in range(n_maps)}
    curves, reference = metrics.faithfulness(adapter, pixels, Target("a cat"), maps, steps=steps, n_random=n_random)
    expected = 2 + (n_maps + n_random) * 2 * (steps - 1)
    assert adapter.forward_passes == expected
    assert reference.insertion.fractions.shape == (steps + 1,)


def test_the_default_map_with_grad_cam_stays_within_a_fifth_of_greedys_passes():
    """The default blends Grad-CAM (one forward and one backward pass): the two-ended search
    spends one image less, so the map costs at most a fifth of plain greedy's passes."""
    from toys import OneConv

    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    m = run_method("region", OneConv(), pixels, Target("x"), n_regions=49, regions="grid")
    n = m.meta["n_regions"]
    assert m.meta["cam_blend"] > 0 and m.backward_passes == 1
    assert m.forward_passes <= greedy_passes(n) / 5
    assert m.forward_passes == 2 + m.meta["sets_evaluated"] + 1  # the end images, the search's, Grad-CAM's
