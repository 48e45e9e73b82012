"""The pictures behind the app's replays (explainers/render.py), on a small hand-made Result:
the bundle round trip, the scrubber's and the step-through's pictures (the very images the
curves and the search scored, rebuilt without a model), the markers, the region map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from explainers import metrics, render
from explainers.regions import grid
from explainers.types import Curve, Curves, MethodResult, RandomReference, Result, SaliencyMap, Target

SIDE = 32
STEPS = 4
ORDER = [5, 0, 10, 15, 1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14]


def curve(kind: str, normalized) -> Curve:
    values = np.asarray(normalized, dtype=np.float64)
    fractions = np.linspace(0.0, 1.0, len(values))
    return Curve(kind, fractions, values * 2 - 3, values, float(np.trapezoid(values, fractions)), -1.0, -3.0)


def curves(deletion, insertion) -> Curves:
    return Curves(curve("deletion", deletion), curve("insertion", insertion))


@pytest.fixture(scope="module")
def result() -> Result:
    rng = np.random.default_rng(0)
    image = rng.integers(40, 200, size=(SIDE, SIDE, 3), dtype=np.uint8)  # no pure white: outlines stand out
    labels = grid(SIDE, SIDE, 16)
    rank_value = np.zeros(16, np.float32)
    rank_value[ORDER] = 1 - np.arange(16) / 16
    path = [
        {"region": r, "gain": 0.1, "kept": k / 16 if k < 6 else None, "removed": 1 - k / 16 if k < 6 else None}
        for k, r in enumerate(ORDER, start=1)
    ]
    methods = {
        "gradcam": MethodResult(
            SaliencyMap("gradcam", rng.random((SIDE, SIDE)).astype(np.float32), 0.5, 1, 1, colour="#d62728"),
            curves([1, 0.5, 0.25, 0.1, 0], [0, 0.6, 0.8, 0.9, 1]),
        ),
        "region": MethodResult(
            SaliencyMap(
                "region",
                rank_value[labels],
                2.0,
                40,
                meta={"order": ORDER, "path": path, "n_regions": 16, "search": "fast"},
                regions=labels,
                title="Region search",
                colour="#2ca02c",
            ),
            curves([1, 0.3, 0.2, 0.1, 0], [0, 0.7, 0.9, 1.1, 1]),
        ),
    }
    reference = RandomReference(curves([1, 0.6, 0.4, 0.2, 0], [0, 0.3, 0.5, 0.7, 1]), (0.01, -0.02, 0.03), "pixels", 0)
    return Result(
        model="bundled",
        target=Target("a cat", ("a dog",)),
        score=0.75,
        prompt_probabilities={"a cat": 0.75, "a dog": 0.25},
        image=image,
        methods=methods,
        random=reference,
        params={
            "methods": ["gradcam", "region"],
            "curve_steps": STEPS,
            "substrate": "black",
            "seed": 0,
            "n_regions": 16,
            "region_kind": "grid",
        },
        seconds=2.5,
        notes=("a note",),
    )


@pytest.fixture(scope="module")
def bundle(result, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle")
    files = render.save_bundle(result, folder / "files", original_size=(64, 48))
    return render.zip_bundle(files, folder / "result.zip")


def pixels_of(result: Result) -> torch.Tensor:
    return torch.from_numpy(result.image).permute(2, 0, 1)[None].float() / 255


def as_array(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB"))


def test_bundle_reads_back_the_result_it_was_written_from(result, bundle):
    loaded, settings = render.bundle_from_zip(bundle)
    assert settings["overlay_size"] == [64, 48] and settings["colour_map"] == render.DEFAULT_COLOUR_MAP
    np.testing.assert_array_equal(loaded.image, result.image)
    assert (loaded.model, loaded.target, loaded.score, loaded.notes) == (
        result.model,
        result.target,
        result.score,
        result.notes,
    )
    assert loaded.params == result.params and loaded.random.srgs == result.random.srgs
    for name, r in result.methods.items():
        mine = loaded.methods[name]
        np.testing.assert_array_equal(mine.saliency.values, r.saliency.values)
        assert mine.srg == r.srg and mine.saliency.forward_passes == r.saliency.forward_passes
        assert loaded.more_faithful_than_random(name) == result.more_faithful_than_random(name)
        for mine_curve, curve_ in zip(mine.curves, r.curves):
            np.testing.assert_array_equal(mine_curve.normalized, curve_.normalized)
            np.testing.assert_array_equal(mine_curve.scores, curve_.scores)
    assert loaded.methods["region"].saliency.meta["path"] == result.methods["region"].saliency.meta["path"]
    np.testing.assert_array_equal(loaded.methods["region"].saliency.regions, result.methods["region"].saliency.regions)
    assert loaded.methods["gradcam"].saliency.regions is None
    assert [(m.saliency.title, m.saliency.colour) for m in loaded.methods.values()] == [
        (m.saliency.title, m.saliency.colour) for m in result.methods.values()
    ]
    assert render.bundle_from_zip(bundle)[0] is loaded  # read once, then kept


def test_scrubber_pictures_are_the_images_the_curves_scored(result):
    for step in range(STEPS + 1):
        deleted, revealed = render.curve_step_images(result, "gradcam", step)
        expected = metrics.curve_images(pixels_of(result), result.methods["gradcam"].saliency.values, step, STEPS)
        for picture, tensor in zip((deleted, revealed), expected):
            np.testing.assert_array_equal(
                as_array(picture), (tensor[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            )
    deleted, revealed = render.curve_step_images(result, "gradcam", 0)
    np.testing.assert_array_equal(as_array(deleted), result.image)  # nothing deleted yet
    assert as_array(revealed).max() == 0  # nothing revealed on black
    half = as_array(render.curve_step_images(result, "gradcam", 2)[0])
    assert (half.sum(axis=2) == 0).mean() == pytest.approx(0.5, abs=0.01)  # the top half deleted


def test_scrub_picture_changes_with_the_step(result):
    pictures = [as_array(render.scrub_picture(result, step, (64, 48))) for step in (0, 2, 4)]
    assert pictures[0].shape == pictures[1].shape
    assert not np.array_equal(pictures[0], pictures[1]) and not np.array_equal(pictures[1], pictures[2])


def test_step_through_pictures_keep_and_remove_the_chosen_regions(result):
    labels = grid(SIDE, SIDE, 16)
    for chosen in (0, 3, 16):
        kept, removed = (as_array(p) for p in render.region_step_images(result, "region", chosen))
        inside = np.isin(labels, ORDER[:chosen])
        np.testing.assert_array_equal(kept[inside], result.image[inside])
        assert kept[~inside].max(initial=0) == 0
        np.testing.assert_array_equal(removed[~inside], result.image[~inside])
        assert removed[inside].max(initial=0) == 0
    assert not np.array_equal(
        as_array(render.step_picture(result, "region", 2)), as_array(render.step_picture(result, "region", 3))
    )


def test_markers_land_on_the_curves(result):
    plain = as_array(render.curve_plot(result, "deletion"))
    marked = render.curve_plot(result, "deletion", marker=1)
    assert not np.array_equal(plain, as_array(marked))
    plot = render._cached_plot(result, f"curve:deletion:{render.shared_ylim(result)}", None)
    x, y = plot.pixel(0, 0.25, 0.5)  # Grad-CAM's deletion curve at step 1
    centre = as_array(marked)[round(y), round(x)]
    assert tuple(centre) == tuple(int(render.colour(result, "gradcam")[i : i + 2], 16) for i in (1, 3, 5))
    assert np.array_equal(as_array(render.curve_plot(result, "deletion")), plain)  # the cached figure is untouched


def test_region_map_outlines_and_numbers_the_first_regions(result):
    labels = grid(SIDE, SIDE, 16)
    picture = as_array(render.region_overlay(result.image, labels, ORDER, alpha=0.5, size=(256, 256), outlined=3))
    white = np.all(picture == 255, axis=2)
    big_labels = np.kron(labels, np.ones((8, 8), dtype=labels.dtype))  # the regions at the picture's size
    for rank, region in enumerate(ORDER):
        on_edge = white[big_labels == region].any()
        assert on_edge == (rank < 3), (rank, region)


def test_smoothing_spreads_a_single_bright_pixel():
    spike = np.zeros((64, 64))
    spike[32, 32] = 1.0
    assert (render.display_values(spike) > 0).sum() == 1
    assert (render.display_values(spike, smooth=render.SMOOTH_SIGMA) > 0.05).sum() > 9


def test_colour_stops_follow_the_colour_map():
    stops = render.colour_stops("inferno", 5)
    assert len(stops) == 5 and stops[0] == "#000003" and stops[-1] == "#fcfea4"


def test_the_auc_table_has_a_row_per_method_and_substrate_with_the_clipped_and_unclipped_srg(result):
    rows = render.auc_table(result)
    assert len(rows) == len(result.substrates) * (len(result.methods) + 1)
    assert all(len(row) == len(render.AUC_HEADERS) for row in rows)
    gradcam = rows[0]
    column = {name: i for i, name in enumerate(render.AUC_HEADERS)}
    assert gradcam[column["Scored on"]] == "black"
    assert gradcam[column["SRG (higher is better)"]] == round(result.methods["gradcam"].srg, 4)
    assert gradcam[column["SRG unclipped"]] == round(result.methods["gradcam"].curves.srg_unclipped, 4)
    region = rows[1]
    assert region[column["Insertion peak (1 = the whole photo)"]] == pytest.approx(1.1)


def test_curves_csv_has_the_substrate_and_probability_of_every_point(result):
    lines = render.curves_csv(result).splitlines()
    assert lines[0] == "method,curve,fraction,score,normalized,substrate,probability"
    assert len(lines) == 1 + 3 * 2 * (STEPS + 1) and all(line.split(",")[5] == "black" for line in lines[1:])
