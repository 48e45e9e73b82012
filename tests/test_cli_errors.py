"""The CLI on bad input: exit code 2 and one line ``error: ...`` on stderr, never a traceback.

A few cases run as real ``python -m explainers`` subprocesses (started together: each costs a few
seconds of imports); every case also runs in-process through ``main(argv)``, which is fast. All of
them fail before any model loads.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PHOTO = str(ROOT / "assets" / "chelsea.jpg")

# name -> (arguments after ``python -m explainers``, words the error line must contain)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "steps zero": (["--steps", "0"], ["steps must be a whole number from 2 to 200", "not 0"]),
    "steps negative": (["--steps", "-5"], ["steps must be a whole number from 2 to 200"]),
    "steps huge": (["--steps", "100000000000000000000000"], ["steps must be a whole number from 2 to 200"]),
    "steps nan": (["--steps", "nan"], ["steps must be a whole number from 2 to 200", "nan"]),
    "steps inf": (["--steps", "inf"], ["steps must be a whole number"]),
    "steps fraction": (["--steps", "2.5"], ["steps must be a whole number"]),
    "steps text": (["--steps", "abc"], ["steps must be a whole number", "abc"]),
    "ig steps": (["--ig-steps", "1"], ["ig", "steps must be a whole number from 2 to 256"]),
    "regions": (["--regions", "1000"], ["regions must be a whole number from 4 to 196"]),
    "seed": (["--seed", "-1"], ["seed must be a whole number from 0"]),
    "substrate": (["--substrate", "grey"], ["substrate must be one of black, blur", "grey"]),
    "region kind": (["--region-kind", "hexagons"], ["must be one of slic, grid"]),
    "methods unknown": (["--methods", "foo"], ["unknown method 'foo'", "gradcam, ig, region"]),
    "methods empty": (["--methods", ","], ["at least one method"]),
    "model unknown": (["--model", "resnet50"], ["unknown model 'resnet50'"]),
    "model folder": (["--model", "clip:/etc"], ["disabled", "SALIENCY_LAB_ALLOW_LOCAL_MODELS"]),
    "empty prompt": (["--prompt", "   "], ["prompt is empty"]),
    "missing file": (["IMAGE:/no/such/photo.jpg"], ["no image file", "/no/such/photo.jpg"]),
    "not an image": (["IMAGE:" + str(ROOT / "requirements.txt")], ["not an image"]),
    "unknown flag": (["--colour", "red"], ["unrecognized arguments"]),
    "missing prompt": (["NOPROMPT"], ["--prompt"]),
}


def command(arguments: list[str], out: Path) -> list[str]:
    image, prompt, rest = PHOTO, ["--prompt", "a cat"], []
    for argument in arguments:
        if argument.startswith("IMAGE:"):
            image = argument[len("IMAGE:") :]
        elif argument == "NOPROMPT":
            prompt = []
        else:
            rest.append(argument)
    if "--prompt" in rest:
        prompt = []
    return [sys.executable, "-m", "explainers", image, *prompt, "--out", str(out), *rest]


SUBPROCESS_CASES = ["steps zero", "steps nan", "steps text", "methods unknown", "missing file", "empty prompt"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start the subprocess cases at once; wait for all."""
    out = tmp_path_factory.mktemp("cli")
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PATH": "/usr/bin:/bin",
        "HOME": str(out),
    }
    processes = {
        name: subprocess.Popen(
            command(arguments, out / f"run{i}"),
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i, (name, (arguments, _)) in enumerate(CASES.items())
        if name in SUBPROCESS_CASES
    }
    results = {}
    for name, process in processes.items():
        try:
            stdout, stderr = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        results[name] = (process.returncode, stdout, stderr)
    return results


def check(name: str, code: int, stdout: str, stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, (code, stderr[-2000:])
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for word in CASES[name][1]:
        assert word in lines[0], lines[0]
    assert stdout == ""


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
@pytest.mark.slow
def test_subprocess_exits_2_with_one_error_line(runs, name):
    check(name, *runs[name])


@pytest.mark.parametrize("name", list(CASES))
def test_main_returns_2_with_one_error_line(name, tmp_path, capsys, monkeypatch):
    from explainers.__main__ import main

    monkeypatch.delenv("SALIENCY_LAB_ALLOW_LOCAL_MODELS", raising=False)
    argv = command(CASES[name][0], tmp_path / "out")[3:]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    captured = capsys.readouterr()
    check(name, code, captured.out, captured.err)
