"""Issue 18's protocol: the bounded SRG (curves clipped pointwise to [0, 1]) with what clipping cuts
off reported apart (unclipped AUCs, the insertion peak and its overshoot, the deletion floor),
every adapter's probability in [0, 1] from one forward pass, curves on several scoring substrates
(no map made twice; each substrate's numbers those of a run on it alone), region-granularity
curves, the data set's rows format (old folders refused), the ill-conditioned rule from the
photo's own scores, and the sanity check over a data set (blank maps apart, reference rows)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from conftest import ASSETS
from test_evaluate import PHOTOS, SMALL, ToyConv, by_key, rows_of, write_manifest
from toys import FunctionAdapter, linear

from explainers import explain, metrics
from explainers.api import PARAMS, validate_params
from explainers.errors import UserError
from explainers.evaluate import evaluate, read_rows, stats
from explainers.evaluate.__main__ import main as evaluate_main
from explainers.evaluate.manifest import Item
from explainers.evaluate.rows import RANDOM
from explainers.models.base import Metered
from explainers.render import bundle_from_zip, save_bundle, zip_bundle
from explainers.types import ScoreMeaning, Target, clipped_auc

SIDE = 4  # 16 pixels, one per curve step


def signed_toy() -> FunctionAdapter:
    """score = sum over channels of w * x, w = 1 on the left half, -0.5 on the right: on an all-ones
    photo the left half alone scores twice the whole photo, and removing it scores below black."""
    w = torch.ones(1, 1, SIDE, SIDE)
    w[..., SIDE // 2 :] = -0.5
    return FunctionAdapter(lambda x: (x * w).sum(dim=(1, 2, 3)), input_size=(SIDE, SIDE), name="signed")


def left_first() -> np.ndarray:
    """The map that ranks the left half first (ties: lower flat index first)."""
    values = np.zeros((SIDE, SIDE))
    values[:, : SIDE // 2] = 1.0
    return values


def hand_curves() -> tuple[np.ndarray, np.ndarray]:
    """The normalised insertion and deletion curves of ``left_first`` on the signed toy, by hand:
    full score 3 * (8 - 0.5 * 8) = 12, black 0; each left pixel is worth +3, each right one -1.5."""
    insertion, deletion = [], []
    for k in range(SIDE * SIDE + 1):
        shown = 3.0 * min(k, 8) - 1.5 * max(k - 8, 0)
        insertion.append(shown / 12.0)
        deletion.append((12.0 - shown) / 12.0)
    return np.array(insertion), np.array(deletion)


def test_peak_overshoot_floor_and_the_clipped_aucs_on_a_toy_where_a_part_outscores_the_whole():
    adapter, pixels = signed_toy(), torch.ones(1, 3, SIDE, SIDE)
    curves, _ = metrics.faithfulness(adapter, pixels, Target("x"), {"left": left_first()}, steps=SIDE * SIDE)
    c = curves["left"]
    insertion, deletion = hand_curves()
    fractions = np.linspace(0, 1, SIDE * SIDE + 1)
    np.testing.assert_allclose(c.insertion.normalized, insertion, atol=1e-12)
    np.testing.assert_allclose(c.deletion.normalized, deletion, atol=1e-12)
    assert c.insertion.peak == pytest.approx(2.0) and c.insertion.peak_fraction == 0.5
    assert c.deletion.floor == pytest.approx(-1.0)
    # Areas by hand: pointwise, then the trapezoid over 16 equal steps.
    overshoot = np.trapezoid(np.maximum(insertion - 1.0, 0.0), fractions)
    assert overshoot > 0.3 and c.insertion.overshoot_area == pytest.approx(overshoot, abs=1e-12)
    assert c.insertion.auc == pytest.approx(np.trapezoid(np.clip(insertion, 0, 1), fractions), abs=1e-12)
    assert c.deletion.auc == pytest.approx(np.trapezoid(np.clip(deletion, 0, 1), fractions), abs=1e-12)
    assert c.insertion.auc_unclipped == pytest.approx(np.trapezoid(insertion, fractions), abs=1e-12)
    assert c.insertion.auc < c.insertion.auc_unclipped and c.deletion.auc > c.deletion.auc_unclipped
    assert c.srg < c.srg_unclipped  # clipping takes back what scoring above the photo and below black gave
    for curve in c:  # nothing is lost: the unclipped area is the clipped one, plus above 1, less below 0
        assert curve.auc_unclipped == pytest.approx(curve.auc + curve.overshoot_area - curve.undershoot_area)
        assert 0.0 <= curve.auc <= 1.0


@pytest.mark.parametrize("substrate", ["black", "blur"])
def test_the_clipped_srg_is_lerf_minus_morf_pointwise(substrate):
    """SRG = AUC(insertion) - AUC(deletion) stays AUC(LeRF) - AUC(MoRF) of Bluecher et al. with the
    curves clipped, because the clip is pointwise: the insertion image at f is the LeRF deletion
    image at 1 - f (on one substrate), so their clipped points are the same numbers."""
    adapter, pixels = signed_toy(), torch.rand(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    values = np.random.default_rng(2).normal(size=(SIDE, SIDE))
    steps = SIDE * SIDE
    curves, _ = metrics.faithfulness(adapter, pixels, Target("x"), {"m": values}, steps=steps, substrate=substrate)
    lerf, _ = metrics.faithfulness(adapter, pixels, Target("x"), {"m": -values}, steps=steps, substrate=substrate)
    c, reversed_ = curves["m"], lerf["m"]
    assert c.insertion.peak > 1.0 or c.deletion.floor < 0.0  # the clip matters on this toy
    np.testing.assert_allclose(c.insertion.normalized, reversed_.deletion.normalized[::-1], atol=1e-9)
    fractions = c.deletion.fractions
    lerf_auc = clipped_auc(reversed_.deletion.normalized, fractions)
    assert c.srg == pytest.approx(lerf_auc - c.deletion.auc, abs=1e-9)


def test_random_orderings_average_to_zero_clipped_srg_where_the_clip_matters():
    adapter, pixels = signed_toy(), torch.ones(1, 3, SIDE, SIDE)
    srgs, raw = [], []
    for seed in range(40):
        _, reference = metrics.faithfulness(adapter, pixels, Target("x"), {}, steps=16, n_random=3, seed=seed)
        srgs += reference.srgs
        raw += reference.srgs_unclipped
    assert any(abs(a - b) > 1e-6 for a, b in zip(srgs, raw))  # clipping changed some orderings' SRG
    assert abs(np.mean(srgs)) < 3 * np.std(srgs) / np.sqrt(len(srgs)) + 0.01
    assert len(srgs) == 120 and all(-1.0 <= s <= 1.0 for s in srgs)


def test_region_means_flip_whole_regions():
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    values = np.arange(16, dtype=float).reshape(4, 4)
    means = metrics.region_means(values, labels)
    assert means[0, 0] == pytest.approx(np.mean([0, 1, 4, 5])) and len(np.unique(means)) == 4
    order = metrics.pixel_order(means)
    assert [int(labels.ravel()[i]) for i in order] == [3] * 4 + [2] * 4 + [1] * 4 + [0] * 4
    with_nan = values.copy()
    with_nan[0, 0] = np.nan  # a non-finite value is left out of its region's mean
    assert metrics.region_means(with_nan, labels)[0, 1] == pytest.approx(np.mean([1, 4, 5]))
    adapter = linear(np.ones((4, 4)))
    curves, reference = metrics.faithfulness(
        adapter,
        torch.rand(1, 3, 4, 4),
        Target("x"),
        {"m": values},
        steps=4,
        n_random=2,
        region_labels=labels,
        curve_ranking="regions",
    )
    assert reference.ranking == "regions"  # the random reference shuffles the same regions


# --- what a score means, and its probability -------------------------------------------------
def test_every_adapter_gives_a_probability_in_0_1_from_one_forward_pass(adapters):
    """bundled (log-probability: the mass on the matched classes), CLIP (a logit: softmax against
    ImageNet's class names), each with contrast prompts (the softmax among them = the score)."""
    pixels = torch.rand(5, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    for adapter in adapters.values():
        images = torch.nn.functional.interpolate(pixels, size=adapter.input_size)
        for target in (Target("a cat"), Target("a cat", ("a dog", "a car"))):
            meter = Metered(adapter)
            score, probability = meter.scores_many(images, target)
            assert meter.forward_passes == 5 and probability.shape == (5,)
            assert torch.all((probability >= 0) & (probability <= 1)) and torch.isfinite(probability).all()
            torch.testing.assert_close(score, adapter.score_many(images, target), atol=1e-5, rtol=1e-5)
            meaning = adapter.score_meaning(target)
            assert isinstance(meaning, ScoreMeaning) and meaning.words and meaning.min_span > 0
            if target.contrast:
                assert meaning.name == "probability"
                torch.testing.assert_close(probability, score)
            elif meaning.name == "log-probability":
                torch.testing.assert_close(probability, score.exp())
            else:  # CLIP: the prompt's logit against the vocabulary's, by hand
                assert meaning.name == "logit" and len(adapter.vocabulary) == 1000
                with torch.no_grad():
                    features = adapter.image_features(images)
                    scale = adapter.model.logit_scale.exp()
                    logits = (
                        scale
                        * features
                        @ torch.cat([adapter.text_features(("a cat",)), adapter.vocabulary_features()]).T
                    )
                torch.testing.assert_close(probability, torch.softmax(logits, dim=1)[:, 0], atol=1e-6, rtol=1e-5)


def test_explain_reports_the_probability_and_the_models_own_words(bundled):
    result = explain(ASSETS / "chelsea.jpg", "a cat", model=bundled, methods=["gradcam"], curve_steps=4, n_random=1)
    assert result.score_meaning.name == "log-probability"
    assert result.probability == pytest.approx(math.exp(result.score), rel=1e-6)
    summary = result.summary()
    assert summary["probability"] == result.probability and summary["score_meaning"]["name"] == "log-probability"
    assert summary["target"] == {"kind": "prompt", "prompt": "a cat", "contrast": []}
    entry = summary["methods"]["gradcam"]
    for name in ("insertion_auc_probability", "deletion_auc_probability"):
        assert 0.0 <= entry[name] <= 1.0
    curve = result.methods["gradcam"].insertion
    assert curve.probabilities[-1] == pytest.approx(result.probability, rel=1e-5)  # the photo's own point


# --- several scoring substrates ------------------------------------------------------------------
def test_explain_scores_every_map_on_each_substrate_the_same_as_alone(tmp_path):
    adapter, image = ToyConv(), ASSETS / "chelsea.jpg"
    both = explain(image, "a cat", model=adapter, methods=["gradcam", "ig"], score_substrates="blur,black", **SMALL)
    assert both.substrates == ("blur", "black") and both.params["score_substrates"] == ("blur", "black")
    for substrate in ("black", "blur"):
        alone = explain(image, "a cat", model=adapter, methods=["gradcam", "ig"], score_substrates=[substrate], **SMALL)
        assert alone.substrates == (substrate,)
        for name in ("gradcam", "ig"):
            a, b = both.methods[name].by_substrate[substrate], alone.methods[name].curves
            np.testing.assert_array_equal(a.insertion.scores, b.insertion.scores)
            np.testing.assert_array_equal(a.deletion.scores, b.deletion.scores)
            assert a.srg == b.srg
        assert both.random_by_substrate[substrate].srgs == alone.random.srgs
    assert both.methods["gradcam"].curves is both.methods["gradcam"].by_substrate["blur"]  # the first: the headline
    summary = json.loads(json.dumps(both.summary(), allow_nan=False))
    assert summary["score_substrates"] == ["blur", "black"]
    entry = summary["methods"]["gradcam"]
    assert list(entry["substrates"]) == ["blur", "black"]
    assert entry["srg"] == entry["substrates"]["blur"]["srg"]
    for key in (
        "srg",
        "srg_unclipped",
        "insertion_auc",
        "deletion_auc",
        "insertion_auc_unclipped",
        "deletion_auc_unclipped",
        "insertion_peak",
        "overshoot_area",
        "deletion_floor",
        "insertion_auc_probability",
        "deletion_auc_probability",
        "curves",
    ):
        assert key in entry and key in entry["substrates"]["black"] and key in summary["random"]["substrates"]["black"]
    assert "more_faithful_than_random" in entry["substrates"]["black"]
    # The bundle keeps every substrate: what the app's scrubber and a reader load back.
    loaded, _ = bundle_from_zip(zip_bundle(save_bundle(both, tmp_path / "b"), tmp_path / "b.zip"))
    assert loaded.substrates == ("blur", "black")
    assert loaded.methods["ig"].by_substrate["black"].srg == pytest.approx(both.methods["ig"].by_substrate["black"].srg)
    assert loaded.random_by_substrate["black"].srgs == pytest.approx(both.random_by_substrate["black"].srgs)


def test_the_default_scores_on_the_maps_substrate_only():
    assert PARAMS["score_substrates"].default == () and validate_params({})["score_substrates"] == ()
    result = explain(ASSETS / "chelsea.jpg", "a cat", model=ToyConv(), methods=["gradcam"], substrate="blur", **SMALL)
    assert result.substrates == ("blur",)


def test_evaluate_rows_on_two_substrates_equal_two_single_substrate_runs_and_no_map_is_made_twice(tmp_path):
    manifest, toy = write_manifest(tmp_path / "data"), ToyConv()
    evaluate(manifest, tmp_path / "both", model=toy, methods="gradcam,region", score_substrates="black,blur", **SMALL)
    both_images = toy.images
    singles = {}
    for substrate in ("black", "blur"):
        toy.images = 0
        evaluate(
            manifest, tmp_path / substrate, model=toy, methods="gradcam,region", score_substrates=substrate, **SMALL
        )
        singles[substrate], rows = toy.images, by_key(rows_of(tmp_path / substrate))
        for key, row in rows.items():
            other = by_key(rows_of(tmp_path / "both"))[key]
            assert {k: v for k, v in row.items() if "seconds" not in k and k != "params_hash"} == {
                k: v for k, v in other.items() if "seconds" not in k and k != "params_hash"
            }, key
    # The maps (and the photo's own scores) are made once for both substrates: the two-substrate run
    # costs two single runs less one set of maps.
    maps = (
        sum(int(row["forward_passes"]) for row in rows_of(tmp_path / "black") if row["method"] != RANDOM)
        + len(PHOTOS)
        + 1
    )  # + prepare(): each photo once, and the contrast prompts' probabilities once
    assert both_images == singles["black"] + singles["blur"] - maps


def test_adding_a_scoring_substrate_computes_only_its_rows(tmp_path):
    manifest, toy = write_manifest(tmp_path / "data", PHOTOS[:1]), ToyConv()
    evaluate(manifest, tmp_path / "out", model=toy, methods="gradcam", score_substrates="black", **SMALL)
    before = by_key(rows_of(tmp_path / "out"))
    summary = evaluate(manifest, tmp_path / "out", model=toy, methods="gradcam", score_substrates="black,road", **SMALL)
    after = by_key(rows_of(tmp_path / "out"))
    assert set(after) - set(before) == {k[:4] + ("road",) for k in before}
    assert list(summary.substrates) == ["black", "road"]


def test_done_means_summary_json_has_every_substrate_with_the_clipped_and_unclipped_figures(tmp_path):
    """The issue's done-means command on a toy: substrates.black and substrates.blur, each with
    methods.<m>.srg_mean, srg_unclipped_mean, insertion_peak_mean and groups.correct."1"."""
    manifest = write_manifest(tmp_path / "data")
    evaluate(manifest, tmp_path / "out", model=ToyConv(), methods="gradcam,ig", class_column="label", **SMALL)
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    for substrate in ("black", "blur"):
        block = data["substrates"][substrate]
        for method in ("gradcam", "ig"):
            assert {"srg_mean", "srg_unclipped_mean", "insertion_peak_mean"} <= set(block["methods"][method])
        assert "1" in block["groups"]["correct"] and "0" in block["groups"]["correct"]
        assert set(block) >= {"methods", "random", "pairs", "vs_random", "groups", "ill_conditioned"}


# --- the rows format, old folders, ill-conditioned photos -------------------------------------------
OLD_HEADER = (
    "image,prompt,contrast,method,insertion_auc,deletion_auc,srg,beats_random,score,seconds,forward_passes,"
    "backward_passes,curve_seconds,curve_forward_passes,error,params_hash\n"
)


@pytest.mark.parametrize("what", ["rows", "params"])
def test_a_folder_of_the_old_rows_format_is_refused_with_how_to_rerun(tmp_path, capsys, what):
    manifest, out = write_manifest(tmp_path / "data", PHOTOS[:1]), tmp_path / "old"
    out.mkdir()
    if what == "rows":
        (out / "rows.csv").write_text(OLD_HEADER + "chelsea.jpg,a cat,,gradcam,0.5,0.2,0.3,1,-1,0.1,1,1,0.1,10,,abc\n")
    else:
        (out / "params.json").write_text(json.dumps({"model": "toy-conv", "params": {}, "params_hash": "abc"}))
    before = sorted(p.read_bytes() for p in out.iterdir())
    with pytest.raises(UserError, match="older format") as caught:
        evaluate(manifest, out, model=ToyConv(), methods="gradcam", **SMALL)
    message = str(caught.value)
    assert "another --out folder" in message and "\n" not in message
    assert sorted(p.read_bytes() for p in out.iterdir() if p.name != ".lock") == before  # untouched
    code = evaluate_main([str(manifest), "--out", str(out), "--no-progress", "--methods", "gradcam"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith("error: ") and "older format" in error and "\n" not in error


class StrictToy(ToyConv):
    """ToyConv whose score must beat the substrate by more than any photo can."""

    def score_meaning(self, target):
        return ScoreMeaning("log-probability", "a toy log-probability", float("inf"))


def test_a_photo_that_does_not_beat_its_substrate_is_listed_apart(tmp_path):
    manifest = write_manifest(tmp_path / "data")
    summary = evaluate(manifest, tmp_path / "out", model=StrictToy(), methods="gradcam", **SMALL)
    rows = rows_of(tmp_path / "out")
    assert all(float(r["min_span"]) == math.inf and r["full_score"] and r["substrate_score"] for r in rows)
    for substrate in ("black", "blur"):
        block = summary.substrates[substrate]
        assert block["n"] == 0 and block["n_ill_conditioned"] == 3
    assert "Ill-conditioned on black" in (tmp_path / "out" / "summary.md").read_text()


# --- the sanity check over a data set -----------------------------------------------------------------
def sanity_rows(spearmans: dict[str, list[float | None]]) -> tuple[dict, list[Item]]:
    """Sanity rows for gradcam on items 0..n-1: per stage its correlations (None: a blank map),
    and the two reference rows (centre 0.2, edges 0.4 on every photo)."""
    n = len(next(iter(spearmans.values())))
    items = [Item(f"{i}.jpg", f"{i}.jpg", "a cat") for i in range(n)]
    rows = {}
    for index, (stage, values) in enumerate(spearmans.items()):
        for item, value in zip(items, values):
            rows[(*item.key, "gradcam", "stage", stage)] = {
                "image": item.image,
                "prompt": item.prompt,
                "kind": "stage",
                "stage": stage,
                "stage_index": index,
                "spearman": math.nan if value is None else value,
                "ssim": math.nan if value is None else value / 2,
                "blank": int(value is None),
                "error": "",
            }
    for item in items:
        for name, value in (("centre", 0.2), ("edges", 0.4)):
            rows[(*item.key, "gradcam", "reference", name)] = {
                "image": item.image,
                "prompt": item.prompt,
                "kind": "reference",
                "stage": name,
                "stage_index": None,
                "spearman": value,
                "ssim": None,
                "blank": 0,
                "error": "",
            }
    return rows, items


def test_sanity_summary_counts_blank_maps_apart_and_gives_reference_rows():
    rows, items = sanity_rows({"fc": [0.8, 0.6, 0.7, 0.5], "all": [None, 0.1, None, None]})
    out = stats.sanity_summary(rows, items, ["gradcam"], seed=0, resamples=1000)["gradcam"]
    first, last = out["stages"]
    assert first["stage"] == "fc" and first["n"] == 4 and first["blank_share"] == 0.0
    assert first["spearman_mean"] == pytest.approx(0.65) and first["spearman_ci"][0] <= 0.65 <= first["spearman_ci"][1]
    assert first["ssim_mean"] == pytest.approx(0.325)
    # Three blank maps of four: 75 % blank, and the mean is the one map that is not (never a 0 for a blank).
    assert last["n_blank"] == 3 and last["blank_share"] == 0.75 and last["spearman_mean"] == pytest.approx(0.1)
    assert out["references"]["centre"]["spearman_mean"] == pytest.approx(0.2)
    assert out["references"]["edges"]["spearman_mean"] == pytest.approx(0.4) and out["n_images"] == 4


class RandomizableToy(ToyConv):
    """ToyConv with a two-stage cascade (head, then conv) for the sanity check."""

    def randomization_stages(self):
        return [("head", ["head"]), ("conv", ["conv"])]

    def randomizable_copy(self):
        clone = copy.copy(self)
        clone.conv, clone.head = copy.deepcopy(self.conv), copy.deepcopy(self.head)
        network = torch.nn.ModuleDict({"conv": clone.conv, "head": clone.head})
        return clone, network


def test_evaluate_sanity_writes_stage_and_reference_rows_and_their_summary(tmp_path):
    manifest = write_manifest(tmp_path / "data", PHOTOS[:2])
    summary = evaluate(manifest, tmp_path / "out", model=RandomizableToy(), methods="gradcam,ig", sanity=True, **SMALL)
    rows = rows_of(tmp_path / "out")
    sanity = read_rows(tmp_path / "out" / "sanity.csv")[1]
    assert len(rows) == 2 * 3 * 2  # the curves' rows are as without the check
    assert sorted((r["kind"], r["stage"]) for r in sanity if r["image"] == "chelsea.jpg" and r["method"] == "ig") == [
        ("reference", "centre"),
        ("reference", "edges"),
        ("stage", "conv"),
        ("stage", "head"),
    ]
    for method in ("gradcam", "ig"):
        entry = summary.sanity[method]
        assert [s["stage"] for s in entry["stages"]] == ["head", "conv"] and entry["n_images"] == 2
        assert all(0.0 <= s["blank_share"] <= 1.0 for s in entry["stages"])
        assert set(entry["references"]) == {"centre", "edges"}
    # This toy's Grad-CAM map is blank (its ReLU zeroes it): blank on every stage, never a passing 0.
    blank = [r for r in sanity if r["method"] == "gradcam"]
    assert all(r["blank"] == "1" and r["spearman"] == "nan" for r in blank)
    assert summary.sanity["gradcam"]["stages"][0]["spearman_mean"] is None
    assert summary.sanity["gradcam"]["references"]["centre"]["n_blank"] == 2
    ig = summary.sanity["ig"]["references"]["edges"]
    assert ig["n_blank"] == 0 and -1.0 <= ig["spearman_mean"] <= 1.0
    assert "## Sanity check" in (tmp_path / "out" / "summary.md").read_text()
    # A rerun computes nothing more; adding the check to a finished folder runs the sanity part alone.
    again = evaluate(manifest, tmp_path / "out", model=RandomizableToy(), methods="gradcam,ig", sanity=True, **SMALL)
    assert again.run["images_computed"] == 0
    later = tmp_path / "later"
    evaluate(manifest, later, model=RandomizableToy(), methods="ig", **SMALL)
    before = rows_of(later)
    added = evaluate(manifest, later, model=RandomizableToy(), methods="ig", sanity=True, **SMALL)
    assert added.run["images_computed"] == 2 and rows_of(later) == before
    assert [s["stage"] for s in added.sanity["ig"]["stages"]] == ["head", "conv"]
