"""Input gradients on the compiled runtime (explainers/models/runtime.py, "Input gradients"): the
compiled graphs (the score and its input gradient together; the network's own vector-Jacobian
product) give torch's gradients (to 1e-4 of their size) for the bundled model on random pixels
and for strided, grouped and padded convolutions on odd sizes, and torch's integrated-gradients
map on a photo; hooks, weights that want gradients, CLIP and the runtime switched off stay in
torch's autograd; a backward that cannot be compiled falls back to torch with one warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import ASSETS
from torch import nn

from explainers.images import open_image
from explainers.methods import integrated_gradients
from explainers.models import runtime
from explainers.models.classifier import ABSENT_LOG_WEIGHT, ClassifierAdapter, prompt_score_head
from explainers.types import Target

RELATIVE = 1e-4


def gradient(adapter, pixels: torch.Tensor, target: Target) -> torch.Tensor:
    leaf = pixels.detach().clone().requires_grad_(True)
    (result,) = torch.autograd.grad(adapter.score(leaf, target).sum(), leaf)
    return result


def torch_gradient(adapter, pixels, target, monkeypatch) -> torch.Tensor:
    with monkeypatch.context() as patch:
        patch.setenv(runtime.RUNTIME_ENV, "torch")
        calls = adapter._runtime.vjp_calls
        out = gradient(adapter, pixels, target)
        assert adapter._runtime.vjp_calls == calls  # really torch
    return out


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max())
    assert scale > 0
    assert float((got - expected).abs().max()) <= RELATIVE * scale


class StridedNet(nn.Module):
    """Strided, grouped (depthwise) and padded convolutions with ReLU6, as EfficientNet-Lite's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU6(),
            nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8),
            nn.ReLU6(),
            nn.Conv2d(8, 16, 1),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class TransposedNet(StridedNet):
    """A transposed convolution in the forward: its input gradient is not compiled."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 3, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.up(x))


NAMES = ["cat", "dog", "car", "cup", "tree", "boat", "bird", "fish", "house", "rocket"]


def small(network: nn.Module, embedder, size: int = 33) -> ClassifierAdapter:
    return ClassifierAdapter(network, NAMES, input_size=(size, size), embedder=embedder, name="small", max_batch=4)


@pytest.fixture(scope="module")
def embedder(bundled):
    return bundled.embedder


def test_bundled_gradients_equal_torch(bundled, monkeypatch):
    pixels = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(11))
    for target in (Target("a cat"), Target("a cat", ("a dog",))):
        calls = bundled._runtime.vjp_calls
        compiled = gradient(bundled, pixels, target)
        assert bundled._runtime.vjp_calls > calls, "the compiled gradient was not used"
        assert_close(compiled, torch_gradient(bundled, pixels, target, monkeypatch))


def test_bundled_integrated_gradients_on_a_photo_equal_torchs(bundled, monkeypatch):
    """On a photo's path from black, a ReLU6 network's gradient is piecewise constant: torch's own
    moves by 4-19 % of its largest value when the pixels move by 1e-6 (bench/gradients.py), so the
    compiled one is compared where it matters, on the integrated map and its completeness."""
    photo = bundled.load_image(open_image(ASSETS / "chelsea.jpg"))
    settings = dict(steps=8, max_steps=8)
    for target in (Target("a cat"), Target("a cat", ("a dog",))):
        calls = bundled._runtime.vjp_calls
        compiled = integrated_gradients.explain(bundled, photo, target, **settings)
        assert bundled._runtime.vjp_calls > calls
        with monkeypatch.context() as patch:
            patch.setenv(runtime.RUNTIME_ENV, "torch")
            reference = integrated_gradients.explain(bundled, photo, target, **settings)
        # Not the largest pixel difference: one flipped unit moves a patch (torch's own map moves
        # by 3 % of its largest value under 1e-6 of pixel noise, and the compiled one by up to 7 %).
        got, expected = compiled.values, reference.values
        assert abs(got - expected).mean() <= 1e-2 * expected.mean()
        assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] >= 0.999
        top = expected.size // 10  # the pixels the curves take first
        shared = np.intersect1d(np.argsort(got.ravel())[-top:], np.argsort(expected.ravel())[-top:])
        assert len(shared) >= 0.99 * top
        assert compiled.meta["completeness_error"] == pytest.approx(reference.meta["completeness_error"], abs=2e-3)


def test_the_dense_prompt_head_is_the_adapters_score(bundled):
    """prompt_score_head (what the compiled graph scores) against the adapter's torch score."""
    logits = torch.randn(3, 1000, generator=torch.Generator().manual_seed(8)) * 4
    for target in (Target("a cat"), Target("a cat", ("a dog", "a car"))):
        rows = []
        for prompt in target.prompts:
            indices, weights = bundled.class_weights(prompt)
            rows.append(torch.full((1000,), ABSENT_LOG_WEIGHT).index_put((indices,), weights.log()))
        head = prompt_score_head(logits, torch.stack(rows))
        columns = torch.stack(
            [
                torch.logsumexp(torch.log_softmax(logits, 1)[:, i] + w.log(), 1)
                for i, w in map(bundled.class_weights, target.prompts)
            ],
            1,
        )
        assert torch.allclose(head, bundled._target_score(columns, target), rtol=0, atol=1e-6)


