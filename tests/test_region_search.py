"""Greedy and lazy greedy on an exactly submodular toy objective (weighted coverage); the SMDL
objective's bounded variant on a linear toy model."""
import numpy as np
import pytest
import torch

from explainers.methods.region_search import greedy_order, lazy_greedy_order, prefix_sets, smdl_objective
from explainers.regions import grid, label_masks
from explainers.types import Target

from toys import signed_linear


def coverage_objective(seed: int, n_sets: int = 12, n_items: int = 40):
    rng = np.random.default_rng(seed)
    covers = rng.random((n_sets, n_items)) < 0.2
    weights = rng.random(n_items)
    calls = []

    def evaluate(sets: np.ndarray) -> np.ndarray:
        calls.append(len(sets))
        covered = (sets.astype(float) @ covers.astype(float)) > 0
        return covered.astype(float) @ weights

    return evaluate, calls


@pytest.mark.parametrize("seed", range(5))
def test_lazy_greedy_matches_greedy_with_fewer_evaluations(seed):
    evaluate, _ = coverage_objective(seed)
    order, gains, greedy_evals = greedy_order(12, evaluate)
    lazy_order, lazy_gains, lazy_evals = lazy_greedy_order(12, evaluate)
    assert lazy_order == order
    np.testing.assert_allclose(lazy_gains, gains, atol=1e-12)
    assert greedy_evals == 12 * 13 // 2
    assert lazy_evals < greedy_evals


def test_greedy_gains_are_non_increasing_on_a_submodular_objective():
    evaluate, _ = coverage_objective(7)
    _, gains, _ = greedy_order(12, evaluate)
    assert all(a >= b - 1e-12 for a, b in zip(gains, gains[1:]))


def test_greedy_picks_the_best_first_region():
    evaluate, _ = coverage_objective(11)
    singles = evaluate(np.eye(12, dtype=bool))
    order, _, _ = greedy_order(12, evaluate)
    assert order[0] == int(np.argmax(singles))


def test_bounded_objective_clips_each_normalised_score_to_the_unit_interval():
    adapter, pixels = signed_linear(16), torch.full((1, 3, 16, 16), 0.5)
    masks = label_masks(grid(16, 16, 4))
    sets = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=bool)
    kept, _, _ = smdl_objective(adapter, pixels, Target("x"), masks, 1.0, 0.0)
    not_removed, _, _ = smdl_objective(adapter, pixels, Target("x"), masks, 0.0, 1.0)
    raw_kept, raw_removed = kept(sets), 1.0 - not_removed(sets)
    assert raw_kept.max() > 1.0 and raw_removed.min() < 0.0  # the case worth bounding
    bounded, _, _ = smdl_objective(adapter, pixels, Target("x"), masks, bounded=True)
    expected = np.clip(raw_kept, 0, 1) + 1.0 - np.clip(raw_removed, 0, 1)
    np.testing.assert_allclose(bounded(sets), expected, rtol=1e-6)


def test_prefix_sets_row_k_holds_exactly_the_first_k_plus_one_regions_of_the_order():
    order = [3, 0, 4, 1, 2]
    prefixes = prefix_sets(order)
    for k in range(len(order)):
        assert set(np.flatnonzero(prefixes[k])) == set(order[: k + 1])


def test_region_search_previews_its_map_as_regions_are_chosen():
    """Anytime: each progress report carries the map of the regions chosen so far; every preview
    keeps the previous one's regions and their values, and the last is the final map."""
    from explainers.methods import run_method

    from toys import evidence

    adapter = evidence(64)
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    previews = []
    result = run_method("region", adapter, pixels, Target("x"), n_regions=16, regions="grid", search="greedy",
                        progress=lambda fraction, text, preview=None, **_: previews.append(preview))
    assert len(previews) == 16
    for before, after in zip(previews, previews[1:]):
        shown = before > 0
        assert np.array_equal(after[shown], before[shown]) and (after > 0).sum() > shown.sum()
    np.testing.assert_array_equal(previews[-1], result.values)
