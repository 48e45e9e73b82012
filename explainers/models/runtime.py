"""Forward-only passes on a compiled CPU runtime: OpenVINO in f32, torch as the fallback.

Every forward-only pass of a run (the curves, the random reference, region search, RISE, the
sanity check's curves) ends in an adapter's network forward without gradients. On the CPU that
forward runs here, on OpenVINO (https://docs.openvino.ai), when it can. So do the input
gradients integrated gradients asks for (see "Input gradients" below). Grad-CAM (its hooks on an
inner layer), every CUDA model and every network that cannot be converted stay in torch. Measured on the project's 2-core AVX-512 VM (bench/runtime.py), batch
8, in one process against torch eager (2 threads): EfficientNet-Lite0 as bundled (folded batch
norms, channels_last) ~3x faster, CLIP ViT-B/32's vision tower ~1.5x; ONNX Runtime f32 was slower
than OpenVINO on both. On an AVX2-only host (no AVX-512) the bundled network is still ~3x faster,
the ViT only ~1.1x (bench/RESULTS.md, "third session").

Choices, each measured:

- **f32 asked for explicitly** (``INFERENCE_PRECISION_HINT``): on a CPU with AVX-512 BF16,
  OpenVINO's default precision is bf16, which moved the bundled model's log-probabilities by up
  to 0.33 -- far more than the curves can bear. In f32 outputs agree with torch to ~1e-5.
- **One compiled model per network, input shape (C, H, W) and thread count**, the batch left
  dynamic (no recompiling for a curve's last, smaller batch; static batches measured no faster),
  converted lazily on the first forward-only call, then cached on the ``CompiledForward``.
- **Checked on every compile**: a probe batch goes through torch and the compiled model; if
  they differ by more than the adapter's tolerance, the network stays on torch (with a warning).
  The compiled model is kept on disk (``SALIENCY_LAB_CACHE``, default ~/.cache/saliency-lab),
  keyed by a hash of the weights, so a new process imports it in ~0.4 s instead of tracing again
  (1.5 s for the bundled model, ~7 s for CLIP ViT-B/32); the probe guards that cache too.
- **The cache keeps compiled models, not graph files** (``export_model`` / ``import_model``):
  PyTorch's frontend marks every ``aten::div`` so that OpenVINO does not turn a division by a
  constant into a multiplication by its reciprocal, and a graph file loses that mark. Read back
  from one, the preprocessing's ``x / std`` became ``x * (1 / std)``, 1-ulp differences in the
  pixels that flip ReLU6 units at their kinks: the bundled gradient graph then failed its probe
  (5.3e-3 of its largest value, against 3e-7 as traced) and was traced again, ~5 s, in every new
  process, and the forward differed from its own first run by ~3e-6. Imported, every graph gives
  exactly what it gave as traced.
- **The weights are watched**: a parameter changed in place (its version counter) or moved makes
  the next call convert again, so the compiled network is always the network torch would run.
- **Threads follow torch's** (``torch.get_num_threads()`` when compiled), as that many streams of
  one thread each, a call's images queued on them in small infer requests (REQUEST_IMAGES): an
  evaluate worker with one torch thread gets one stream of one thread. Thread pinning is off, so
  two worker processes do not pin their threads to the same core.

**Input gradients.** When gradients are on and only the pixels need one (the network's weights
frozen, no hooks: integrated gradients' path points), two more compiled graphs serve them:

- ``scored(pixels, head, head_inputs)``: an adapter's score on top of the network (the
  classifier's weighted log-softmax, whose per-prompt class weights are the graph's inputs, so one
  graph serves every prompt) and its gradient w.r.t. the pixels, from ONE graph: no separate
  forward pass. The classifier's ``score`` uses it where IG asks for gradients.
- ``compiled(pixels)`` with gradients on: the compiled forward inside a ``torch.autograd.Function``
  whose backward is the network's vector-Jacobian product, (pixels, d loss / d output) ->
  d loss / d pixels, for any score built on the output in torch.

Both are traced once with ``make_fx`` over ``torch.func.vjp`` into ATen operations, each
convolution's input gradient written as the transposed convolution it is (so only forward
operators remain), then converted like the forward; each has a fixed batch (``VJP_BATCH`` per
stream, the last chunk padded), is checked against torch on a probe and cached on disk the same
way. Measured on the bundled model under load: 24 ms per image (score and gradient together)
against 49 for torch's forward+backward, the gradients equal to ~1e-6 of their size; so the
classifier adapters ask for it (``gradients=True``). CLIP ViT-B/32's vision tower does not: its
compiled backward measured no faster than torch's (150-160 ms per image at a batch of 2 against
140-145, 250-265 at 8). A graph that cannot be traced or fails its probe leaves the gradients to
torch (one warning).

``SALIENCY_LAB_RUNTIME=torch`` switches the runtime off (every pass in torch).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

RUNTIME_ENV = "SALIENCY_LAB_RUNTIME"  # "openvino" (the default) or "torch"
CACHE_ENV = "SALIENCY_LAB_CACHE"  # where compiled graphs are kept; "off" keeps none
RUNTIMES = ("openvino", "torch")
# The probe's pixels: seeded batches in [0, 1] (two images, so batched code is exercised). The
# trace's example and the probe differ, so a network whose output the tracer froze to a constant
# (numpy inside its forward, say) fails the probe instead of passing it.
PROBE_BATCH = 2
TRACE_SEED, PROBE_SEED = 19, 20
# Input gradients: images per request of the compiled vector-Jacobian product (fixed: a traced
# backward has static shapes). 2 and 4 measured alike (19-21 ms per image), 8 slower and ~500 MB
# more resident; 2 keeps the bundled model's peak RSS under 2 GB.
VJP_BATCH = 2
# The forward-only graph's batch is dynamic: a call's images go in infer requests of
# ``request_images`` each, queued on the streams, and callers that score many at once hand it
# ``call_images`` per call (``CompiledForward.batch``), so the queue keeps both streams busy
# instead of draining every few images. Measured on a 2-core AVX2 EPYC VM (the adapter's
# score_many on 64 images against the yardstick, 3-5 interleaved rounds): the bundled network
# 2.29x with 8 per call split 4 + 4 (before), 2.41x one image per request, 2.43x with 16 per call,
# 2.70x with 64 -- so 1 and 64; CLIP ViT-B/32's vision tower is the other way round (its matrix
# products want rows): 8 per request 72-86 ms per image, 1 per request 94-105, 4: 82-103, 16: 74-103.
REQUEST_IMAGES = 1
CALL_IMAGES = 64
# Where requests carry one image, the forward graph is compiled at a static batch of 1 (and cached
# so, apart from the dynamic one): 10.65 against 11.62 ms per image for the bundled network, faster in
# 12 of 15 interleaved rounds of 64 images, the outputs identical (2-core AVX2 EPYC; bench/runtime.py,
# section 2, "1dx64"). A request of several images keeps the dynamic batch: a short call would pad.
STATIC_SINGLE_IMAGE = True
# The compiled gradient may differ from torch's by this share of the probe gradient's largest value.
VJP_RELATIVE_TOLERANCE = 1e-4
# Part of the gradient graphs' disk-cache key: raised when the way they are traced changes (a graph
# from before still passes the probe, but is not the faster one). 2: ReLU6's backward fused.
GRADIENT_GRAPH_VERSION = 2
# The disk cache keeps the most recently used graphs up to this size (CLIP ViT-B/32: 350 MB).
CACHE_MAX_BYTES = 2 * 1024**3


def runtime_name() -> str:
    """The runtime forward-only passes use in this process: ``"openvino"`` or ``"torch"``."""
    name = os.environ.get(RUNTIME_ENV, "openvino").strip().lower() or "openvino"
    if name not in RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV} must be one of {RUNTIMES}, not {name!r}")
    if name == "openvino" and not openvino_available():
        return "torch"
    return name


_openvino: Any = None
_openvino_checked = False
_core: Any = None
_lock = threading.Lock()


def openvino_available() -> bool:
    """Whether ``openvino`` imports (it is in requirements.txt; without it every pass is torch's)."""
    global _openvino, _openvino_checked
    if not _openvino_checked:
        try:
            import openvino

            _openvino = openvino
        except ImportError:  # pragma: no cover - the requirements install it
            _openvino = None
        _openvino_checked = True
    return _openvino is not None


def _ov_core() -> Any:
    global _core
    if _core is None:
        _core = _openvino.Core()
    return _core


def cache_folder(kind: str = "openvino") -> Path | None:
    """Where compiled graphs (``kind`` "openvino") or other derived data that a new process would
    otherwise compute again are kept (``SALIENCY_LAB_CACHE``; ``off`` for none)."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in ("off", "none", "0"):
        return None
    if value:
        return Path(value).expanduser() / kind
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "saliency-lab" / kind


def _state(module: nn.Module) -> tuple | None:
    """One walk over the modules: None when the call must run in torch (a module in training mode,
    whose compiled graph is the eval-mode network, or with a forward hook -- a user's activation
    probe, Grad-CAM's -- which the graph would not run, or a weight off the CPU); otherwise the
    weights' fingerprint, which changes when any weight is changed in place (its version
    counter), replaced or moved. Costs ~0.5 ms for the bundled model; one walk instead of three."""
    fingerprint = []
    for m in module.modules():
        if m.training or m._forward_hooks or m._forward_pre_hooks:
            return None
        for tensors in (m._parameters, m._buffers):
            for t in tensors.values():
                if t is not None:
                    if t.device.type != "cpu":
                        return None
                    fingerprint.append((t.data_ptr(), t._version))
    return tuple(fingerprint)


def tensors_digest(named_tensors: Iterable[tuple[str, torch.Tensor]], signature: str) -> str:
    """A hash of ``signature`` and the tensors (names, shapes, dtypes, values): a disk-cache key."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(signature.encode())
    for name, tensor in named_tensors:
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _weights_digest(module: nn.Module, shape: tuple[int, ...], signature: str) -> str:
    """A hash of the weights, the caller's ``signature`` (what else defines the graph), the input
    shape and the versions: the compiled graphs' cache key. (A code change that keeps the weights
    is caught by the probe, which then converts again.)"""
    versions = f"{signature}|{shape}|{_openvino.__version__}|{torch.__version__}"
    return tensors_digest([*module.named_parameters(), *module.named_buffers()], versions)


class CompiledForward:
    """``module`` (a torch module: ``[B, C, H, W]`` float pixels -> one tensor) compiled with
    OpenVINO for forward-only CPU calls.

    ``compiled(pixels)`` is the compiled model's output, or None when the call must run in torch
    (gradients on, not on the CPU, another dtype, hooks on the module, the runtime switched off
    or the network not convertible). ``tolerance``: the largest difference from torch, in the
    output's units, that the probe accepts. ``signature``: what defines the graph besides the
    weights (e.g. the preprocessing's name), for the disk cache's key. ``gradients``: compile the
    input gradient too (module docstring), for networks where it measured faster than torch's.
    ``request_images`` / ``call_images``: images per infer request / per call of callers that score
    many (``batch``), measured per network (REQUEST_IMAGES).
    Thread-safe: one compile at a time, each call with infer requests of its own.
    """

    def __init__(
        self,
        module: nn.Module,
        tolerance: float,
        label: str = "model",
        signature: str = "",
        gradients: bool = False,
        request_images: int = REQUEST_IMAGES,
        call_images: int = CALL_IMAGES,
    ) -> None:
        self.module = module
        self.request_images, self.call_images = request_images, call_images
        self.gradients = gradients
        self.signature = signature
        self.tolerance = tolerance
        self.label = label
        self._compiled: dict[tuple, Any] = {}  # (C, H, W, static batch 1, threads) -> OpenVINO CompiledModel
        self._fingerprint: tuple | None = None
        self._failed = False
        self._vjp: dict[tuple, Any] = {}  # (C, H, W, threads) -> the compiled vector-Jacobian product
        self._vjp_failed = False
        self.vjp_compiles = 0  # for tests and benches, like compiles and calls
        self.vjp_calls = 0
        self.vjp_source: str | None = None  # where the last gradient graph came from: "traced" or "cache"
        # For tests and benches: graphs compiled (each checked by the probe), calls served compiled,
        # where the last graph came from ("traced" or "cache"), the last probe's difference.
        self.compiles = 0
        self.calls = 0
        self.source: str | None = None
        self.last_probe_error: float | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles (a deep-copied adapter, a worker process) keep the module and compile
        their own graph when first used: OpenVINO's compiled models do not copy."""
        state = dict(self.__dict__)
        state.update(_compiled={}, _fingerprint=None, compiles=0, calls=0, source=None, last_probe_error=None, _vjp={})
        state.update(vjp_compiles=0, vjp_calls=0, vjp_source=None)
        return state

    def batch(self, default: int, device: torch.device) -> int:
        """Images per forward-only call for callers that score many at once: ``call_images`` where
        this runtime serves the calls (on the CPU, switched on, the network converted or not tried
        yet), else ``default`` (torch's batch: its activations stay in cache)."""
        if device.type != "cpu" or self._failed or runtime_name() != "openvino":
            return default
        return max(default, self.call_images)

    def applies(self, pixels: torch.Tensor) -> bool:
        """Whether this call can run compiled (without converting anything)."""
        return self._applies(pixels) is not None

    def _applies(self, pixels: torch.Tensor, grad: bool = False) -> tuple | None:
        """The module's fingerprint (see _state) when the call can run compiled, else None.
        ``grad``: a call with gradients on (the caller checked that only the pixels need one)."""
        if (
            self._failed
            or (torch.is_grad_enabled() and not grad)
            or pixels.device.type != "cpu"
            or pixels.dtype != torch.float32
            or pixels.dim() != 4
            or pixels.shape[0] == 0
            or runtime_name() != "openvino"
        ):
            return None
        return _state(self.module)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor | None:
        if torch.is_grad_enabled():
            return self._differentiable(pixels)
        fingerprint = self._applies(pixels)
        if fingerprint is None:
            return None
        return self._forward(pixels, fingerprint)

    def _differentiable(self, pixels: torch.Tensor) -> torch.Tensor | None:
        """The compiled forward with the compiled input gradient as its backward (module docstring),
        or None (torch) unless the pixels are the only thing that needs a gradient."""
        fingerprint = self._gradient_fingerprint(pixels)
        if fingerprint is None:
            return None
        return _CompiledGradient.apply(pixels, self, fingerprint)

    def _forward(self, pixels: torch.Tensor, fingerprint: tuple) -> torch.Tensor | None:
        compiled = self._get(tuple(pixels.shape[1:]), fingerprint)
        if compiled is None:
            return None
        # At most ``request_images`` images per infer request, and at least one request per stream
        # (a small call -- region search asks for a few images at a time -- still keeps every core
        # busy), queued on the streams: each stream is one thread, so no thread waits for another
        # within a layer (8-15 % faster than one stream of 2 threads, more under load), and a
        # stream takes the next request as soon as it is free.
        streams = max(1, int(compiled.get_property("NUM_STREAMS")))
        chunk = max(1, min(self.request_images, -(-len(pixels) // streams)))
        (out,) = _run_in_chunks(compiled, [pixels], [], outputs=1, chunk=chunk, pad=False)
        self.calls += 1
        return out

    def _get(self, shape: tuple[int, ...], fingerprint: tuple) -> Any:
        single_image = self._single_image()
        key = (*shape, single_image, torch.get_num_threads())
        compiled = self._compiled.get(key) if fingerprint == self._fingerprint else None
        if compiled is not None:
            return compiled
        with _lock:
            if fingerprint != self._fingerprint:
                self._compiled.clear()
                self._vjp.clear()
                self._fingerprint = fingerprint
            if key not in self._compiled and not self._failed:
                try:
                    self._compiled[key] = self._compile(shape, key[-1], single_image)
                except Exception as error:  # noqa: BLE001 - any conversion failure: torch it is
                    self._failed = True
                    warnings.warn(
                        f"{self.label}: forward-only passes stay in torch, the network could not be "
                        f"compiled with OpenVINO ({type(error).__name__}: {str(error).strip()[:200]})",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                    return None
            return self._compiled.get(key)

    def _compile(self, shape: tuple[int, ...], threads: int, single_image: bool) -> Any:
        probe = torch.rand(PROBE_BATCH, *shape, generator=torch.Generator().manual_seed(PROBE_SEED))
        with torch.no_grad():
            expected = self.module(probe)
        folder = cache_folder()
        signature = f"{self.signature}|{'single image' if single_image else 'dynamic batch'}"
        path = folder / f"{_weights_digest(self.module, shape, signature)}.blob" if folder is not None else None
        compiled = _import_cached(path, threads)  # the compiled model as exported (module docstring)
        if compiled is not None:
            error = self._probe_error(compiled, probe, expected, single_image)
            self.compiles += 1
            self.last_probe_error = error
            if error <= self.tolerance:
                self.source = "cache"
                return compiled
            log.info("%s: the cached graph %s differs from torch by %.2g; converting again", self.label, path, error)
        model = self._convert(shape)
        compiled, error = self._checked(model, threads, probe, expected, single_image)
        self.compiles += 1
        self.last_probe_error = error
        if not error <= self.tolerance:
            raise ValueError(f"the compiled network differs from torch by {error:.2g} (tolerance {self.tolerance:.2g})")
        self.source = "traced"
        _save_compiled(compiled, path)
        return compiled

    def _single_image(self) -> bool:
        """Whether the forward graph is compiled at a static batch of one (STATIC_SINGLE_IMAGE)."""
        return STATIC_SINGLE_IMAGE and self.request_images == 1

    def _checked(
        self, model: Any, threads: int, probe: torch.Tensor, expected: torch.Tensor, single_image: bool
    ) -> tuple[Any, float]:
        """The compiled model (at a static batch of one with ``single_image``, STATIC_SINGLE_IMAGE)
        and its largest difference from torch's output on the probe."""
        if single_image:
            model = model.clone()
            model.reshape([1, *probe.shape[1:]])
        compiled = self._compiled_model(model, threads)
        return compiled, self._probe_error(compiled, probe, expected, single_image)

    @staticmethod
    def _probe_error(compiled: Any, probe: torch.Tensor, expected: torch.Tensor, single_image: bool) -> float:
        """The compiled forward's largest difference from torch's output on the probe."""
        if not single_image:
            return _probe_errors(compiled, {0: probe.numpy()}, (expected,))[0]
        (got,) = _run_in_chunks(compiled, [probe], [], outputs=1, chunk=1, pad=False)
        return _largest_difference(got, expected)

    def _convert(self, shape: tuple[int, ...]) -> Any:
        """Trace ``module`` with torch.jit (faster than letting OpenVINO trace it: 1.6 s against
        2.9-7.6 s for the bundled model) and convert the trace, the batch dimension left dynamic."""
        ov = _openvino
        example = torch.rand(PROBE_BATCH, *shape, generator=torch.Generator().manual_seed(TRACE_SEED))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
            traced = torch.jit.trace(self.module, example, check_trace=False)
            return ov.convert_model(traced, example_input=example, input=[ov.PartialShape([-1, *shape])])

    def input_gradient(self, pixels: torch.Tensor, cotangent: torch.Tensor, fingerprint: tuple) -> torch.Tensor:
        """d <module(pixels), cotangent> / d pixels: on the compiled vector-Jacobian product, or in
        torch when it cannot be compiled (then with one more forward pass)."""
        shape = tuple(pixels.shape[1:])
        module = self.module

        def vector_jacobian_product(images: torch.Tensor, cotangents: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return (torch.func.vjp(module, images)[1](cotangents)[0],)

        compiled = self._gradient_graph(
            ("vjp", *shape, torch.get_num_threads()),
            fingerprint,
            vector_jacobian_product,
            batched=(shape, tuple(cotangent.shape[1:])),
            constants=(),
            absolute=(False,),
        )
        if compiled is None:
            return _torch_input_gradient(self.module, pixels, cotangent)
        (gradient,) = _run_in_chunks(compiled, [pixels, cotangent], [], outputs=1)
        self.vjp_calls += 1
        return gradient

    def scored(
        self,
        pixels: torch.Tensor,
        head: Callable[..., torch.Tensor],
        head_inputs: tuple[torch.Tensor, ...],
        head_name: str,
    ) -> torch.Tensor | None:
        """``head(module(pixels), *head_inputs)`` (``[B]`` scores, each image's own) with its
        gradient w.r.t. the pixels, from ONE compiled graph that gives the scores and their input
        gradients together (no separate forward pass), as a differentiable tensor; None (torch)
        where the compiled input gradient does not apply (see ``__call__``). ``head`` must be a
        pure torch function of its tensors; ``head_name`` names it in the caches' keys."""
        if not torch.is_grad_enabled():
            return None
        fingerprint = self._gradient_fingerprint(pixels)
        if fingerprint is None:
            return None
        shape = tuple(pixels.shape[1:])
        module = self.module

        def scores_and_gradients(images: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            values, pullback = torch.func.vjp(lambda x: head(module(x), *inputs), images)[:2]
            return values, pullback(torch.ones_like(values))[0]

        key = ("head", head_name, *(tuple(t.shape) for t in head_inputs), *shape, torch.get_num_threads())
        compiled = self._gradient_graph(
            key,
            fingerprint,
            scores_and_gradients,
            batched=(shape,),
            constants=tuple(t.detach() for t in head_inputs),
            absolute=(True, False),
        )
        if compiled is None:
            return None
        values, gradients = _run_in_chunks(compiled, [pixels], [t.detach() for t in head_inputs], outputs=2)
        self.vjp_calls += 1
        return _PrecomputedGradient.apply(pixels, values, gradients)

    def _gradient_fingerprint(self, pixels: torch.Tensor) -> tuple | None:
        """The weights' fingerprint when a call with gradients can run compiled: only the pixels
        need a gradient, the weights are frozen and nothing hooks the network; else None."""
        if not self.gradients or self._vjp_failed or not pixels.requires_grad:
            return None
        if any(p.requires_grad for p in self.module.parameters()):
            return None  # someone wants the weights' gradients: torch's autograd it is
        fingerprint = self._applies(pixels, grad=True)
        if fingerprint is None or self._get(tuple(pixels.shape[1:]), fingerprint) is None:
            return None  # (the forward compiled first: its probe vouches for the network)
        return fingerprint

    def _gradient_graph(
        self,
        key: tuple,
        fingerprint: tuple,
        function: Callable[..., tuple[torch.Tensor, ...]],
        batched: tuple[tuple[int, ...], ...],
        constants: tuple[torch.Tensor, ...],
        absolute: tuple[bool, ...],
    ) -> Any:
        """``function`` (batched inputs of these per-image shapes, then the constants) compiled at a
        batch of ``VJP_BATCH``, checked against torch on a probe (output i within the forward's
        tolerance if ``absolute[i]``, else within VJP_RELATIVE_TOLERANCE of its largest value) and
        cached in memory and on disk; None (with one warning) when it cannot be."""
        with _lock:
            if fingerprint != self._fingerprint or self._vjp_failed:
                return None  # the weights changed since the forward was compiled: torch this once
            if key not in self._vjp:
                try:
                    self._vjp[key] = self._compile_gradient_graph(key, function, batched, constants, absolute)
                except Exception as error:  # noqa: BLE001 - any tracing or conversion failure: torch's autograd
                    self._vjp_failed = True
                    warnings.warn(
                        f"{self.label}: input gradients stay in torch, the network's backward could not "
                        f"be compiled with OpenVINO ({type(error).__name__}: {str(error).strip()[:200]})",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                    return None
            return self._vjp[key]

    def _compile_gradient_graph(
        self,
        key: tuple,
        function: Callable[..., tuple[torch.Tensor, ...]],
        batched: tuple[tuple[int, ...], ...],
        constants: tuple[torch.Tensor, ...],
        absolute: tuple[bool, ...],
    ) -> Any:
        threads = key[-1]
        generator = torch.Generator().manual_seed(PROBE_SEED)
        probe = (
            torch.rand(VJP_BATCH, *batched[0], generator=generator),
            *(torch.randn(VJP_BATCH, *shape, generator=generator) for shape in batched[1:]),
            *constants,
        )
        expected = function(*probe)
        tolerances = [
            self.tolerance if exact else VJP_RELATIVE_TOLERANCE * max(float(out.abs().max()), 1e-12)
            for exact, out in zip(absolute, expected)
        ]
        folder = cache_folder()
        signature = f"{self.signature}|gradient|{GRADIENT_GRAPH_VERSION}|{key[:-1]}|{VJP_BATCH}"
        shape = batched[0]
        path = folder / f"{_weights_digest(self.module, shape, signature)}.blob" if folder is not None else None
        inputs = {i: t.contiguous().numpy() for i, t in enumerate(probe)}
        compiled = _import_cached(path, threads)  # the compiled model as exported (module docstring)
        if compiled is not None:
            errors = _probe_errors(compiled, inputs, expected)
            if all(e <= t for e, t in zip(errors, tolerances)):
                self.vjp_compiles += 1
                self.vjp_source = "cache"
                return compiled
            log.info(
                "%s: the cached gradient graph %s differs from torch by %.2g; tracing again",
                self.label,
                path,
                max(errors),
            )
        model = _trace_gradient_graph(function, probe)
        compiled, errors = self._checked_outputs(model, threads, inputs, expected)
        if not all(e <= t for e, t in zip(errors, tolerances)):
            raise ValueError(f"the compiled gradient differs from torch's by {max(errors):.2g}")
        self.vjp_compiles += 1
        self.vjp_source = "traced"
        _save_compiled(compiled, path)
        return compiled

    def _checked_outputs(
        self, model: Any, threads: int, inputs: dict, expected: tuple[torch.Tensor, ...]
    ) -> tuple[Any, list[float]]:
        """The compiled model and, per output, its largest difference from torch's on the probe."""
        compiled = self._compiled_model(model, threads)
        return compiled, _probe_errors(compiled, inputs, expected)

    def _compiled_model(self, model: Any, threads: int) -> Any:
        return _ov_core().compile_model(model, "CPU", _compile_properties(threads))


def _trace_gradient_graph(function: Callable[..., tuple[torch.Tensor, ...]], example: tuple[torch.Tensor, ...]) -> Any:
    """Trace ``function`` (which takes gradients with torch.func) into ATen operations with make_fx,
    each convolution's input gradient decomposed into the transposed convolution it is, so only
    forward operators remain; then through torch.jit into OpenVINO. 3-4 s for the bundled model,
    once per disk cache."""
    from torch._decomp import core_aten_decompositions, get_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.nn.attention import SDPBackend, sdpa_kernel

    aten = torch.ops.aten
    # Core ATen keeps softmax and layer norm whole, which OpenVINO's TorchScript frontend does
    # not read in their aten-internal forms; their reference decompositions are plain operators.
    decompositions = {
        **core_aten_decompositions(),
        **get_decompositions([aten._softmax, aten._log_softmax, aten.native_layer_norm]),
        aten.convolution_backward.default: _convolution_input_gradient,
        aten.hardtanh_backward.default: _hardtanh_input_gradient,
    }
    # Attention through the math kernel, so that its backward is matrix products and a softmax
    # (the fused CPU kernel's backward is one operator no converter knows).
    with warnings.catch_warnings(), sdpa_kernel(SDPBackend.MATH):
        warnings.simplefilter("ignore")
        graph = make_fx(function, decomposition_table=decompositions)(*example)
        traced = torch.jit.trace(graph, example, check_trace=False)
        return _openvino.convert_model(traced, example_input=example)


def _compile_properties(threads: int) -> dict[str, Any]:
    """What every compile (and every import of a cached compiled model) asks OpenVINO for."""
    return {
        "INFERENCE_PRECISION_HINT": _openvino.Type.f32,
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "THROUGHPUT",
        "NUM_STREAMS": threads,
        "ENABLE_CPU_PINNING": False,
    }


def _probe_errors(compiled: Any, inputs: dict, expected: tuple[torch.Tensor, ...]) -> list[float]:
    """Per output, the compiled model's largest difference from torch's on the probe ``inputs``."""
    request = compiled.create_infer_request()
    request.infer(inputs, share_inputs=True)
    return [
        _largest_difference(torch.from_numpy(request.get_output_tensor(i).data.copy()), reference)
        for i, reference in enumerate(expected)
    ]


def _largest_difference(got: torch.Tensor, reference: torch.Tensor) -> float:
    """max |got - reference|, or infinity where the shapes differ (the probe's measure)."""
    return float((got - reference).abs().max()) if got.shape == reference.shape else float("inf")


def _run_in_chunks(
    compiled: Any,
    batched: list[torch.Tensor],
    constants: list[torch.Tensor],
    outputs: int,
    chunk: int = VJP_BATCH,
    pad: bool = True,
) -> list[torch.Tensor]:
    """Run a graph on ``batched`` inputs of any length in infer requests of ``chunk`` images, queued
    on the compiled model's streams (one request per stream at a time), the ``constants`` given to
    every request; its first ``outputs`` outputs, concatenated. ``pad``: the graph's batch is fixed
    at ``chunk`` (the last chunk is padded with zeros, its rows dropped after)."""
    count = len(batched[0])
    padding = -count % chunk if pad else 0
    tensors = [t.detach().contiguous() for t in batched]
    if padding:
        tensors = [torch.cat([t, t.new_zeros(padding, *t.shape[1:])]) for t in tensors]
    fixed = {len(tensors) + i: t.contiguous().numpy() for i, t in enumerate(constants)}
    chunks = list(zip(*(t.split(chunk) for t in tensors)))
    streams = max(1, min(int(compiled.get_property("NUM_STREAMS")), len(chunks)))
    queue = _openvino.AsyncInferQueue(compiled, streams)
    results: list[list[torch.Tensor]] = [[] for _ in chunks]

    def done(request: Any, index: int) -> None:
        results[index] = [torch.from_numpy(request.get_output_tensor(i).data.copy()) for i in range(outputs)]

    queue.set_callback(done)
    for index, parts in enumerate(chunks):
        queue.start_async(
            {**{i: part.numpy() for i, part in enumerate(parts)}, **fixed}, userdata=index, share_inputs=True
        )
    queue.wait_all()
    return [torch.cat([r[i] for r in results])[:count] for i in range(outputs)]


class _PrecomputedGradient(torch.autograd.Function):
    """Scores whose input gradients were computed with them (``CompiledForward.scored``): the
    backward scales each image's gradient by its incoming cotangent."""

    @staticmethod
    def forward(ctx: Any, pixels: torch.Tensor, values: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:  # noqa: ARG004 - the input the gradients are for
        ctx.save_for_backward(gradients)
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, cotangent: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (gradients,) = ctx.saved_tensors
        return gradients * cotangent.view(-1, *([1] * (gradients.dim() - 1))), None, None


class _CompiledGradient(torch.autograd.Function):
    """The compiled forward whose backward is the compiled input gradient (module docstring)."""

    @staticmethod
    def forward(ctx: Any, pixels: torch.Tensor, owner: CompiledForward, fingerprint: tuple) -> torch.Tensor:
        ctx.owner, ctx.fingerprint = owner, fingerprint
        ctx.save_for_backward(pixels)
        with torch.no_grad():
            output = owner._forward(pixels.detach(), fingerprint)
        if output is None:  # pragma: no cover - _differentiable compiled it just before
            with torch.no_grad():
                output = owner.module(pixels.detach())
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, cotangent: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (pixels,) = ctx.saved_tensors
        return ctx.owner.input_gradient(pixels, cotangent, ctx.fingerprint), None, None


def _torch_input_gradient(module: nn.Module, pixels: torch.Tensor, cotangent: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        leaf = pixels.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(module(leaf), leaf, cotangent)
    return gradient


def _convolution_input_gradient(
    grad_output: torch.Tensor,
    inputs: torch.Tensor,
    weight: torch.Tensor,
    bias_sizes: Any,  # noqa: ARG001 - aten's signature; no bias gradient is asked for
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    transposed: bool,
    output_padding: list[int],  # noqa: ARG001 - a forward convolution's (zeros)
    groups: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor | None, None, None]:
    """aten.convolution_backward for the input only, as the transposed convolution it is (the
    weights' and bias's gradients are never asked for: the weights are frozen)."""
    if transposed or output_mask[1] or output_mask[2]:
        raise NotImplementedError("only the input gradient of a forward convolution is compiled")
    if not output_mask[0]:
        return None, None, None
    extra = [
        size + 2 * pad - dil * (kernel - 1) - 1 - (out - 1) * step
        for size, pad, dil, kernel, out, step in zip(
            inputs.shape[2:], padding, dilation, weight.shape[2:], grad_output.shape[2:], stride
        )
    ]
    gradient = torch.ops.aten.convolution(grad_output, weight, None, stride, padding, dilation, True, extra, groups)
    return gradient, None, None


def _hardtanh_input_gradient(
    grad_output: torch.Tensor, inputs: torch.Tensor, min_val: float, max_val: float
) -> torch.Tensor:
    """aten.hardtanh_backward (ReLU6's), written so that OpenVINO fuses it: the mask is taken from
    the clamped activation (the forward's own clamp, which OpenVINO merges with this one, so the
    forward convolution keeps its clamp fused) as one chain, |clamp(x) - mid| < half, which
    OpenVINO runs as one pass with the select. 1.29x faster for the bundled score-and-gradient
    graph than aten's two comparisons of the pre-activation (bench/RESULTS.md, "sixth session").
    It is torch's mask (min < x < max) except for 0 < x - min <= 1.2e-7 (half of float32's
    spacing at ``mid`` = 3), where it drops the unit: pre-activations that close to a kink are
    already on either side by rounding, since the compiled convolutions round differently from
    torch's by more than that."""
    middle, half = (min_val + max_val) / 2, (max_val - min_val) / 2
    return torch.where((torch.clamp(inputs, min_val, max_val) - middle).abs() < half, grad_output, 0.0)


def _import_cached(path: Path | None, threads: int) -> Any:
    """The compiled model exported to ``path`` (``_save_compiled``), imported for ``threads``; None
    when there is none or it cannot be imported (another OpenVINO, a damaged file)."""
    if path is None or not path.is_file():
        return None
    try:
        compiled = _ov_core().import_model(io.BytesIO(path.read_bytes()), "CPU", _compile_properties(threads))
        path.touch()  # most recently used: kept longest by prune_cache
        return compiled
    except Exception:  # noqa: BLE001 - a damaged or foreign cache entry: trace again
        log.info("could not import %s; tracing again", path)
        return None


def _save_compiled(compiled: Any, path: Path | None) -> None:
    """Export the compiled model to the cache (``keep_in_cache``)."""

    def export(partial: Path) -> None:
        exported = compiled.export_model()
        partial.write_bytes(exported.getvalue() if isinstance(exported, io.BytesIO) else bytes(exported))

    keep_in_cache(path, export, "the compiled graph")


def keep_in_cache(path: Path | None, write: Callable[[Path], None], what: str) -> None:
    """``write`` a cache entry under a temporary name, then rename it to ``path`` (a reader never
    sees half a file) and prune the folder; a folder that cannot be written (a read-only home)
    only costs the next process the work again."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.partial")
        write(partial)
        partial.replace(path)
        prune_cache(path.parent)
    except OSError as error:
        log.info("could not keep %s in %s: %s", what, path.parent, error)


def prune_cache(folder: Path, max_bytes: int = CACHE_MAX_BYTES) -> None:
    """Delete the least recently used entries (a compiled .blob, a graph's .xml and .bin from before,
    or other kept data, .pt) beyond ``max_bytes`` (the newest one always stays)."""
    kept = [*folder.glob("*.xml"), *folder.glob("*.blob"), *folder.glob("*.pt")]
    entries = sorted(kept, key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for i, entry in enumerate(entries):
        files = [entry, entry.with_suffix(".bin")] if entry.suffix == ".xml" else [entry]
        total += sum(f.stat().st_size for f in files if f.exists())
        if i and total > max_bytes:
            for f in reversed(files):
                f.unlink(missing_ok=True)


class Forward(nn.Module):
    """``function(*modules)`` as a module, so that a network and its preprocessing trace as one
    graph: ``Forward(lambda x: network(preprocess(x)), network)``."""

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor], *modules: nn.Module) -> None:
        super().__init__()
        self.function = function
        self.parts = nn.ModuleList([m for m in modules if isinstance(m, nn.Module)])
        # The wrapper and its list only: the parts keep their own mode, which is checked on each call.
        self.training = self.parts.training = False

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.function(pixels)