def test_the_networks_own_gradient_is_compiled_too(embedder, monkeypatch):
    """Gradients through the logits alone (no score head): the compiled vector-Jacobian product."""
    adapter = small(StridedNet(), embedder)
    pixels = torch.rand(3, 3, 33, 33, generator=torch.Generator().manual_seed(9))
    cotangent = torch.randn(3, 10, generator=torch.Generator().manual_seed(10))
    leaf = pixels.clone().requires_grad_(True)
    (compiled,) = torch.autograd.grad(adapter.logits(leaf), leaf, cotangent)
    assert adapter._runtime.vjp_calls == 1
    with monkeypatch.context() as patch:
        patch.setenv(runtime.RUNTIME_ENV, "torch")
        leaf = pixels.clone().requires_grad_(True)
        (reference,) = torch.autograd.grad(adapter.logits(leaf), leaf, cotangent)
    assert adapter._runtime.vjp_calls == 1
    assert_close(compiled, reference)


def test_strided_grouped_convolutions_on_odd_sizes(embedder, monkeypatch):
    adapter = small(StridedNet(), embedder)
    for count in (1, 3):  # 3: a last chunk padded to the compiled batch
        pixels = torch.rand(count, 3, 33, 33, generator=torch.Generator().manual_seed(count))
        compiled = gradient(adapter, pixels, Target("a dog"))
        assert_close(compiled, torch_gradient(adapter, pixels, Target("a dog"), monkeypatch))
    assert adapter._runtime.vjp_compiles == 1 and adapter._runtime.vjp_calls == 2


def test_integrated_gradients_map_equals_torch(embedder, monkeypatch):
    adapter = small(StridedNet(), embedder)
    pixels = torch.rand(1, 3, 33, 33, generator=torch.Generator().manual_seed(5))
    settings = dict(steps=4, max_steps=4)
    compiled = integrated_gradients.explain(adapter, pixels, Target("a cat"), **settings)
    assert adapter._runtime.vjp_calls >= 2
    with monkeypatch.context() as patch:
        patch.setenv(runtime.RUNTIME_ENV, "torch")
        reference = integrated_gradients.explain(adapter, pixels, Target("a cat"), **settings)
    assert abs(compiled.values - reference.values).max() <= RELATIVE * reference.values.max()
    assert compiled.meta["completeness_error"] == pytest.approx(reference.meta["completeness_error"], abs=1e-4)


