"""Forward-only passes on the compiled CPU runtime (explainers/models/runtime.py: OpenVINO, f32):
the same scores as torch's (<= 1e-4 on the log-probabilities) on the assets photos and on the
masked images the curves score, for the bundled model and random CLIPs; Grad-CAM's hooked gradients, hooked
networks, randomised copies and the runtime switched off stay in torch; changed weights are
compiled again; a network the tracer cannot capture falls back to torch."""

from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import pytest
import torch
from conftest import ASSETS, vit_b32_clip_adapter
from torch import nn

from explainers.images import open_image
from explainers.methods import run_method
from explainers.metrics import pixel_order, pixel_ranks, step_count
from explainers.models import runtime
from explainers.models.classifier import ClassifierAdapter
from explainers.sanity import randomize
from explainers.substrates import make_substrate
from explainers.types import Target

PARITY = 1e-4  # the bound on the log-probabilities (and on CLIP's logits)
PHOTOS = {
    "chelsea": "a cat",
    "coffee": "a cup of espresso",
    "rocket": "a rocket",
    "grace_hopper": "a military uniform",
    "astronaut": "a helmet",
}


def torch_scores(adapter, pixels, target, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setenv(runtime.RUNTIME_ENV, "torch")
        calls = adapter._runtime.calls
        out = adapter.score_many(pixels, target)
        assert adapter._runtime.calls == calls  # really torch
    return out


def curve_images(pixels: torch.Tensor, substrate: str, steps: int = 10) -> torch.Tensor:
    """Deletion and insertion images of a map at several steps, as the curves build them."""
    height, width = pixels.shape[-2:]
    saliency = np.random.default_rng(0).random((height, width))
    ranks = pixel_ranks(pixel_order(saliency), height, width)
    shown = torch.cat([(ranks < step_count(k, steps, height * width)).float() for k in (1, 3, 5, 8)])
    return make_substrate(pixels, substrate).fill(torch.cat([1 - shown, shown]))


def compiled_and_torch(adapter, pixels, target, monkeypatch):
    calls = adapter._runtime.calls
    compiled = adapter.score_many(pixels, target)
    assert adapter._runtime.calls > calls, "the compiled runtime was not used"
    return compiled, torch_scores(adapter, pixels, target, monkeypatch)


@pytest.mark.parametrize("photo", [p if p == "chelsea" else pytest.param(p, marks=pytest.mark.slow) for p in PHOTOS])
def test_bundled_scores_equal_torch_on_the_photos_and_curve_images(bundled, photo, monkeypatch):
    pixels = bundled.load_image(open_image(ASSETS / f"{photo}.jpg"))
    images = torch.cat([pixels, curve_images(pixels, "black"), curve_images(pixels, "blur")])
    for target in (Target(PHOTOS[photo]), Target(PHOTOS[photo], ("a dog",))):
        compiled, reference = compiled_and_torch(bundled, images, target, monkeypatch)
        assert float((compiled - reference).abs().max()) <= PARITY, photo
    with torch.no_grad():  # the logits themselves, and the top class the data-set runs check
        logits, logits_torch = bundled.logits(pixels), bundled._torch_logits(pixels)
    assert float((logits - logits_torch).abs().max()) <= runtime_tolerance(bundled)
    assert int(logits.argmax()) == int(logits_torch.argmax())


def runtime_tolerance(adapter) -> float:
    return adapter._runtime.tolerance


@pytest.mark.slow
def test_bundled_scores_equal_torch_on_road_curve_images(bundled, monkeypatch):
    pixels = bundled.load_image(open_image(ASSETS / "chelsea.jpg"))
    compiled, reference = compiled_and_torch(bundled, curve_images(pixels, "road"), Target("a cat"), monkeypatch)
    assert float((compiled - reference).abs().max()) <= PARITY


def test_tiny_random_clip_scores_equal_torch(tiny_clip, monkeypatch):
    pixels = tiny_clip.load_image(open_image(ASSETS / "chelsea.jpg"))
    images = torch.cat([pixels, curve_images(pixels, "black")])
    for target in (Target("a cat"), Target("a cat", ("a dog", "a car"))):
        compiled, reference = compiled_and_torch(tiny_clip, images, target, monkeypatch)
        assert float((compiled - reference).abs().max()) <= PARITY


@pytest.mark.slow
def test_vit_b32_random_clip_scores_equal_torch(monkeypatch):
    adapter = vit_b32_clip_adapter()
    for photo in ("chelsea", "coffee"):
        pixels = adapter.load_image(open_image(ASSETS / f"{photo}.jpg"))
        images = torch.cat([pixels, curve_images(pixels, "black")[::2]])
        for target in (Target(PHOTOS[photo]), Target(PHOTOS[photo], ("a dog",))):
            compiled, reference = compiled_and_torch(adapter, images, target, monkeypatch)
            assert float((compiled - reference).abs().max()) <= PARITY, photo


def test_grad_cams_gradients_stay_in_torch(bundled):
    """Grad-CAM hooks an inner layer, which a compiled graph would not run (input gradients alone
    are compiled: tests/test_runtime_gradients.py)."""
    pixels = bundled.load_image(open_image(ASSETS / "chelsea.jpg"))
    calls, gradients = bundled._runtime.calls, bundled._runtime.vjp_calls
    saliency = run_method("gradcam", bundled, pixels, Target("a cat"))
    assert (bundled._runtime.calls, bundled._runtime.vjp_calls) == (calls, gradients)
    assert float(saliency.values.max()) > 0


def test_the_runtime_switched_off_is_torch_exactly(bundled, monkeypatch):
    pixels = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    monkeypatch.setenv(runtime.RUNTIME_ENV, "torch")
    assert runtime.runtime_name() == "torch"
    calls = bundled._runtime.calls
    with torch.no_grad():
        assert torch.equal(bundled.logits(pixels), bundled._torch_logits(pixels))
    assert bundled._runtime.calls == calls
    monkeypatch.setenv(runtime.RUNTIME_ENV, "tensorrt")
    with pytest.raises(ValueError, match="SALIENCY_LAB_RUNTIME"):
        runtime.runtime_name()


class SmallNet(nn.Module):
    """A small classifier: conv -> ReLU -> pooled linear, 10 classes."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class NumpyNet(SmallNet):
    """Computes part of its forward in numpy: the tracer freezes that part to a constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squashed = torch.from_numpy(np.tanh(x.detach().numpy()))
        return super().forward(squashed)


@pytest.fixture(scope="module")
def embedder(bundled):
    return bundled.embedder


def small_adapter(network: nn.Module, embedder) -> ClassifierAdapter:
    names = ["cat", "dog", "car", "cup", "tree", "boat", "bird", "fish", "house", "rocket"]
    return ClassifierAdapter(network, names, input_size=(32, 32), embedder=embedder, name="small", max_batch=4)


def test_a_user_classifier_is_converted_and_matches_torch(embedder, monkeypatch):
    adapter = small_adapter(SmallNet(), embedder)
    pixels = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    compiled, reference = compiled_and_torch(adapter, pixels, Target("a cat"), monkeypatch)
    assert float((compiled - reference).abs().max()) <= PARITY
    assert adapter._runtime.compiles == 1


def test_calls_are_queued_in_requests_of_any_size_and_callers_get_the_runtimes_batch(embedder, monkeypatch):
    """Requests of 1 image, of 4, or of more images than the call has (an uneven last request
    included) give torch's scores; callers that score many get CALL_IMAGES per call while the
    runtime serves them and the adapter's own max_batch when it is switched off or has failed."""
    adapter = small_adapter(SmallNet(), embedder)
    pixels = torch.rand(7, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    for request in (1, 4, 16):
        adapter._runtime.request_images = request
        compiled, reference = compiled_and_torch(adapter, pixels, Target("a cat"), monkeypatch)
        assert float((compiled - reference).abs().max()) <= PARITY
    assert adapter.forward_batch() == runtime.CALL_IMAGES > adapter.max_batch == 4
    monkeypatch.setenv(runtime.RUNTIME_ENV, "torch")
    assert adapter.forward_batch() == 4
    monkeypatch.setenv(runtime.RUNTIME_ENV, "openvino")
    adapter._runtime._failed = True
    assert adapter.forward_batch() == 4


def test_one_image_requests_run_a_static_graph_and_longer_ones_the_dynamic(embedder, monkeypatch):
    """STATIC_SINGLE_IMAGE: one image per request compiles the graph at a static batch of 1 (it
    measured faster); requests of several keep the dynamic batch. Both give torch's scores."""
    adapter = small_adapter(SmallNet(), embedder)
    pixels = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    batches = {}
    for request in (1, 4):
        adapter._runtime.request_images = request
        compiled, reference = compiled_and_torch(adapter, pixels, Target("a cat"), monkeypatch)
        assert float((compiled - reference).abs().max()) <= PARITY
        (graph,) = [g for key, g in adapter._runtime._compiled.items() if key[3] == (request == 1)]
        batches[request] = graph.input(0).get_partial_shape()[0]
    assert batches[1].is_static and batches[1].get_length() == 1
    assert batches[4].is_dynamic


def test_warm_up_compiles_what_the_first_explain_would(embedder):
    adapter = small_adapter(SmallNet(), embedder)
    adapter.warm_up()
    compiled = (adapter._runtime.compiles, adapter._runtime.vjp_compiles)
    assert compiled == (1, 1)
    photo = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for method in ("gradcam", "ig"):
        run_method(method, adapter, photo, Target("a dog"), steps=4, max_steps=4)
    adapter.score_many(photo.repeat(3, 1, 1, 1), Target("a dog"))
    assert (adapter._runtime.compiles, adapter._runtime.vjp_compiles) == compiled  # nothing new
    assert adapter._runtime.vjp_calls >= 2  # IG did use the warmed gradient graph


def test_a_network_the_tracer_cannot_capture_falls_back_to_torch(embedder):
    adapter = small_adapter(NumpyNet(), embedder)
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with pytest.warns(RuntimeWarning, match="stay in torch"):
        scores = adapter.score_many(pixels, Target("a cat"))
    with torch.no_grad():
        expected = adapter.score(pixels, Target("a cat"))
    assert torch.equal(scores, expected)
    assert adapter._runtime.calls == 0 and adapter._runtime._failed


def test_weights_changed_in_place_are_compiled_again(embedder, monkeypatch):
    adapter = small_adapter(SmallNet(), embedder)
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    before = adapter.score_many(pixels, Target("a dog"))
    with torch.no_grad():
        adapter.network.fc.weight.mul_(-2.0)
    compiled, reference = compiled_and_torch(adapter, pixels, Target("a dog"), monkeypatch)
    assert adapter._runtime.compiles == 2
    assert float((compiled - reference).abs().max()) <= PARITY
    assert float((compiled - before).abs().max()) > 0.01  # the new weights, not the old graph


def test_a_hooked_network_runs_in_torch(embedder):
    adapter = small_adapter(SmallNet(), embedder)
    pixels = torch.rand(2, 3, 32, 32)
    seen = []
    handle = adapter.network.features.register_forward_hook(lambda _m, _a, out: seen.append(out.shape))
    try:
        adapter.score_many(pixels, Target("a cat"))
    finally:
        handle.remove()
    assert seen and adapter._runtime.calls == 0
    adapter.score_many(pixels, Target("a cat"))
    assert adapter._runtime.calls == 1


def test_a_randomised_copy_never_uses_the_compiled_trained_network(bundled, monkeypatch):
    pixels = bundled.load_image(open_image(ASSETS / "chelsea.jpg"))
    bundled.score_many(pixels, Target("a cat"))  # the trained network is compiled
    clone, network = bundled.randomizable_copy()
    assert clone._runtime is None
    randomize(network, ["fc"], seed=0)
    with torch.no_grad():
        randomised = clone.score_many(pixels, Target("a cat"))
        expected = clone.score(pixels, Target("a cat"))
        trained = bundled.score_many(pixels, Target("a cat"))
    assert torch.equal(randomised, expected)
    assert float((randomised - trained).abs().max()) > 0.1


def test_clip_randomised_copy_runs_in_torch(tiny_clip):
    clone, network = tiny_clip.randomizable_copy()
    assert clone._runtime is None and tiny_clip._runtime is not None


@pytest.mark.slow
def test_each_thread_count_gets_its_compiled_model(embedder):
    adapter = small_adapter(SmallNet(), embedder)
    pixels = torch.rand(2, 3, 32, 32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = adapter.score_many(pixels, Target("a cat"))
        torch.set_num_threads(2)
        two = adapter.score_many(pixels, Target("a cat"))
    finally:
        torch.set_num_threads(threads)
    assert adapter._runtime.compiles == 2
    assert float((one - two).abs().max()) <= PARITY


@pytest.mark.slow
def test_the_disk_cache_is_read_back_and_a_stale_entry_is_caught(embedder, tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path))
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    first = small_adapter(SmallNet(), embedder)
    expected = first.score_many(pixels, Target("a cat"))
    assert first._runtime.source == "traced"
    assert len(list((tmp_path / "openvino").glob("*.blob"))) == 1
    second = small_adapter(SmallNet(), embedder)  # the same weights: read from the cache
    # ...and exactly the graph as it was traced (a graph file would lose the mark that keeps the
    # preprocessing's division by std a division: runtime's docstring)
    assert torch.equal(second.score_many(pixels, Target("a cat")), expected)
    assert second._runtime.source == "cache"

    class Doubled(SmallNet):  # same weights, same class name, another function
        def forward(self, x):
            return 2 * super().forward(x)

    Doubled.__qualname__ = SmallNet.__qualname__
    stale = small_adapter(Doubled(), embedder)
    compiled, reference = compiled_and_torch(stale, pixels, Target("a cat"), monkeypatch)
    assert stale._runtime.source == "traced"  # the probe rejected the cached graph
    assert float((compiled - reference).abs().max()) <= PARITY


def test_the_class_names_embeddings_are_read_back_from_the_disk_cache(embedder, tmp_path, monkeypatch):
    """Embedded once per embedder and names (~1.2 s for ImageNet's in every new process before),
    exactly the tensor embedded; other names are embedded again."""
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path))
    first = small_adapter(SmallNet(), embedder)
    assert len(list((tmp_path / "embeddings").glob("*.pt"))) == 1
    encoded = []
    encode = embedder.encode
    monkeypatch.setattr(embedder, "encode", lambda texts, **kw: (encoded.append(texts), encode(texts, **kw))[1])
    second = small_adapter(SmallNet(), embedder)
    assert torch.equal(second.class_embeddings, first.class_embeddings) and not encoded
    other = ClassifierAdapter(SmallNet(), [*first.class_names[:-1], "kite"], input_size=(32, 32), embedder=embedder)
    assert encoded == [other.class_names]
    assert not torch.equal(other.class_embeddings[-1], first.class_embeddings[-1])
    assert len(list((tmp_path / "embeddings").glob("*.pt"))) == 2


