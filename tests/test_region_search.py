"""Greedy and lazy greedy on an exactly submodular toy objective (weighted coverage)."""
import numpy as np
import pytest

from explainers.methods.region_search import greedy_order, lazy_greedy_order


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
