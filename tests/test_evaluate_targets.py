"""The data-set evaluation with model kinds that resolve their target: a manifest's ``box`` or
``answer`` column gives each row's target, which is part of the row's key; rows say what was
explained and its probability. Tiny random detector and VLM folders, offline."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from explainers.errors import UserError
from explainers.evaluate import evaluate
from explainers.evaluate.manifest import read_manifest
from explainers.evaluate.rows import KEY, latest, read_rows, row_key
from explainers.models.clip import ALLOW_LOCAL_ENV
from explainers.testing import save_tiny_owlv2, save_tiny_qwen2_vl

FAST = {"methods": "gradcam,rise", "rise_masks": 8, "curve_steps": 3, "n_random": 1, "progress": False}


@pytest.fixture(autouse=True)
def local_models(monkeypatch):
    monkeypatch.setenv(ALLOW_LOCAL_ENV, "1")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from conftest import ASSETS

    folder = tmp_path_factory.mktemp("photos")
    shutil.copy(ASSETS / "chelsea.jpg", folder / "cat.jpg")  # 451 x 300
    return folder


def write(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows(rows)
    return path


def rows_of(folder):
    return read_rows(folder / "rows.csv")[1]


def test_target_columns_are_part_of_the_key(photos):
    manifest = write(
        photos / "boxes.csv",
        [
            ["image", "prompt", "box"],
            ["cat.jpg", "a cat", ""],
            ["cat.jpg", "a cat", "1,2,3,4"],
            ["cat.jpg", "a cat", ""],
        ],
    )
    listing = read_manifest(manifest, option_columns=("box", "box_threshold"))
    assert [item.target for item in listing.items] == ["", "box=1,2,3,4"]  # the third repeats the first
    assert listing.items[1].options == {"box": "1,2,3,4"} and listing.items[1].extras == {"box": "1,2,3,4"}
    assert "repeats line 2" in listing.notes[0]
    plain = read_manifest(manifest)  # a prompt model: box is only a carried column, as before
    assert plain.items[0].options == {} and len(plain.items) == 1


def test_a_row_key_holds_the_manifest_rows_target(tmp_path):
    path = write(tmp_path / "rows.csv", [[*KEY, "params_hash"], ["a.jpg", "x", "", "box=1,2,3,4", "ig", "black", "h"]])
    (row,) = read_rows(path)[1]
    assert row_key(row) == ("a.jpg", "x", "", "box=1,2,3,4", "ig", "black")
    assert list(latest([row], "h")) == [row_key(row)] and list(latest([row], "other")) == []


@pytest.mark.parametrize("what", ["rows", "params"])
def test_a_folder_of_rows_format_2_without_a_target_column_is_refused(photos, tmp_path, what):
    manifest = write(photos / "one.csv", [["image", "prompt"], ["cat.jpg", "a cat"]])
    out = tmp_path / "old"
    out.mkdir()
    if what == "rows":  # format 2: a substrate per row, no target in the key
        header = ["image", "prompt", "contrast", "method", "substrate", "srg", "params_hash"]
        write(out / "rows.csv", [header, ["cat.jpg", "a cat", "", "gradcam", "black", "0.3", "abc"]])
    else:
        (out / "params.json").write_text(json.dumps({"model": "bundled", "params": {}, "rows_format": 2}))
    with pytest.raises(UserError, match=r"older format \(no target column in the rows' key\)") as caught:
        evaluate(manifest, out, model="bundled", **FAST)  # refused before the model loads
    assert "another --out folder" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.slow
def test_a_detector_over_a_manifest_of_boxes(photos, tmp_path):
    model = f"detector:{save_tiny_owlv2(tmp_path / 'owl')}"
    manifest = write(
        photos / "detect.csv",
        [
            ["image", "prompt", "box", "split"],
            ["cat.jpg", "a cat", "", "a"],  # the detector's best box
            ["cat.jpg", "a cat", "10,20,200,150", "b"],
            ["cat.jpg", "a cat", "10,20,900,150", "c"],  # outside the photo: an error row, the run goes on
        ],
    )
    summary = evaluate(manifest, tmp_path / "run", model=model, box_threshold=0.05, **FAST)
    assert summary.n_images == 3 and summary.n_failed == 1
    assert "is not inside the photo, which is 451 x 300 pixels" in summary.errors[0]["error"]
    rows = rows_of(tmp_path / "run")
    targets = {row["target"] for row in rows}
    assert targets == {"", "box=10,20,200,150", "box=10,20,900,150"}
    given = [row for row in rows if row["target"] == "box=10,20,200,150" and row["method"] == "rise"][0]
    explained = json.loads(given["explained"])
    assert explained["box"] == [10.0, 20.0, 200.0, 150.0] and explained["box_source"] == "given"
    assert 0.0 <= float(given["probability"]) <= 1.0 and given["split"] == "b"
    own = json.loads([row for row in rows if row["target"] == "" and row["method"] == "rise"][0]["explained"])
    assert own["box_source"] == "model" and own["label_probability"] >= 0.05
    assert summary.params["box_threshold"] == 0.05
    again = evaluate(manifest, tmp_path / "run", model=model, box_threshold=0.05, **FAST)
    assert again.run["images_computed"] == 0 and again.run["images_skipped"] == 3
    with pytest.raises(UserError, match=r"box_threshold 0\.05 there, 0\.5 here"):
        evaluate(manifest, tmp_path / "run", model=model, box_threshold=0.5, **FAST)


def test_a_vlm_over_a_manifest_of_answers(photos, tmp_path):
    model = f"vlm:{save_tiny_qwen2_vl(tmp_path / 'qwen')}"
    manifest = write(
        photos / "answers.csv",
        [
            ["image", "prompt", "answer", "answer_token"],
            ["cat.jpg", "what is it?", "", ""],
            ["cat.jpg", "what is it?", "a cat", "1"],
        ],
    )
    summary = evaluate(manifest, tmp_path / "run", model=model, max_new_tokens=2, **FAST)
    assert summary.n_failed == 0 and summary.n_images == 2
    explained = {row["target"]: json.loads(row["explained"]) for row in rows_of(tmp_path / "run")}
    assert explained[""]["answer_source"] == "model" and len(explained[""]["token_ids"]) <= 2
    assert explained["answer=a cat; answer_token=1"]["answer"] == "a cat"
    assert explained["answer=a cat; answer_token=1"]["token_index"] == 1
    with pytest.raises(UserError, match="answer is a parameter of vlm"):
        evaluate(manifest, tmp_path / "other", model="bundled", answer="yes", **FAST)
