"""The architecture the README promises, checked: the registry drives the API and the CLI, the
layers import one way, a call's counts are its own even with two threads on one model, and any
torch classifier can be explained through ``ClassifierAdapter`` (a small random torchvision model)."""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ASSETS, ROOT
from toys import FunctionAdapter, OneConv

from explainers import explain
from explainers.api import PARAMS, PROTOCOL_PARAMS
from explainers.methods import METHODS, run_method
from explainers.models import ClassifierAdapter
from explainers.types import Target

ENGINE = ROOT / "explainers"


def imports(path: Path) -> set[str]:
    """Every module a file imports, as written (relative imports resolved to explainers.*)."""
    names = set()
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def test_layers_import_one_way():
    for path in ENGINE.rglob("*.py"):
        found = imports(path)
        assert not any(n.split(".")[0] == "gradio" for n in found), f"{path.name} imports gradio"
        if path.parent.name == "methods" and path.name not in ("__init__.py", "base.py"):
            own = f"explainers.methods.{path.stem}"
            others = {
                n for n in found if n.startswith("explainers.methods.") and not n.startswith("explainers.methods.base")
            } - {own}
            assert not others, f"method {path.name} imports another method: {others}"
            assert not any(n.startswith("explainers.metrics") for n in found), f"{path.name} imports metrics"
        if path.name == "metrics.py":
            assert not any(n.startswith("explainers.methods") for n in found), "metrics imports a method"
        if path.parent.name == "models":
            assert not any(n.startswith(("explainers.methods", "explainers.metrics")) for n in found), path.name
    app = imports(ROOT / "app.py")
    assert not any(n.split(".")[0] == "torch" for n in app), "app.py imports torch"
    assert not any(n.split(".")[0] in ("threading", "concurrent") for n in app), "app.py runs threads of its own"
    render = imports(ENGINE / "render.py")
    assert not any(n.startswith(("explainers.methods", "explainers.report")) for n in render), (
        "render.py reads the method registry: what a picture needs travels with the map"
    )


