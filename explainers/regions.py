"""Image -> sub-regions for region search: SLIC superpixels (default, as SMDL) or a square grid."""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_REGIONS = 49  # sub-regions per photo, as SMDL; also the random reference's regions by default


def superpixels(image: np.ndarray, n_regions: int) -> np.ndarray:
    """SLIC (Achanta et al. 2012, via scikit-image) -> ``[H, W]`` int labels 0..n-1.

    SLIC returns roughly ``n_regions`` segments; labels are made contiguous. Deterministic.
    """
    from skimage.segmentation import slic

    labels = slic(image, n_segments=n_regions, compactness=10.0, start_label=0, enforce_connectivity=True)
    _, contiguous = np.unique(labels, return_inverse=True)
    return contiguous.reshape(labels.shape).astype(np.int64)


def grid(height: int, width: int, n_regions: int) -> np.ndarray:
    """A square-ish grid of about ``n_regions`` cells -> ``[H, W]`` int labels."""
    side = max(1, round(np.sqrt(n_regions)))
    rows = np.minimum(np.arange(height) * side // height, side - 1)
    cols = np.minimum(np.arange(width) * side // width, side - 1)
    return (rows[:, None] * side + cols[None, :]).astype(np.int64)


def make_regions(image: np.ndarray, n_regions: int, kind: str = "slic") -> np.ndarray:
    """``image`` uint8 ``[H, W, 3]`` -> labels ``[H, W]``; ``kind`` is ``"slic"`` or ``"grid"``."""
    if kind == "grid":
        return grid(image.shape[0], image.shape[1], n_regions)
    if kind == "slic":
        return superpixels(image, n_regions)
    raise ValueError(f"unknown region kind {kind!r}")


def label_masks(labels: np.ndarray) -> torch.Tensor:
    """``[H, W]`` labels -> ``[n, 1, H, W]`` float one-hot masks."""
    n = int(labels.max()) + 1
    masks = torch.from_numpy(labels)[None] == torch.arange(n)[:, None, None]
    return masks.unsqueeze(1).float()


def region_labels(pixels: torch.Tensor, n_regions: int, kind: str = "slic") -> np.ndarray:
    """``[1, 3, H, W]`` pixels in [0, 1] -> ``[H, W]`` region labels (as region search cuts the photo)."""
    image = (pixels[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return make_regions(image, n_regions, kind)


def region_means(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[n]``: the mean of a ``[H, W]`` map over each region."""
    n = int(labels.max()) + 1
    sums = np.bincount(labels.ravel(), weights=np.asarray(values, dtype=np.float64).ravel(), minlength=n)
    return sums / np.maximum(np.bincount(labels.ravel(), minlength=n), 1)


def order_within_regions(region_map: np.ndarray, labels: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """A map constant on each region, with the pixels inside each region ordered by ``inner``
    (highest first) and the order between regions unchanged: each region's pixels are spread
    over less than the gap to the next region's value."""
    values = np.unique(region_map)
    gap = float(np.diff(values).min()) if len(values) > 1 else 1.0
    n = int(labels.max()) + 1
    low, high = np.full(n, np.inf), np.full(n, -np.inf)
    np.minimum.at(low, labels.ravel(), inner.ravel())
    np.maximum.at(high, labels.ravel(), inner.ravel())
    span = np.where(high > low, high - low, 1.0)
    share = (inner - low[labels]) / span[labels]  # 0..1 inside each region
    return (region_map - (1.0 - share) * 0.99 * gap).astype(np.float32)
