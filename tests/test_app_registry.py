"""The app's page is built from the registry: every method has its checkbox, map and notes, every
parameter (the protocol's and each method's) its widget and /explain parameter. And the proof of
"a method is its file plus one registry line": in a scratch copy of the code without RISE's line,
RISE is gone from the engine, the page and the API; with it, it is there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from explainers.api import PARAMS
from explainers.methods import METHODS

pytestmark = pytest.mark.slow  # the fast tier (-m 'not slow') leaves this module out

# Prints, as JSON on its last line, what the page built from the registry holds.
PROBE = """
import json, os
os.environ["SALIENCY_EXAMPLES_CACHE"] = "off"
import app
from explainers import list_methods
from explainers.api import PARAMS
config = app.demo.get_config_file()
components = {c["props"].get("elem_id"): c for c in config["components"] if c["props"].get("elem_id")}
endpoint = app.demo.get_api_info()["named_endpoints"]["/explain"]
print(json.dumps({
    "methods": list_methods(),
    "params": list(PARAMS),
    "elem_ids": sorted(components),
    "checkboxes": [value for _, value in components["methods"]["props"]["choices"]],
    "api": [p["parameter_name"] for p in endpoint["parameters"]],
    "returns": [r["label"] for r in endpoint["returns"]],
    "how_to_read": components["how-to-read"]["props"]["value"],
}))
"""


def probe(tree: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def page():
    os.environ.setdefault("SALIENCY_EXAMPLES_CACHE", "off")
    import app

    config = app.demo.get_config_file()
    components = {c["props"].get("elem_id"): c for c in config["components"] if c["props"].get("elem_id")}
    return app, components


def test_every_method_has_its_checkbox_map_and_caption(page):
    app, components = page
    choices = components["methods"]["props"]["choices"]
    assert [value for _, value in choices] == list(METHODS)
    assert [title for title, _ in choices] == [m.title for m in METHODS.values()]
    assert components["methods"]["props"]["value"] == [n for n, m in METHODS.items() if m.by_default]
    for name in METHODS:
        assert components[f"overlay-{name}"]["type"] == "image"
        assert components[f"caption-{name}"]["type"] == "markdown"
    for method in METHODS.values():
        assert method.note in components["how-to-read"]["props"]["value"]


def test_every_parameter_has_its_widget_with_range_default_and_label(page):
    app, components = page
    for name, spec in PARAMS.items():
        widget = components[f"param-{name}"]
        props = widget["props"]
        default = list(spec.default) if spec.many else spec.default
        assert props["label"] == (spec.label or spec.help) and props["value"] == default, name
        if spec.many:  # a list of choices: a checkbox per choice, none ticked by default
            assert widget["type"] == "checkboxgroup"
            assert [value for _, value in props["choices"]] == list(spec.choices)
        elif spec.choices:
            assert widget["type"] == "radio"
            assert [value for _, value in props["choices"]] == list(spec.choices)
            assert [label for label, _ in props["choices"]] == [spec.labels.get(c, c) for c in spec.choices]
        elif spec.kind is int and spec.high - spec.low > app.SLIDER_MAX_SPAN:
            assert widget["type"] == "number" and (props["minimum"], props["maximum"]) == (spec.low, spec.high)
        else:
            assert widget["type"] == "slider", name
            assert (props["minimum"], props["maximum"]) == (spec.low, spec.high)
            assert props["step"] == (1 if spec.kind is int else spec.step or (spec.high - spec.low) / 100)


def test_explain_takes_every_parameter_with_its_default(page):
    app, _ = page
    endpoint = app.demo.get_api_info()["named_endpoints"]["/explain"]
    parameters = {p["parameter_name"]: p for p in endpoint["parameters"]}
    for name, spec in PARAMS.items():
        default = list(spec.default) if spec.many else spec.default  # a list travels as JSON's list
        assert parameters[name]["parameter_has_default"] and parameters[name]["parameter_default"] == default


def test_a_float_parameter_gets_a_slider_with_its_step():
    import app
    from explainers.params import Param

    widget = app.param_widget(Param("keep", 0.5, "share of cells kept", kind=float, low=0.1, high=0.9, step=0.05))
    assert isinstance(widget, app.gr.Slider) and (widget.minimum, widget.maximum, widget.step) == (0.1, 0.9, 0.05)
    assert widget.value == 0.5


def test_rise_is_on_the_page_by_its_registry_line_alone(tmp_path):
    scratch = tmp_path / "tree"
    scratch.mkdir()
    shutil.copy(ROOT / "app.py", scratch / "app.py")
    shutil.copytree(ROOT / "explainers", scratch / "explainers", ignore=shutil.ignore_patterns("__pycache__"))
    (scratch / "assets").symlink_to(ROOT / "assets")
    registry = scratch / "explainers" / "methods" / "__init__.py"
    lines = registry.read_text().splitlines(keepends=True)
    rise_line = [line for line in lines if line.strip() == '"rise",']
    assert len(rise_line) == 1, "the registry has no single RISE line to take out"
    registry.write_text("".join(line for line in lines if line not in rise_line))

    with_rise, without = probe(ROOT), probe(scratch)
    assert "rise" in with_rise["methods"] and "rise" not in without["methods"]
    for page_, present in ((with_rise, True), (without, False)):
        assert ("rise" in page_["checkboxes"]) is present
        assert ("overlay-rise" in page_["elem_ids"]) is present
        assert (
            {"param-rise_masks", "param-rise_cells"} <= set(page_["elem_ids"])
            if present
            else not {"param-rise_masks", "param-rise_cells"} & set(page_["elem_ids"])
        )
        assert ("rise_masks" in page_["api"]) is present and ("rise_masks" in page_["params"]) is present
        assert ("RISE" in page_["returns"]) is present
        assert (METHODS["rise"].note in page_["how_to_read"]) is present
    # Everything else is untouched.
    assert [m for m in with_rise["methods"] if m != "rise"] == without["methods"]
    assert [p for p in with_rise["api"] if not p.startswith("rise_")] == without["api"]


def test_the_device_comes_from_the_environment():
    env = {**os.environ, "SALIENCY_DEVICE": "cpu", "SALIENCY_EXAMPLES_CACHE": "off", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", "import app; print(app.DEVICE)"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and done.stdout.split()[-1] == "cpu", done.stderr[-2000:]


def test_a_device_the_machine_lacks_is_one_plain_sentence(page, monkeypatch):
    import asyncio

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: asking for it is no error")
    app, _ = page
    monkeypatch.setattr(app, "DEVICE", "cuda")
    run = app.make_handlers(app.result_components())["run_explain"]
    values = [app.input_defaults().get(name) for name in app.input_names()]
    values[:2] = [str(ROOT / "assets" / "chelsea.jpg"), "a cat"]

    async def drain():
        async for _ in run(*values, lambda *_, **__: None):
            pass

    with pytest.raises(app.gr.Error) as caught:
        asyncio.run(drain())
    assert "no CUDA GPU" in str(caught.value) and "Traceback" not in str(caught.value)