def test_the_cache_keeps_the_most_recent_graphs_within_its_size(tmp_path):
    """Compiled models (.blob) and graph files of older versions (.xml with their .bin) alike."""
    for i, size in enumerate((300, 300, 300)):
        (tmp_path / f"{i}.xml").write_text("x")
        (tmp_path / f"{i}.bin").write_bytes(b"0" * size)
        stamp = 1_000_000 + i
        os.utime(tmp_path / f"{i}.xml", (stamp, stamp))
    runtime.prune_cache(tmp_path, max_bytes=700)
    assert sorted(p.name for p in tmp_path.glob("*.xml")) == ["1.xml", "2.xml"]
    assert not (tmp_path / "0.bin").exists()
    (tmp_path / "3.blob").write_bytes(b"0" * 301)  # the newest: 1.xml (and its .bin) go
    runtime.prune_cache(tmp_path, max_bytes=700)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2.bin", "2.xml", "3.blob"]
    (tmp_path / "4.pt").write_bytes(b"0" * 350)  # kept data (class embeddings) counts the same
    runtime.prune_cache(tmp_path, max_bytes=700)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3.blob", "4.pt"]


@pytest.mark.slow
def test_a_deep_copy_of_an_adapter_compiles_its_own_network(embedder, monkeypatch):
    adapter = small_adapter(SmallNet(), embedder)
    pixels = torch.rand(2, 3, 32, 32)
    adapter.score_many(pixels, Target("a cat"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twin = copy.deepcopy(adapter)
    with torch.no_grad():
        twin.network.fc.bias.add_(1.0)
    compiled, reference = compiled_and_torch(twin, pixels, Target("a cat"), monkeypatch)
    assert float((compiled - reference).abs().max()) <= PARITY