def test_hooks_and_weights_that_want_gradients_stay_in_torch(embedder):
    adapter = small(StridedNet(), embedder)
    pixels = torch.rand(2, 3, 33, 33)
    handle = adapter.network.features.register_forward_hook(lambda *_: None)
    try:
        gradient(adapter, pixels, Target("a cat"))
    finally:
        handle.remove()
    adapter.network.fc.weight.requires_grad_(True)
    try:
        gradient(adapter, pixels, Target("a cat"))
    finally:
        adapter.network.fc.weight.requires_grad_(False)
    assert adapter._runtime.vjp_calls == 0
    gradient(adapter, pixels, Target("a cat"))
    assert adapter._runtime.vjp_calls == 1


def test_a_backward_that_cannot_be_compiled_falls_back_to_torch(embedder, monkeypatch):
    adapter = small(TransposedNet(), embedder, size=16)
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    with pytest.warns(RuntimeWarning, match="input gradients stay in torch"):
        first = gradient(adapter, pixels, Target("a cat"))
    assert adapter._runtime._vjp_failed and adapter._runtime.vjp_calls == 0
    assert adapter._runtime.compiles == 1 and not adapter._runtime._failed  # the forward itself still compiles
    assert_close(first, torch_gradient(adapter, pixels, Target("a cat"), monkeypatch))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning comes once
        gradient(adapter, pixels, Target("a cat"))


def test_clip_gradients_stay_in_torch(tiny_clip):
    pixels = torch.rand(1, 3, *tiny_clip.input_size, requires_grad=True)
    (result,) = torch.autograd.grad(tiny_clip.score(pixels, Target("a cat")).sum(), pixels)
    assert not tiny_clip._runtime.gradients and tiny_clip._runtime.vjp_calls == 0
    assert float(result.abs().sum()) > 0


@pytest.mark.slow
def test_the_compiled_gradient_is_read_back_from_the_disk_cache(embedder, tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path))
    pixels = torch.rand(2, 3, 33, 33, generator=torch.Generator().manual_seed(7))
    first = small(StridedNet(), embedder)
    expected = gradient(first, pixels, Target("a cat"))
    assert first._runtime.vjp_source == "traced"
    graphs = sorted(tmp_path.rglob("*.blob"))
    assert len(graphs) == 2  # the forward and the score with its gradient
    traced = []
    monkeypatch.setattr(runtime, "_trace_gradient_graph", lambda *args: traced.append(args))
    second = small(StridedNet(), embedder)
    # Bit for bit the gradient of the graph as traced: read back from a graph file, the
    # preprocessing's division by std became a multiplication (runtime's docstring).
    assert torch.equal(gradient(second, pixels, Target("a cat")), expected)
    assert second._runtime.vjp_source == "cache" and second._runtime.vjp_compiles == 1 and not traced
    assert sorted(tmp_path.rglob("*.blob")) == graphs


def test_relu6_backward_as_traced_is_torchs_mask_but_next_to_the_lower_kink():
    """The gradient graphs' ReLU6 backward (one fused pass in OpenVINO) passes the gradient exactly
    where torch's does (min < x < max), at and around both kinks, save the documented band
    0 < x - min <= 1.2e-7 (half of float32's spacing at the midpoint) where it drops it."""
    six = torch.tensor(6.0)
    below_six = torch.nextafter(six, torch.tensor(0.0))
    x = torch.cat(
        [
            torch.arange(-2000, 8001) / 1000,  # (linspace lands one point at 9.5e-8, in the band)
            torch.tensor([0.0, -0.0, 6.0, float(below_six), float(torch.nextafter(six, torch.tensor(9.0)))]),
            torch.tensor([1e-6, 3e-7, -1e-7, 6 - 1e-6, 3.0]),
        ]
    )
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    got = runtime._hardtanh_input_gradient(grad, x, 0.0, 6.0)
    expected = torch.ops.aten.hardtanh_backward(grad, x, 0.0, 6.0)
    assert torch.equal(got, expected)
    tiny = torch.tensor([1e-9, 5e-8, 1.1e-7])  # inside the band: dropped
    assert torch.equal(runtime._hardtanh_input_gradient(torch.ones(3), tiny, 0.0, 6.0), torch.zeros(3))
    assert torch.equal(torch.ops.aten.hardtanh_backward(torch.ones(3), tiny, 0.0, 6.0), torch.ones(3))
