"""Greedy and lazy greedy on an exactly submodular toy objective (weighted coverage); the SMDL
objective's bounded variant on a linear toy model; properties of every search (a permutation,
deterministic; the two-ended and LIMA-style searches against plain greedy where they must agree)."""

import numpy as np
import pytest
import torch
from toys import linear, signed_linear

from explainers.methods.region_search import (
    SEARCH_FUNCTIONS,
    PartsObjective,
    greedy_images,
    greedy_order,
    lazy_greedy_order,
    lima_order,
    prefix_sets,
    smdl_objective,
    two_ended_order,
)
from explainers.regions import grid, label_masks
from explainers.types import Target


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
    from toys import evidence

    from explainers.methods import run_method

    adapter = evidence(64)
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    previews = []
    result = run_method(
        "region",
        adapter,
        pixels,
        Target("x"),
        n_regions=16,
        regions="grid",
        search="greedy",
        progress=lambda fraction, text, preview=None, **_: previews.append(preview),
    )
    assert len(previews) == 16
    for before, after in zip(previews, previews[1:]):
        shown = before > 0
        assert np.array_equal(after[shown], before[shown]) and (after > 0).sum() > shown.sum()
    np.testing.assert_array_equal(previews[-1], result.values)


# --- every search: properties on toys ---------------------------------------------------------------


def saturating_objective(seed: int, n: int = 14):
    """F(S) = s(S) + 1 - s(I minus S) with s a sigmoid of summed region evidence (redundant
    evidence: one region alone or removed alone changes little), with the objective's optional
    ``kept_scores``, as SmdlObjective offers it (a PartsObjective). Counts the rows it scores."""
    rng = np.random.default_rng(seed)
    weight = rng.gamma(0.5, 1.0, n)
    weight /= weight.sum()

    def s(kept: np.ndarray) -> np.ndarray:
        raw = lambda e: 1 / (1 + np.exp(-12 * (e - 0.3)))  # noqa: E731
        return (raw(kept.astype(float) @ weight) - raw(0.0)) / (raw(1.0) - raw(0.0))

    class Objective(PartsObjective):
        rows = 0

        def kept_scores(self, sets):
            self.rows += len(sets)
            return s(np.asarray(sets, dtype=bool))

        def __call__(self, sets):
            sets = np.asarray(sets, dtype=bool)
            return self.kept_scores(sets) + 1.0 - self.kept_scores(~sets)

    return Objective(), weight


@pytest.mark.parametrize("search", sorted(SEARCH_FUNCTIONS))
@pytest.mark.parametrize("seed", range(3))
def test_every_search_orders_every_region_once_deterministically_with_one_gain_each(search, seed):
    objective, _ = saturating_objective(seed)
    order, gains, evaluated = SEARCH_FUNCTIONS[search](14, objective)
    assert sorted(order) == list(range(14))
    assert len(gains) == 14 and np.all(np.isfinite(gains))
    assert evaluated > 0
    again, _, _ = SEARCH_FUNCTIONS[search](14, saturating_objective(seed)[0])
    assert again == order


@pytest.mark.parametrize("seed", range(5))
def test_two_ended_with_only_a_front_and_no_budget_limit_is_plain_greedy(seed):
    evaluate, _ = coverage_objective(seed)  # a plain F, without kept_scores: every candidate scored whole
    greedy, _, _ = greedy_order(12, evaluate)
    order, _, _ = two_ended_order(12, evaluate, budget=10**6, front_area=1.0)
    assert order == greedy


@pytest.mark.parametrize("seed", range(5))
def test_two_ended_with_only_a_back_and_no_budget_limit_is_greedy_on_minus_f_reversed(seed):
    evaluate, _ = coverage_objective(seed)
    reverse, _, _ = greedy_order(12, lambda sets: -evaluate(sets))  # the region of least F(B + r) first
    order, _, _ = two_ended_order(12, evaluate, budget=10**6, front_area=0.0)
    assert order == reverse[::-1]