def method_switches(path: Path) -> list[str]:
    """Where a file switches on a registered method's name: compares with it (``name == "region"``,
    ``"region" in result.methods``) or picks it out of the methods (``result.methods["region"]``,
    ``METHODS["ig"]``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            names = [o.value for o in operands if isinstance(o, ast.Constant) and o.value in METHODS]
        elif isinstance(node, ast.Subscript) and (
            (isinstance(node.value, ast.Attribute) and node.value.attr == "methods")
            or (isinstance(node.value, ast.Name) and node.value.id == "METHODS")
        ):
            names = [node.slice.value] if isinstance(node.slice, ast.Constant) and node.slice.value in METHODS else []
        else:
            continue
        found += [f"{path.name}:{node.lineno} {name!r}" for name in names]
    return found


def test_no_method_is_named_outside_its_file_and_its_registry_entry():
    """The page, the pictures and the words switch on no method name: the registry entry says how
    a map is drawn and described."""
    for path in (ROOT / "app.py", ENGINE / "render.py", ENGINE / "report.py", ENGINE / "app_runtime.py"):
        assert not method_switches(path), method_switches(path)


def test_every_parameter_comes_from_one_declaration():
    declared = [p.name for p in PROTOCOL_PARAMS] + [p.name for m in METHODS.values() for p in m.params]
    assert len(declared) == len(set(declared)) == len(PARAMS)
    from explainers.__main__ import build_parser

    flags = {option for action in build_parser()._actions for option in action.option_strings}
    assert {p.cli_flag for p in PARAMS.values()} <= flags
    for method in METHODS.values():
        assert method.title and method.paper and method.note and method.progress_share > 0


class SlowToy(FunctionAdapter):
    """A toy whose forward pass sleeps, so that two threads really interleave inside the model."""

    def prompt_scores(self, pixels, prompts):
        time.sleep(0.002)
        return super().prompt_scores(pixels, prompts)


def run_in_threads(jobs):
    results, barrier = [None] * len(jobs), threading.Barrier(len(jobs))

    def worker(i, job):
        barrier.wait()
        results[i] = job()

    threads = [threading.Thread(target=worker, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_threads_on_one_model_count_their_own_passes():
    weights = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    shared = SlowToy(lambda x: torch.tanh((x * weights).sum(dim=(1, 2, 3)) / 100), input_size=(32, 32), max_batch=4)
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    params = {"ig": {"steps": 8, "max_steps": 8}, "region": {"n_regions": 9, "regions": "grid", "search": "lazy"}}
    alone = {name: run_method(name, shared, pixels, Target("x"), **kw) for name, kw in params.items()}
    together = run_in_threads(
        [
            lambda n=n, kw=kw: run_method(n, shared, pixels, Target("x"), **kw)
            for n, kw in params.items()
            for _ in range(2)
        ]
    )
    for result in together:
        reference = alone[result.method]
        assert (result.forward_passes, result.backward_passes) == (reference.forward_passes, reference.backward_passes)
        np.testing.assert_array_equal(result.values, reference.values)


class SlowOneConv(OneConv):
    def prompt_scores(self, pixels, prompts):
        time.sleep(0.01)  # between the hooked layer's forward and the backward pass
        return super().prompt_scores(pixels, prompts)


def test_gradcam_in_two_threads_on_one_model_keeps_each_threads_activations():
    shared = SlowOneConv()
    photos = [torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    alone = [run_method("gradcam", shared, p, Target("x")).values for p in photos]
    for _ in range(5):
        together = run_in_threads([lambda p=p: run_method("gradcam", shared, p, Target("x")) for p in photos])
        for result, expected in zip(together, alone):
            np.testing.assert_allclose(result.values, expected, rtol=1e-6)
            assert result.forward_passes == 1 and result.backward_passes == 1


CLASSES = ["tabby cat", "golden retriever", "school bus", "oak tree", "sailboat"]


@pytest.fixture(scope="module")
def small_classifier():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return ClassifierAdapter(resnet18(num_classes=len(CLASSES)), CLASSES, input_size=(64, 64), name="resnet18-random")


def test_classifier_adapter_finds_the_last_feature_map_and_matches_prompts(small_classifier):
    assert small_classifier.cam_layer_name == "layer4"
    assert small_classifier.matched_classes("a kitten")[0][0] == "tabby cat"
    assert small_classifier.matched_classes("a yacht")[0][0] == "sailboat"
    pixels = torch.rand(3, 3, 64, 64)
    logits = small_classifier.logits(pixels)
    indices, weights = small_classifier.class_weights("a kitten")
    expected = torch.logsumexp(torch.log_softmax(logits, 1)[:, indices] + weights.log(), dim=1)
    torch.testing.assert_close(small_classifier.score(pixels, Target("a kitten")), expected)


def test_explain_accepts_a_ready_adapter(small_classifier):
    result = explain(
        ASSETS / "chelsea.jpg",
        "a cat",
        model=small_classifier,
        methods=["gradcam", "region"],
        curve_steps=4,
        n_regions=9,
        region_kind="grid",
        n_random=2,
    )
    assert result.model == "resnet18-random" and result.image.shape == (64, 64, 3)
    assert result.methods["gradcam"].saliency.values.shape == (64, 64)
    assert result.methods["gradcam"].saliency.forward_passes == 1
    assert np.isfinite(result.methods["region"].srg) and result.random.orderings == 2


def test_classifier_adapter_takes_a_named_or_given_layer(small_classifier):
    from torchvision.models import resnet18

    network = resnet18(num_classes=len(CLASSES))
    by_module = ClassifierAdapter(network, CLASSES, cam_layer=network.layer3, input_size=(64, 64))
    assert by_module.cam_layer_name == "layer3"
    result = run_method("gradcam", by_module, torch.rand(1, 3, 64, 64), Target("a bus"))
    assert result.meta["grid"] == [1, 256, 4, 4]  # layer3 of a ResNet-18 at 64 px: 256 x 4 x 4
