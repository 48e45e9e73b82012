"""The CLI writes result.json (the schema of the engine issue), overlays and the curve plot."""

import json
import subprocess
import sys

import pytest
from conftest import ASSETS, ROOT

pytestmark = pytest.mark.slow  # subprocesses of the whole CLI; the fast tier (-m 'not slow') leaves them out


def test_cli_writes_result_json_and_pictures(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "explainers",
            str(ASSETS / "chelsea.jpg"),
            "--prompt",
            "a cat",
            "--contrast",
            "a dog",
            "--steps",
            "10",
            "--regions",
            "16",
            "--ig-steps",
            "8",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["model"] == "bundled" and result["prompt"] == "a cat" and result["contrast"] == ["a dog"]
    assert 0 < result["score"] <= 1  # with a contrast prompt the score is a probability
    assert set(result["methods"]) == {"gradcam", "ig", "region"}
    for entry in result["methods"].values():
        for key, kind in [
            ("insertion_auc", float),
            ("deletion_auc", float),
            ("seconds", float),
            ("forward_passes", int),
        ]:
            assert isinstance(entry[key], kind)
        assert len(entry["curves"]["deletion"]["scores"]) == 11
    assert set(result["random"]) >= {"insertion_auc", "deletion_auc"}
    assert result["params"]["curve_steps"] == 10 and result["params"]["seed"] == 0
    for name in ("gradcam.png", "ig.png", "region.png", "curves.png", "curves.csv"):
        assert (out / name).stat().st_size > 0


def test_help_lists_every_parameter_flag():
    """--help is generated from the parameter specs (a '%' in a help text once crashed it)."""
    from explainers.api import PARAMS

    run = subprocess.run(
        [sys.executable, "-m", "explainers", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    for spec in PARAMS.values():
        assert spec.cli_flag in run.stdout