def test_two_ended_orders_an_additive_score_exactly_at_its_default_budget():
    """When the score is additive over regions, stale scores read as changes are exact, so any
    pool finds the best region: the order is by decreasing evidence, as plain greedy's."""
    weights = np.array([5, 1, 9, 3, 7, 2, 8, 6, 4, 0.5, 11, 10], dtype=float)
    adapter, pixels = linear(np.repeat(np.repeat(weights.reshape(3, 4), 4, 0), 4, 1)), torch.ones(1, 3, 12, 16)
    labels = np.repeat(np.repeat(np.arange(12).reshape(3, 4), 4, 0), 4, 1)
    objective, _, _ = smdl_objective(adapter, pixels, Target("x"), label_masks(labels))
    order, _, images = two_ended_order(12, objective)
    assert order == list(np.argsort(-weights, kind="stable"))
    assert images <= greedy_images(12) // 5 - 2


@pytest.mark.parametrize("seed", range(3))
def test_lima_front_is_plain_greedy_until_the_tail_stops(seed):
    """LIMA's front scores every remaining region (as plain greedy); with 14 regions and 8
    pending the tail takes 3 regions (while more than 8 remain), the front the other 11."""
    objective, _ = saturating_objective(seed)
    greedy, _, _ = greedy_order(14, objective)
    order, _, evaluated = lima_order(14, objective, pending=8)
    assert order[:11] == greedy[:11]
    assert evaluated == (14 + 8) + (12 + 8) + (10 + 8) + sum(range(1, 9))


# --- searching on several substrates; a prior that breaks ties ---------------------------------------


@pytest.mark.parametrize("bounded", [False, True])
def test_an_objective_on_two_substrates_scores_the_mean_of_each_substrates_normalised_score(bounded):
    adapter, pixels = signed_linear(16), torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    masks = label_masks(grid(16, 16, 4))
    sets = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=bool)
    one = [smdl_objective(adapter, pixels, Target("x"), masks, substrate=s)[0] for s in ("black", "blur")]
    both, _, _ = smdl_objective(adapter, pixels, Target("x"), masks, bounded=bounded, substrate=("black", "blur"))
    clip = (lambda v: np.clip(v, 0, 1)) if bounded else (lambda v: v)
    expected = np.mean([clip(o.kept_scores(sets)) for o in one], axis=0)
    assert not np.allclose(one[0].kept_scores(sets), one[1].kept_scores(sets))  # the substrates differ here
    np.testing.assert_allclose(both.kept_scores(sets), expected, rtol=1e-6)
    assert (both.images_per_set, both.end_images) == (2, 3)


def test_two_ended_on_two_substrates_counts_an_image_per_substrate_within_a_fifth_of_greedy():
    from toys import evidence

    from explainers.methods.region_search import explain
    from explainers.models.base import Metered

    adapter = Metered(evidence(64))
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    m = explain(adapter, pixels, Target("x"), n_regions=36, regions="grid", search_substrates="black+blur")
    n = m.meta["n_regions"]
    assert adapter.forward_passes == 3 + m.meta["sets_evaluated"]  # the photo, two removed images, then the sets
    assert m.meta["sets_evaluated"] % 2 == 0  # every set scored on both substrates
    assert adapter.forward_passes <= greedy_images(n) // 5
    assert sorted(m.meta["order"]) == list(range(n))


def test_two_ended_with_a_prior_orders_tied_regions_by_it_and_without_by_index():
    """When F is constant every estimate ties: the front takes the highest prior, the back the
    lowest (placed last), so the order is by decreasing prior; without a prior, by index."""
    prior = np.array([0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.4])

    def flat(sets: np.ndarray) -> np.ndarray:
        return np.ones(len(sets))

    order, _, _ = two_ended_order(8, flat, budget=10**6, prior=prior)
    assert order == list(np.argsort(-prior))
    plain, _, _ = two_ended_order(8, flat, budget=10**6)
    assert plain[0] == 0 and plain[-1] == 1  # front: lowest index first; back: lowest index placed last


# --- Grad-CAM inside region search: pixels within regions, a blended region order ---------------------


