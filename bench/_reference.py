"""The speed targets' yardstick: plain torch eager forward passes of the adapter's own network
(for the bundled model: batch norms folded, channels_last, as the project builds it), no
gradients, batches of 8. Everything the speed benches report as a ratio is divided by this,
measured in the same process, interleaved with what it is compared to."""

from __future__ import annotations

import time

import torch

REFERENCE_BATCH = 8


def torch_forward(adapter):
    """The adapter's network forward in torch eager, bypassing the compiled runtime."""
    if hasattr(adapter, "_torch_logits"):
        return adapter._torch_logits
    return adapter._torch_image_features


def reference_seconds_per_image(adapter, images: torch.Tensor) -> float:
    """Seconds per image of torch eager no-grad forward passes over ``images`` in batches of 8."""
    forward = torch_forward(adapter)
    started = time.perf_counter()
    with torch.no_grad():
        for chunk in images.split(REFERENCE_BATCH):
            forward(chunk)
    return (time.perf_counter() - started) / len(images)


def reference_images(adapter, count: int = 16, seed: int = 0) -> torch.Tensor:
    """Random pixels at the adapter's input size (the cost does not depend on the content)."""
    return torch.rand(count, 3, *adapter.input_size, generator=torch.Generator().manual_seed(seed))
