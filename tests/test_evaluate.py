"""Data-set evaluation (``explainers.evaluate``): rows and summary, resuming, error rows, the
statistics, local worker processes and Ray.

Most tests run in this process on ``ToyConv`` (a 32x32 conv net: every method runs in
milliseconds and its forward passes are counted), on small manifests made in tmp_path from the
assets photos. Worker processes, Ray actors and the killed command load a model by name: a
randomly initialised tiny CLIP saved once to a temporary folder.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ASSETS, ROOT, TINYCLIP
from scipy import stats as scipy_stats

from explainers import explain
from explainers.api import PARAMS
from explainers.errors import UserError
from explainers.evaluate import evaluate, read_rows, stats
from explainers.evaluate.__main__ import build_parser, main
from explainers.evaluate.manifest import Item
from explainers.evaluate.rows import FLOAT_COLUMNS, RANDOM
from explainers.images import open_image
from explainers.models.base import CamLayer, ModelAdapter
from explainers.types import ScoreMeaning

SMALL = {"curve_steps": 4, "ig_steps": 4, "n_regions": 8, "rise_masks": 16}  # every method in milliseconds
PHOTOS = [
    ("chelsea.jpg", "a cat", "", "3"),
    ("coffee.jpg", "a cup of espresso", "a cat|a dog", "5"),
    ("rocket.jpg", "a rocket", "", "1"),
]
FLOATS = FLOAT_COLUMNS  # AUCs, SRGs, peaks, scores, probabilities
SUBSTRATES = ("black", "blur")  # evaluate's default scoring substrates (the maps are made on black)


class ToyConv(ModelAdapter):
    """A random 3->6 conv, mean-pooled to 10 classes; a prompt names class crc32(prompt) % 10.
    Counts every image it scores (``images``), so a test sees exactly which work was done."""

    name = "toy-conv"
    input_size = (32, 32)
    classifies = True  # it has classes of its own: a manifest's class column can be checked

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.head = torch.nn.Linear(6, 10)
        with torch.no_grad():
            for p in (*self.conv.parameters(), *self.head.parameters()):
                p.copy_(torch.randn(p.shape, generator=generator))
        self.images = 0

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(pixels)).mean(dim=(2, 3)))

    def top_class(self, pixels: torch.Tensor) -> int:
        with torch.no_grad():
            return int(self.logits(pixels).argmax(dim=1)[0])

    def prompt_scores(self, pixels, prompts):
        self.images += pixels.shape[0]
        log_probs = torch.log_softmax(self.logits(pixels), dim=1)
        return torch.stack([log_probs[:, zlib.crc32(p.encode()) % 10] for p in prompts], dim=1)

    def cam_layer(self):
        return CamLayer(self.conv, "output", lambda a: a)

    def score_meaning(self, target):
        # A random network's classes: photos often score below the black image. Keeping every photo
        # (no margin) lets these tests see every row in the statistics; the ill-conditioned rule has
        # its own tests (on fake rows, and test_a_photo_that_does_not_beat_its_substrate_is_listed_apart).
        return ScoreMeaning("log-probability", "the toy's log-probability of a random class", float("-inf"))


def write_manifest(folder: Path, photos=PHOTOS, header=("image", "prompt", "contrast", "label")) -> Path:
    """A manifest in ``folder`` with copies of the assets photos next to it (paths relative to it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for image, *_ in photos:
        if (ASSETS / image).is_file() and not (folder / image).exists():
            shutil.copy(ASSETS / image, folder / image)
    path = folder / "manifest.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(photos)
    return path


def rows_of(out: Path) -> list[dict[str, str]]:
    return read_rows(out / "rows.csv")[1]


def by_key(rows):
    return {(r["image"], r["prompt"], r["contrast"], r["method"], r["substrate"]): r for r in rows}


def same_rows(a, b, tolerance=0.0):
    """Rows equal key by key: counts and errors exactly, AUCs and scores within ``tolerance``,
    seconds ignored (they are the only thing that may differ between runs)."""
    a, b = by_key(a), by_key(b)
    assert a.keys() == b.keys()
    for key in a:
        for column in a[key]:
            if "seconds" in column:
                continue
            if column in FLOATS and a[key][column]:
                # Relative too: unclipped figures are divided by the photo's span over the baseline, tiny on
                # a random model, so the runtime's ~1e-6 differences between thread counts grow there.
                expected = pytest.approx(float(b[key][column]), abs=tolerance, rel=100 * tolerance)
                assert float(a[key][column]) == expected, (key, column)
            else:
                assert a[key][column] == b[key][column], (key, column)


# --- rows and summary -------------------------------------------------------------------------
def test_rows_equal_the_one_photo_api_and_summary_has_the_schema(tmp_path):
    manifest = write_manifest(tmp_path / "data")
    toy = ToyConv()
    summary = evaluate(manifest, tmp_path / "out", model=toy, methods="gradcam,ig,region,rise", progress=False, **SMALL)
    rows = rows_of(tmp_path / "out")
    assert len(rows) == 3 * 5 * 2 and len(by_key(rows)) == 30  # image x (4 methods + random) x 2 substrates
    assert rows[0].keys() >= {
        "image",
        "prompt",
        "method",
        "substrate",
        "insertion_auc",
        "deletion_auc",
        "srg",
        "srg_unclipped",
        "insertion_auc_unclipped",
        "deletion_auc_unclipped",
        "insertion_peak",
        "overshoot_area",
        "deletion_floor",
        "insertion_auc_probability",
        "deletion_auc_probability",
        "score",
        "probability",
        "full_score",
        "substrate_score",
        "min_span",
        "seconds",
        "forward_passes",
        "error",
        "label",
    }
    for image, prompt, contrast, label in PHOTOS:  # each row is what explain() says about that photo
        result = explain(
            tmp_path / "data" / image,
            prompt,
            contrast=contrast.split("|") if contrast else None,
            model=toy,
            methods=["gradcam", "ig", "region", "rise"],
            score_substrates=SUBSTRATES,
            **SMALL,
        )
        for method in ("gradcam", "ig", "region", "rise", RANDOM):
            for substrate in SUBSTRATES:
                row = by_key(rows)[(image, prompt, contrast, method, substrate)]
                reference = result.random_by_substrate[substrate]
                expected = reference.curves if method == RANDOM else result.methods[method].by_substrate[substrate]
                assert float(row["insertion_auc"]) == expected.insertion.auc
                assert float(row["deletion_auc"]) == expected.deletion.auc
                assert float(row["srg"]) == expected.srg
                assert float(row["srg_unclipped"]) == expected.srg_unclipped
                assert float(row["insertion_peak"]) == expected.insertion.peak
                assert float(row["full_score"]) == expected.insertion.full_score
                assert float(row["substrate_score"]) == expected.insertion.substrate_score
                assert float(row["score"]) == result.score and row["label"] == label and row["error"] == ""
                if method != RANDOM:
                    assert int(row["forward_passes"]) == result.methods[method].saliency.forward_passes
                    assert row["beats_random"] == str(int(result.more_faithful_than_random(method, substrate)))
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert data["n"] == summary.n == 3 and list(data["substrates"]) == list(SUBSTRATES)
    assert data["params"]["score_substrates"] == list(SUBSTRATES)
    for substrate in SUBSTRATES:
        for method in ("gradcam", "ig", "region", "rise"):
            entry = data["substrates"][substrate]["methods"][method]
            assert entry.keys() >= {
                "srg_mean",
                "srg_ci",
                "srg_unclipped_mean",
                "insertion_peak_mean",
                "insertion_mean",
                "deletion_mean",
                "beats_random",
                "seconds_mean",
                "forward_passes_mean",
            }
            srgs = [float(by_key(rows)[(i, p, c, method, substrate)]["srg"]) for i, p, c, _ in PHOTOS]
            raw = [float(by_key(rows)[(i, p, c, method, substrate)]["srg_unclipped"]) for i, p, c, _ in PHOTOS]
            assert entry["srg_mean"] == pytest.approx(np.mean(srgs), abs=1e-12)
            assert entry["srg_unclipped_mean"] == pytest.approx(np.mean(raw), abs=1e-12)
            assert entry["srg_ci"][0] <= entry["srg_mean"] <= entry["srg_ci"][1]
    # The top level is the first scoring substrate's block.
    assert data["methods"] == data["substrates"]["black"]["methods"] != data["substrates"]["blur"]["methods"]
    assert data["random"].keys() >= {"srg_mean", "srg_ci", "insertion_mean", "deletion_mean"}
    assert set(data["pairs"]) == {
        "gradcam vs ig",
        "gradcam vs region",
        "gradcam vs rise",
        "ig vs region",
        "ig vs rise",
        "region vs rise",
    }
    assert data["pairs"]["gradcam vs ig"].keys() >= {"srg_diff_mean", "ci", "p_wilcoxon"}
    assert set(data["params"]) >= set(PARAMS) | {"model", "methods", "seed", "bootstrap_resamples"}
    assert data["params"]["curve_steps"] == 4 and data["params"]["model"] == "toy-conv"
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "| Grad-CAM |" in markdown and "## Scored on black" in markdown and "## Scored on blur" in markdown
    assert (tmp_path / "out" / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_default_curve_steps_are_the_clis(tmp_path):
    summary = evaluate(
        write_manifest(tmp_path / "data", PHOTOS[:1]),
        tmp_path / "out",
        model=ToyConv(),
        methods="gradcam",
        progress=False,
    )
    assert summary.params["curve_steps"] == 50
    assert summary.params["score_substrates"] == ("black", "blur")  # the maps' substrate and one other
    skip = ("curve_steps", "score_substrates")
    assert all(v == PARAMS[k].default for k, v in summary.params.items() if k in PARAMS and k not in skip)


# --- resuming -------------------------------------------------------------------------------------
def test_a_rerun_computes_only_missing_rows_and_loads_no_model(tmp_path, monkeypatch):
    manifest, out, toy = write_manifest(tmp_path / "data"), tmp_path / "out", ToyConv()
    evaluate(manifest, out, model=toy, methods="gradcam,region", limit=2, progress=False, **SMALL)
    first_two = toy.images
    assert len(rows_of(out)) == 2 * 3 * 2
    toy.images = 0
    evaluate(manifest, out, model=toy, methods="gradcam,region", progress=False, **SMALL)  # the third image only
    third = toy.images
    assert 0 < third < first_two and len(rows_of(out)) == 3 * 3 * 2 and len(by_key(rows_of(out))) == 18
    # Everything done: no forward pass, and with a model name the model is not even loaded.
    import explainers.evaluate.worker as worker

    monkeypatch.setattr(worker, "resolve_model", lambda *a, **k: pytest.fail("a finished run loaded a model"))
    toy.images = 0
    again = evaluate(manifest, out, model=toy, methods="gradcam,region", progress=False, **SMALL)
    assert toy.images == 0 and again.run["images_computed"] == 0 and again.run["images_skipped"] == 3
    named = evaluate(manifest, out, model="toy-conv", methods="gradcam,region", progress=False, **SMALL)
    assert named.to_dict()["methods"] == again.to_dict()["methods"] and len(rows_of(out)) == 18


def test_summary_only_computes_nothing_and_counts_what_is_left(tmp_path):
    manifest, out, toy = write_manifest(tmp_path / "data"), tmp_path / "out", ToyConv()
    evaluate(manifest, out, model=toy, methods="gradcam", limit=1, progress=False, **SMALL)
    toy.images = 0
    summary = evaluate(manifest, out, model=toy, methods="gradcam", compute=False, progress=False, **SMALL)
    assert toy.images == 0 and len(rows_of(out)) == 2 * 2
    assert summary.n == 1 and summary.n_missing == 2 and summary.run["images_left"] == 2
    assert "2 not yet computed" in (out / "summary.md").read_text()


def test_a_partial_last_line_is_cut_and_its_image_computed_again(tmp_path):
    manifest, out, toy = write_manifest(tmp_path / "data"), tmp_path / "out", ToyConv()
    whole = evaluate(manifest, out, model=toy, methods="gradcam,ig", progress=False, **SMALL)
    complete = (out / "rows.csv").read_bytes()
    before = rows_of(out)
    (out / "rows.csv").write_bytes(complete[: len(complete) - 25])  # a hard kill in the middle of the last row
    toy.images = 0
    resumed = evaluate(manifest, out, model=toy, methods="gradcam,ig", progress=False, **SMALL)
    assert any("partial line" in note for note in resumed.notes)
    assert resumed.run["images_computed"] == 1 and toy.images > 0
    assert len(rows_of(out)) == len(before)
    same_rows(rows_of(out), before)  # the cut row came back, exactly (same seed, same model)
    assert resumed.to_dict()["methods"] == whole.to_dict()["methods"]


def test_adding_a_method_computes_only_that_method(tmp_path):
    manifest, out, toy = write_manifest(tmp_path / "data"), tmp_path / "out", ToyConv()
    evaluate(manifest, out, model=toy, methods="gradcam", progress=False, **SMALL)
    before = by_key(rows_of(out))
    toy.images = 0
    summary = evaluate(manifest, out, model=toy, methods="gradcam,region", progress=False, **SMALL)
    after = by_key(rows_of(out))
    assert {k for k in after if k not in before} == {
        (i, p, c, "region", s) for i, p, c, _ in PHOTOS for s in SUBSTRATES
    }
    assert all(after[k] == before[k] for k in before)  # nothing recomputed or duplicated
    region_passes = sum(int(after[(i, p, c, "region", "black")]["forward_passes"]) for i, p, c, _ in PHOTOS)
    # Per photo: prepare() scores it once (+1 for the contrast prompts' probabilities), region search
    # (its map made once), then on each of the 2 scoring substrates the curves: both end points once,
    # and every interior step of deletion and insertion for the region map and the 3 random orderings.
    curves = 2 * (2 + (1 + 3) * 2 * (SMALL["curve_steps"] - 1))
    assert toy.images == 3 + 1 + region_passes + 3 * curves
    assert set(summary.methods) == {"gradcam", "region"} and summary.n == 3


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    manifest, out = write_manifest(tmp_path / "data"), tmp_path / "out"
    evaluate(manifest, out, model=ToyConv(), methods="gradcam", limit=1, progress=False, **SMALL)
    with pytest.raises(UserError, match=r"other settings \(curve_steps 4 there, 6 here\)"):
        evaluate(manifest, out, model=ToyConv(), methods="gradcam", progress=False, **{**SMALL, "curve_steps": 6})
    assert len(rows_of(out)) == 2 * 2  # untouched


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path):
    from explainers.evaluate.rows import folder_lock

    manifest, out = write_manifest(tmp_path / "data", PHOTOS[:1]), tmp_path / "out"
    out.mkdir()
    with folder_lock(out), pytest.raises(UserError, match="another run is writing to"):
        evaluate(manifest, out, model=ToyConv(), methods="gradcam", progress=False, **SMALL)
    assert not (out / "rows.csv").exists()
    evaluate(manifest, out, model=ToyConv(), methods="gradcam", progress=False, **SMALL)  # free again
    assert len(rows_of(out)) == 2 * 2


# --- failures ---------------------------------------------------------------------------------
def test_failed_images_get_error_rows_and_the_run_goes_on(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notes.jpg").write_text("not a photo")
    photos = [
        PHOTOS[0],
        ("missing.jpg", "a cat", "", "0"),
        ("notes.jpg", "a cat", "", "0"),
        ("rocket.jpg", "   ", "", "0"),
        PHOTOS[2],
    ]
    manifest, out, toy = write_manifest(folder, photos), tmp_path / "out", ToyConv()
    summary = evaluate(manifest, out, model=toy, methods="gradcam,ig", progress=False, **SMALL)
    rows = by_key(rows_of(out))
    assert len(rows) == 5 * 3 * 2
    errors = {image: rows[(image, prompt, "", "gradcam", "black")]["error"] for image, prompt, *_ in photos[1:4]}
    assert "no image file" in errors["missing.jpg"] and "not an image" in errors["notes.jpg"]
    assert "prompt is empty" in errors["rocket.jpg"]
    for image, prompt, *_ in photos[1:4]:
        assert all(
            rows[(image, prompt, "", m, s)]["error"] == errors[image]
            for m in ("gradcam", "ig", RANDOM)
            for s in SUBSTRATES
        )
        assert "\n" not in errors[image] and "Traceback" not in errors[image]
    assert summary.n == 2 and summary.n_failed == 3 and len(summary.errors) == 3
    assert summary.methods["gradcam"]["n"] == 2
    # Error rows count as done; retry_errors computes them again and the newer rows win.
    toy.images = 0
    assert evaluate(manifest, out, model=toy, methods="gradcam,ig", progress=False, **SMALL).run["images_computed"] == 0
    retried = evaluate(manifest, out, model=toy, methods="gradcam,ig", retry_errors=True, progress=False, **SMALL)
    assert retried.run["images_computed"] == 3 and retried.n_failed == 3 and len(rows_of(out)) == (5 * 3 + 3 * 3) * 2


@pytest.mark.parametrize(
    "content, words",
    [
        (None, "there is no manifest file"),
        ("image,label\nchelsea.jpg,3\n", "no 'prompt' column"),
        ("image,prompt\n", "has no rows"),
        ("image,prompt,srg\nchelsea.jpg,a cat,1\n", "'srg' clash"),
    ],
)
def test_bad_manifests_are_one_sentence(tmp_path, content, words):
    path = tmp_path / "manifest.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=words):
        evaluate(path, tmp_path / "out", model=ToyConv(), progress=False)


@pytest.mark.parametrize(
    "arguments, words",
    [
        (["--steps", "0"], "--steps must be a whole number from 2 to 200"),
        (["--methods", "foo"], "unknown method 'foo'"),
        (["--workers", "0"], "--workers"),
        (["--device", "tpu"], "the device must be auto, cpu or cuda"),
        (["--class-column", "nope"], "class column 'nope' is not in the manifest"),
        (["--group-by", "colour"], "cannot group by 'colour'"),
        (["--model", "resnet50"], "unknown model 'resnet50'"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, arguments, words):
    manifest = write_manifest(tmp_path / "data", PHOTOS[:1])
    try:
        code = main([str(manifest), "--out", str(tmp_path / "out"), "--no-progress", *arguments])
    except SystemExit as exit_:  # argparse's own checks (--workers 0) exit from the parser
        code = exit_.code
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith("error: ") and words in error and "\n" not in error


def test_every_parameter_has_its_flag_and_the_default_is_the_clis():
    parser = build_parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    assert {p.cli_flag for p in PARAMS.values()} <= flags
    assert {
        "--out",
        "--model",
        "--methods",
        "--limit",
        "--seed",
        "--workers",
        "--ray",
        "--device",
        "--substrate",
        "--region-search",
        "--steps",
    } <= flags
    from explainers.__main__ import params_from_args

    assert params_from_args(parser.parse_args(["m.csv", "--out", "o"]))["curve_steps"] == 50
    assert all(flag in parser.format_help() for flag in flags)  # --help renders (argparse formats it)


# --- statistics ------------------------------------------------------------------------------
def fake_rows(srgs: dict[str, list[float]], beats: dict[str, list[int]] | None = None, substrate: str = "black"):
    """Rows for items 0..n-1 on one substrate with the given SRGs (insertion = SRG, deletion = 0;
    unclipped SRG = 2 SRG); the photo scores 0, the substrate -1 (a log-probability: well conditioned)."""
    n = len(next(iter(srgs.values())))
    items = [Item(f"{i}.jpg", f"{i}.jpg", "a cat") for i in range(n)]
    rows = {}
    for method, values in srgs.items():
        for i, (item, value) in enumerate(zip(items, values)):
            rows[item.key + (method, substrate)] = {
                "srg": value,
                "srg_unclipped": 2 * value,
                "insertion_auc": value,
                "deletion_auc": 0.0,
                "insertion_peak": 1.0 + value,
                "full_score": 0.0,
                "substrate_score": -1.0,
                "min_span": float(np.log(2)),
                "error": "",
                "beats_random": (beats or {}).get(method, [1] * n)[i],
                "seconds": 1.0,
                "forward_passes": 10,
                "backward_passes": 0,
                "curve_forward_passes": 8,
            }
    return rows, items


def test_summary_statistics_match_scipy():
    generator = np.random.default_rng(1)
    a, b, r = generator.normal(0.3, 0.1, 40), generator.normal(0.2, 0.1, 40), generator.normal(0.0, 0.02, 40)
    rows, items = fake_rows(
        {"gradcam": list(a), "region": list(b), RANDOM: list(r)},
        beats={"gradcam": [1] * 30 + [0] * 10, "region": [1] * 40},
    )
    out = stats.summarize(rows, items, ["gradcam", "region"], seed=0)
    assert out["n"] == 40 and out["methods"]["gradcam"]["beats_random"] == 0.75
    assert out["methods"]["gradcam"]["srg_mean"] == pytest.approx(a.mean(), abs=1e-12)
    assert out["methods"]["gradcam"]["srg_unclipped_mean"] == pytest.approx(2 * a.mean(), abs=1e-12)
    assert out["methods"]["gradcam"]["insertion_peak_mean"] == pytest.approx(1 + a.mean(), abs=1e-12)
    assert out["methods"]["gradcam"]["peak_above_photo"] == pytest.approx(np.mean(a > 0.02))
    reference = scipy_stats.bootstrap((a,), np.mean, method="percentile", n_resamples=10_000, random_state=5)
    # Two independent 10,000-resample estimates of the same 2.5 % and 97.5 % quantiles of the mean
    # (standard error 0.016) differ by about 0.0006; a 90 % interval would be 0.005 narrower.
    assert out["methods"]["gradcam"]["srg_ci"] == pytest.approx(
        [reference.confidence_interval.low, reference.confidence_interval.high], abs=0.002
    )
    pair = out["pairs"]["gradcam vs region"]
    assert pair["srg_diff_mean"] == pytest.approx((a - b).mean(), abs=1e-12)
    assert pair["p_wilcoxon"] == pytest.approx(scipy_stats.wilcoxon(a - b).pvalue, rel=1e-12)
    assert pair["first_higher"] == pytest.approx(np.mean(a > b))
    assert out["vs_random"]["region"]["srg_diff_mean"] == pytest.approx((b - r).mean(), abs=1e-12)
    assert out == stats.summarize(rows, items, ["gradcam", "region"], seed=0)  # seeded: the same every time
    assert (
        out["methods"]["gradcam"]["srg_ci"]
        != stats.summarize(rows, items, ["gradcam", "region"], seed=1)["methods"]["gradcam"]["srg_ci"]
    )


def test_summary_edge_cases():
    rows, items = fake_rows({"gradcam": [0.5, 0.5, 0.5], RANDOM: [0.5, 0.5, 0.5]})
    out = stats.summarize(rows, items, ["gradcam"], seed=0)
    assert out["methods"]["gradcam"]["srg_ci"] == [0.5, 0.5]  # no spread, no interval
    assert out["vs_random"]["gradcam"]["p_wilcoxon"] == 1.0  # every difference is 0
    one, items1 = fake_rows({"gradcam": [0.2], RANDOM: [0.0]})
    assert stats.summarize(one, items1, ["gradcam"], seed=0)["vs_random"]["gradcam"]["p_wilcoxon"] is None
    rows[items[1].key + ("gradcam", "black")] = {**rows[items[1].key + ("gradcam", "black")], "error": "broken"}
    out = stats.summarize(rows, items, ["gradcam"], seed=0)
    assert out["n"] == 2 and out["n_failed"] == 1 and out["random"]["n"] == 2  # paired: the same images


def test_ill_conditioned_images_are_left_out_of_every_mean_and_listed():
    """An image whose photo does not beat the fully removed image by the margin its score declares
    (min_span: ln 2 for a log-probability) has normalised curves that divide by noise: it is left out
    of every mean on that substrate (the same for every method, by the photo's own scores), and listed."""
    rows, items = fake_rows(
        {"gradcam": [0.5, 0.7, 0.9, 0.6], "region": [0.6, 0.8, 0.1, 0.7], RANDOM: [0.0, 0.1, 0.0, 0.05]}
    )
    for method in ("gradcam", "region", RANDOM):  # photo 2 scores -6.328, its black substrate -6.332
        rows[items[2].key + (method, "black")].update(full_score=-6.328, substrate_score=-6.332)
    out = stats.summarize(rows, items, ["gradcam", "region"], seed=0)
    assert out["n"] == 3 and out["random"]["n"] == 3
    assert out["methods"]["gradcam"]["srg_mean"] == pytest.approx(0.6)
    assert out["pairs"]["gradcam vs region"]["srg_diff_mean"] == pytest.approx(-0.1)
    assert out["n_ill_conditioned"] == 1 and out["ill_conditioned"][0]["image"] == "2.jpg"
    assert out["n_failed"] == 0
    # exactly at the margin the photo counts; a hair below it does not; a photo below its substrate never
    for full, counted in ((-6.332 + np.log(2), True), (-6.332 + np.log(2) - 1e-9, False), (-7.0, False)):
        rows[items[2].key + (RANDOM, "black")]["full_score"] = full
        assert stats.summarize(rows, items, ["gradcam"], seed=0)["n"] == (4 if counted else 3)


def test_each_substrate_is_summarised_apart_and_the_first_is_the_top_level():
    black, items = fake_rows({"gradcam": [0.5, 0.7, 0.6], RANDOM: [0.0, 0.1, 0.0]}, substrate="black")
    blur, _ = fake_rows({"gradcam": [0.1, 0.2, 0.3], RANDOM: [0.0, 0.0, 0.0]}, substrate="blur")
    blur[items[0].key + (RANDOM, "blur")]["substrate_score"] = -0.1  # ill-conditioned on blur only
    out = stats.summarize({**black, **blur}, items, ["gradcam"], seed=0, substrates=("blur", "black"))
    assert list(out["substrates"]) == ["blur", "black"] and out["methods"] == out["substrates"]["blur"]["methods"]
    assert out["substrates"]["blur"]["n"] == 2 and out["substrates"]["black"]["n"] == 3
    assert out["substrates"]["blur"]["methods"]["gradcam"]["srg_mean"] == pytest.approx(0.25)
    assert out["substrates"]["black"]["methods"]["gradcam"]["srg_mean"] == pytest.approx(0.6)
    assert out["substrates"]["blur"]["ill_conditioned"] == [{"image": "0.jpg", "prompt": "a cat"}]


def test_class_column_marks_correct_images_and_groups_them(tmp_path):
    toy = ToyConv()
    manifest = write_manifest(tmp_path / "data")
    summary = evaluate(
        manifest, tmp_path / "out", model=toy, methods="gradcam", class_column="label", progress=False, **SMALL
    )
    rows = by_key(rows_of(tmp_path / "out"))
    for image, prompt, contrast, label in PHOTOS:
        pixels = toy.load_image(open_image(tmp_path / "data" / image))
        top1 = int(toy.logits(pixels).argmax())
        for substrate in SUBSTRATES:
            row = rows[(image, prompt, contrast, "gradcam", substrate)]
            assert row["top1"] == str(top1) and row["correct"] == str(int(top1 == int(label)))
    # With a class column the correct ("1") and wrong ("0") photos are always apart, on every substrate,
    # without --group-by; a group no photo falls in is there with n 0.
    for substrate in SUBSTRATES:
        groups = summary.substrates[substrate]["groups"]["correct"]
        assert list(groups) == ["1", "0"] and sum(block["n_images"] for block in groups.values()) == 3
    assert summary.groups == summary.substrates["black"]["groups"]
    correct = {rows[(i, p, c, "gradcam", "black")]["correct"] for i, p, c, _ in PHOTOS}
    for value in ("1", "0"):
        assert (summary.groups["correct"][value]["n_images"] > 0) == (value in correct)
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert markdown.index("Correctly classified photos (the headline)") < markdown.index("Misclassified photos")


# --- other processes: worker processes, Ray, a killed command --------------------------------------
@pytest.fixture(scope="module")
def tiny_clip_folder(tmp_path_factory):
    """A randomly initialised CLIP (TinyCLIP's tokenizer; 2 layers of width 64, 64x64 input) saved to
    a folder, so that other processes load it by name; a photo takes well under a second."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("tinyclip")
    config = CLIPConfig.from_pretrained(TINYCLIP)
    for tower in (config.text_config, config.vision_config):
        for key, value in {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
        }.items():
            setattr(tower, key, value)
    config.vision_config.image_size, config.vision_config.patch_size, config.projection_dim = 64, 16, 32
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(TINYCLIP).save_pretrained(folder)
    before = os.environ.get("SALIENCY_LAB_ALLOW_LOCAL_MODELS")
    os.environ["SALIENCY_LAB_ALLOW_LOCAL_MODELS"] = "1"  # inherited by worker processes and a local Ray
    yield folder
    if before is None:
        os.environ.pop("SALIENCY_LAB_ALLOW_LOCAL_MODELS", None)
    else:
        os.environ["SALIENCY_LAB_ALLOW_LOCAL_MODELS"] = before


@pytest.fixture(scope="module")
def one_worker_rows(tiny_clip_folder, tmp_path_factory):
    """The rows of the 3 photos with --workers 1 (in this process), the reference for the others."""
    base = tmp_path_factory.mktemp("one")
    manifest = write_manifest(base / "data")
    evaluate(
        manifest,
        base / "out",
        model=f"clip:{tiny_clip_folder}",
        methods="gradcam,region",
        workers=1,
        threads=1,
        progress=False,
        **SMALL,
    )
    return manifest, rows_of(base / "out")


# CLIP encodes the prompts not yet cached together, padded to one length; which image comes first to a
# worker decides which prompts share a batch, and that moves the text features in their 7th digit.
CLIP_TOLERANCE = 1e-5


def test_two_worker_processes_give_the_rows_of_one(one_worker_rows, tiny_clip_folder, tmp_path):
    manifest, reference = one_worker_rows
    summary = evaluate(
        manifest,
        tmp_path / "out",
        model=f"clip:{tiny_clip_folder}",
        methods="gradcam,region",
        workers=2,
        progress=False,
        **SMALL,
    )
    same_rows(rows_of(tmp_path / "out"), reference, CLIP_TOLERANCE)
    assert summary.run["threads_per_worker"] == max(1, torch.get_num_threads() // 2)
    assert len({w["pid"] for w in summary.run["worker_details"]}) in (1, 2)
    assert os.getpid() not in {w["pid"] for w in summary.run["worker_details"]}


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -r requirements-dev.txt)")
    import logging

    try:
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=80 * 1024 * 1024,
            logging_level=logging.WARNING,
        )
    except Exception as error:  # noqa: BLE001 - any reason Ray cannot start here is a skip, said plainly
        pytest.skip(f"Ray could not start on this machine: {error}")
    yield ray
    ray.shutdown()


def test_ray_with_two_actors_gives_the_rows_of_one_worker(one_worker_rows, tiny_clip_folder, local_ray, tmp_path):
    manifest, reference = one_worker_rows
    out = tmp_path / "out"
    summary = evaluate(
        manifest,
        out,
        model=f"clip:{tiny_clip_folder}",
        methods="gradcam,region",
        ray=True,
        workers=2,
        progress=False,
        **SMALL,
    )
    same_rows(rows_of(out), reference, CLIP_TOLERANCE)
    assert summary.run["ray"]["actors"] == 2 and summary.run["ray"]["gpus_per_actor"] == 0
    actors = summary.run["worker_details"]
    assert len({a["pid"] for a in actors}) == 2 and all(a["device"] == "cpu" and a["threads"] == 1 for a in actors)
    # Resumable as any run: nothing left to do, no actor started.
    again = evaluate(
        manifest,
        out,
        model=f"clip:{tiny_clip_folder}",
        methods="gradcam,region",
        ray=True,
        workers=2,
        progress=False,
        **SMALL,
    )
    assert again.run["images_computed"] == 0 and again.run["ray"] is None and len(rows_of(out)) == 9 * 2


def test_a_killed_command_leaves_valid_rows_and_the_rerun_completes(tiny_clip_folder, tmp_path):
    photos = [
        (image, prompt, contrast, label)
        for image, _, contrast, label in PHOTOS
        for prompt in ("a cat", "a dog", "a rocket")
    ]  # 9 images: the kill lands in the middle
    manifest, out = write_manifest(tmp_path / "data", photos), tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "explainers.evaluate",
        str(manifest),
        "--out",
        str(out),
        "--model",
        f"clip:{tiny_clip_folder}",
        "--methods",
        "gradcam,region",
        "--steps",
        "4",
        "--regions",
        "8",
        "--no-progress",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None and len(rows_of(out)) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    text = (out / "rows.csv").read_text()
    whole = text[: text.rfind("\n") + 1]  # at most the last line can be cut (a kill inside a write)
    lines = list(csv.reader(whole.splitlines()))
    assert len(lines) >= 4 and all(len(line) == len(lines[0]) for line in lines)
    done = {k[:3] for k in by_key(dict(zip(lines[0], line)) for line in lines[1:])}
    assert 1 <= len(done) < 9, "the kill should land between the first and the last image"
    resumed = evaluate(
        manifest,
        out,
        model=f"clip:{tiny_clip_folder}",
        methods="gradcam,region",
        progress=False,
        **{k: SMALL[k] for k in ("curve_steps", "n_regions")},
    )
    assert resumed.run["images_computed"] <= 9 - len(done) + 1 and resumed.n + len(resumed.ill_conditioned) == 9
    assert len(rows_of(out)) == 27 * 2 and len(by_key(rows_of(out))) == 27 * 2  # 2 scoring substrates