def test_order_within_regions_keeps_the_order_of_regions_and_ranks_pixels_inside_by_the_inner_map():
    from explainers.regions import order_within_regions

    labels = np.repeat(np.arange(4), 4).reshape(4, 4)  # region r = row r
    region_map = np.array([0.5, 1.0, 0.25, 0.75])[labels]
    inner = np.random.default_rng(0).random((4, 4))
    out = order_within_regions(region_map, labels, inner)
    for r in range(4):  # inside a region: the inner map's order
        assert list(np.argsort(-out[r])) == list(np.argsort(-inner[r]))
    assert out[1].min() > out[3].max() > out[3].min() > out[0].max() > out[0].min() > out[2].max()


def test_blend_orders_at_zero_is_the_search_at_one_the_prior_and_between_a_mean_of_ranks():
    from explainers.methods.region_search import blend_orders

    order, prior = [2, 3, 0, 1], np.array([0.1, 0.9, 0.5, 0.3])
    assert blend_orders(order, prior, 0.0) == order
    assert blend_orders(order, prior, 1.0) == [1, 2, 3, 0]
    # ranks (search, prior): 0 -> (2/3, 1), 1 -> (1, 0), 2 -> (0, 1/3), 3 -> (1/3, 2/3); means 5/6, 1/2, 1/6, 1/2
    assert blend_orders(order, prior, 0.5) == [2, 1, 3, 0]  # 1 and 3 tie: the lower index first


@pytest.mark.parametrize("within,blend", [("gradcam", 0.0), ("flat", 0.5), ("gradcam", 0.5)])
def test_grad_cam_in_region_search_costs_one_forward_and_one_backward_pass(within, blend):
    from toys import OneConv

    from explainers.methods import run_method

    pixels = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = {"n_regions": 16, "regions": "grid", "search": "greedy"}
    plain = run_method("region", OneConv(), pixels, Target("x"), within="flat", cam_blend=0.0, **kwargs)
    guided = run_method("region", OneConv(), pixels, Target("x"), within=within, cam_blend=blend, **kwargs)
    assert (guided.forward_passes, guided.backward_passes) == (plain.forward_passes + 1, 1)
    assert guided.meta["search_order"] == plain.meta["order"]
    assert sorted(guided.meta["order"]) == list(range(16))
    if blend == 0.0:  # the regions keep the search's order; the map varies inside them
        assert guided.meta["order"] == plain.meta["order"]
        assert len(np.unique(guided.values)) > len(np.unique(plain.values))
    assert len(guided.meta["path"]) == 16


def test_grad_cam_options_fall_back_to_the_search_alone_on_a_model_without_gradients():
    from toys import OneConv

    from explainers.methods import run_method

    pixels = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = {"n_regions": 16, "regions": "grid", "search": "greedy"}
    plain = run_method("region", OneConv(), pixels, Target("x"), within="flat", cam_blend=0.0, **kwargs)
    model = OneConv()
    model.gradients = False
    guided = run_method("region", model, pixels, Target("x"), within="gradcam", cam_blend=0.5, **kwargs)
    assert guided.backward_passes == 0 and guided.forward_passes == plain.forward_passes
    np.testing.assert_array_equal(guided.values, plain.values)
    assert (guided.meta["within"], guided.meta["cam_blend"]) == ("flat", 0.0)


def test_the_default_map_blends_grad_cam_and_a_model_without_a_cam_layer_gets_the_search_alone():
    from toys import OneConv, evidence

    from explainers.methods import run_method

    pixels = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = {"n_regions": 16, "regions": "grid", "search": "greedy"}
    default = run_method("region", OneConv(), pixels, Target("x"), **kwargs)
    assert (default.meta["within"], default.meta["cam_blend"], default.backward_passes) == ("gradcam", 0.5, 1)
    no_cam = run_method("region", evidence(16), pixels, Target("x"), **kwargs)  # cam_layer not implemented
    flat = run_method("region", evidence(16), pixels, Target("x"), within="flat", cam_blend=0.0, **kwargs)
    assert (no_cam.meta["within"], no_cam.meta["cam_blend"], no_cam.backward_passes) == ("flat", 0.0, 0)
    np.testing.assert_array_equal(no_cam.values, flat.values)
