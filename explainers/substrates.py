"""What "removed" pixels become: shared by the curves (metrics), by region search's masked
images and by IG's baseline.

A ``Substrate`` is made once per image (``make_substrate``) and then fills any batch of keep
masks: ``substrate.fill(keep)`` keeps the pixels where ``keep`` is 1 and replaces the others.
``substrate.empty`` is the image with every pixel removed (the curves' end point).

Three kinds: ``black`` (SMDL/LIMA), ``blur`` (RISE) and ``road``, the noisy linear imputation of
ROAD (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods",
ICML 2022), where removed pixels are inferred from the pixels kept around them, so that the
shape of the removed set tells the model as little as possible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

SUBSTRATES = ("black", "blur", "road")
# IG's path starts from a fixed image, so only the substrates that do not depend on a mask serve.
BASELINES = ("black", "blur")
BLUR_SIGMA = 10.0  # RISE-style blurred substrate: object shapes vanish, colours stay

# ROAD's noise, in pixel units ([0, 1]); see RoadSubstrate for why this value.
ROAD_NOISE_STD = 0.01
# The multigrid solver stops a mask when its estimate of the largest error of any imputed value is
# below this (pixel units), and adds that estimated error. Measured against scipy's direct solve
# the error is then at most 9.4e-5 (32 curve masks and 50 stress masks of bench/road_cost.py);
# tests/test_substrates.py asserts < 1e-3, a quarter of one 8-bit grey level.
ROAD_TOLERANCE = 1e-4
ROAD_MAX_ITERATIONS = 50
# Masks solved together. bench/road_cost.py: per image, batches of 4 to 8 cost about the same on
# the 2-core CPU, 1 (1.6x), 2 and 16 more; 8 is what the curves hand over at once (the bundled
# model's batch), and memory grows with the batch (~10 MB per 224x224 mask).
ROAD_CHUNK = 8


def substrate_image(pixels: torch.Tensor, kind: str = "black") -> torch.Tensor:
    """The image with every pixel removed for a mask-free substrate: black, or a strong Gaussian blur."""
    if kind == "black":
        return torch.zeros_like(pixels)
    if kind == "blur":
        # reflect padding needs half the kernel below the image's side: small images get a smaller kernel
        kernel = min(int(4 * BLUR_SIGMA) | 1, 2 * min(pixels.shape[-2:]) - 1)
        if pixels.device.type == "cpu" and pixels.dtype == torch.float32:
            # OpenCV's separable Gaussian, the same kernel and reflect-101 border as torchvision's:
            # 1 ms against 38 for a 224x224 photo, equal to 2e-6 (bench/opencv_ops.py).
            planes = pixels.detach().contiguous().reshape(-1, *pixels.shape[-2:]).numpy()
            blurred = [
                cv2.GaussianBlur(p, (kernel, kernel), BLUR_SIGMA, borderType=cv2.BORDER_REFLECT_101) for p in planes
            ]
            return torch.from_numpy(np.stack(blurred)).view_as(pixels)
        return TF.gaussian_blur(pixels, [kernel, kernel], [BLUR_SIGMA, BLUR_SIGMA])
    raise ValueError(f"unknown substrate {kind!r}; use one of {BASELINES}")


class Substrate(Protocol):
    """A photo with a rule for removed pixels."""

    # Read-only members (properties), so that frozen dataclasses and class attributes qualify.
    @property
    def kind(self) -> str: ...
    @property
    def pixels(self) -> torch.Tensor: ...  # [1, 3, H, W], the photo
    @property
    def empty(self) -> torch.Tensor: ...  # [1, 3, H, W], every pixel removed

    def fill(self, keep: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` keep masks (1 keeps the photo's pixel, 0 removes it) -> ``[B, 3, H, W]``."""
        ...


@dataclass(frozen=True)
class FixedSubstrate:
    """Removed pixels take the value of a fixed image (black, or the blurred photo)."""

    kind: str
    pixels: torch.Tensor  # [1, 3, H, W], the photo
    empty: torch.Tensor  # [1, 3, H, W], every pixel removed

    def fill(self, keep: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` keep masks (1 keeps the photo's pixel, 0 removes it) -> ``[B, 3, H, W]``."""
        # One pass over the batch (addcmul) instead of two: 21 ms instead of 41 for 64 images at
        # 224 x 224 on 2 threads, the same values to the bit on RISE's smooth masks.
        return torch.addcmul(self.empty, keep, self.pixels - self.empty)


# --- ROAD: noisy linear imputation ---------------------------------------------------------
#
# Every removed pixel p is the weighted mean of its 8 neighbours q (ROAD: edge neighbours 1/6,
# diagonal ones 1/12), over the neighbours inside the image:
#     d_p x_p - sum_{q removed} w_pq x_q = sum_{q kept} w_pq x_q,   d_p = sum_{q in image} w_pq.
# The weights are used x12 (2 and 1, d = 12 inside the image): the system is the same, and in
# float32 d_p is then exactly the sum of its row's weights. With 1/6 and 1/12 the rounding of d_p
# acts as a small mass term that, over a large hole, moved the solution by up to 1e-3.
# The matrix is symmetric and, unless no pixel is kept, positive definite, so conjugate gradients
# apply; a geometric multigrid V-cycle (bilinear transfers, Galerkin coarse operators) makes the
# iteration count independent of the hole's size.
#
# How it is made cheap (bench/road_cost.py, section 0; 43 CPU ms per image before issue 20, 24
# after a first rewrite, on a quiet machine): every level has an odd size (the photo is padded by
# one inactive row or column where needed), so the bilinear transfers have no special last cell
# and the Galerkin operator R A P has a closed form, one strided convolution exact in any
# summation order (_EXACT_GALERKIN_LEVELS), instead of 9 probes of the fine operator; the fine
# operator's neighbour sum is one OpenCV separable filter per plane; the coarsest level (at most
# 3x3 cells) is solved exactly; the iteration starts from a push-pull fill of the kept pixels
# instead of black; a mask that has converged leaves its batch; and the fine level, whose
# passes over memory are the cost, updates in place and reuses its scratch fields (a fresh
# 5 MB field cost up to 4 ms in page faults).

_OFFSETS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]  # index 4 is the pixel itself
_CENTRE = 4
_NEIGHBOUR_WEIGHTS = ((1.0, 2.0, 1.0), (2.0, 0.0, 2.0), (1.0, 2.0, 1.0))  # ROAD's 1/12, 1/6 (x12)
# Smoothing: damped Jacobi, x += (r - A x) / m per cell with m = max(a_JJ / 0.8, 0.6 sum_K |a_JK|).
# On ROAD's own operator (diagonally dominant) m is a_JJ / 0.8, plain damped Jacobi. Galerkin
# operators of scattered removed pixels are not diagonally dominant, and there 0.8-damped Jacobi
# diverged (IG's salt-like top pixels on chelsea: CG stalled at 0.36 error after 50 iterations);
# the l1 term keeps 2m - A positive definite (Gershgorin), so every smoothing sweep contracts and
# the V-cycle stays a symmetric positive definite preconditioner (Baker et al. 2011, l1 smoothers).
_JACOBI_WEIGHT = 0.8
_L1_SHARE = 0.6
_COARSEST = 3  # a level with at most this many cells per side is solved exactly
_TAPS = (0.5, 1.0, 0.5)  # the bilinear hat, per dimension: fine pixel 2i + t gets weight _TAPS[t + 1] of cell i


def _box_sum(u: torch.Tensor, out: torch.Tensor | None = None, negate: bool = False) -> torch.Tensor:
    """sum_q k_q u_q with k = [1 2 1]^T [1 2 1] over the 3x3 neighbourhood (the centre too, weight
    4), zero outside, for ``[B, C, h, w]``. Per image and channel, so an image's result does not
    depend on what it is batched with. OpenCV's separable filter on the CPU (one pass over memory
    per plane), shifted slices elsewhere."""
    if u.device.type == "cpu" and u.dtype == torch.float32 and u.shape[-1] > 1 and u.shape[-2] > 1:
        source = u.contiguous()
        if out is None:
            out = torch.empty_like(source)
        planes, targets = source.view(-1, *u.shape[-2:]).numpy(), out.view(-1, *u.shape[-2:]).numpy()
        taps = _CV_NEGATED_TAPS if negate else _CV_TAPS  # -box(u) exactly, at no extra pass
        for plane, target in zip(planes, targets):
            cv2.sepFilter2D(plane, -1, taps, _CV_TAPS, dst=target, borderType=cv2.BORDER_CONSTANT)
        return out
    padded = F.pad(u, (0, 0, 1, 1))
    rows = torch.add(padded[..., :-2, :], padded[..., 2:, :]).add_(u, alpha=2.0)
    padded = F.pad(rows, (1, 1, 0, 0))
    summed = torch.add(padded[..., :-2], padded[..., 2:]).add_(rows, alpha=2.0)
    if negate:
        summed.neg_()
    return summed if out is None else out.copy_(summed)


_CV_TAPS = np.array([1.0, 2.0, 1.0], dtype=np.float32)
_CV_NEGATED_TAPS = -_CV_TAPS


def _neighbour_sum(u: torch.Tensor) -> torch.Tensor:
    """sum_q w_q u_q over the 8 neighbours inside the image (weights x12), for ``[B, C, h, w]``:
    K = [1 2 1]^T [1 2 1] - 4 (the centre)."""
    return _box_sum(u).sub_(u, alpha=4.0)


def _apply(stencil: torch.Tensor, u: torch.Tensor, rhs: torch.Tensor | None = None) -> torch.Tensor:
    """A 9-point operator with per-pixel coefficients ``[B, 9, h, w]`` applied to ``[B, C, h, w]``,
    or ``rhs`` minus it (the residual, without a pass of its own)."""
    height, width = u.shape[-2:]
    padded = F.pad(u, (1, 1, 1, 1))
    sign = 1.0 if rhs is None else -1.0
    centre = stencil[:, _CENTRE : _CENTRE + 1]
    out = centre * u if rhs is None else torch.addcmul(rhs, centre, u, value=-1.0)
    for k, (dr, dc) in enumerate(_OFFSETS):
        if k != _CENTRE:
            window = padded[..., 1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width]
            out.addcmul_(stencil[:, k : k + 1], window, value=sign)
    return out


@dataclass
class _Level:
    """One level of the multigrid hierarchy, at an odd size per dimension (or at most _COARSEST).
    Level 0 is ROAD's operator itself, applied through its constant kernel (``diagonal`` = the
    centre + 4, see _apply_level); coarser levels carry Galerkin stencils; the coarsest its
    exact inverse."""

    smoother: torch.Tensor  # [B, 1, h, w]: 1 / m (see _JACOBI_WEIGHT), 0 where inactive
    active: torch.Tensor  # [B, 1, h, w] float: 1 where a removed pixel is (kept pixels, cells of kept ones: 0)
    stencil: torch.Tensor | None = None  # coarse levels: [B, 9, h, w] coefficients
    diagonal: torch.Tensor | None = None  # level 0: [B, 1, h, w] = removed * (neighbour weight inside + 4)
    inverse: torch.Tensor | None = None  # the coarsest level: [B, h w, h w]
    strides: tuple[int, int] = (2, 2)  # per dimension: 2 when the next level halves it, 1 when it keeps it
    # level 0: [B, 3, h, w] reused for every operator application and residual whose result is
    # consumed at once (the V-cycle's, the CG product): writing into memory just used is up to
    # 3x cheaper than into a fresh allocation on the shared 2-core machine (bench/road_cost.py)
    scratch: dict[str, torch.Tensor] = field(default_factory=dict)


def _padding(size: int) -> int:
    """Rows (or columns) to add so that a side of ``size`` halves exactly (2h - 1 cells), or 0."""
    return 1 if size > _COARSEST and size % 2 == 0 else 0


def _strides(height: int, width: int) -> tuple[int, int]:
    return (2 if height > _COARSEST else 1, 2 if width > _COARSEST else 1)


def _fine_level(unknown: torch.Tensor, inside: torch.Tensor) -> _Level:
    """ROAD's operator on the removed pixels (``unknown`` ``[B, 1, H, W]``, 1 = removed; odd sizes,
    the padding 0). ``inside`` ``[1, 1, H, W]``: the neighbours' weight inside the photo (12
    inside, 8 on an edge, 5 in a corner; 0 on the padding).

    Rows and columns of kept pixels are zero (kept neighbours go to the right-hand side), so it
    acts on fields that vanish on kept pixels: A u = d u - unknown * (K * u), K the neighbour
    weights and d their sum over the neighbours inside the image: at the image border the mean
    is renormalised over the neighbours that exist.
    """
    # sum_K |a_JK| <= 2 d here, so m = d / 0.8 (0.6 * 2 d is less): plain damped Jacobi.
    smoother = unknown * (_JACOBI_WEIGHT / inside.clamp_min(1.0))
    return _Level(smoother, unknown, diagonal=unknown * (inside + 4.0), strides=_strides(*unknown.shape[-2:]))


def _apply_level(level: _Level, u: torch.Tensor) -> torch.Tensor:
    """The level's operator applied to ``[B, C, h, w]`` (which vanishes where the level is inactive).
    Level 0: d u - unknown * (box(u) - 4 u) = (d + 4) u - unknown * box(u) on such fields, in the
    level's scratch field (valid until its next residual or product)."""
    if level.stencil is not None:
        return _apply(level.stencil, u)
    assert level.diagonal is not None  # level 0
    out = _box_sum(u, _scratch(level, u.shape, u), negate=True).mul_(level.active)
    return out.addcmul_(level.diagonal, u)


def _residual(level: _Level, rhs: torch.Tensor, u: torch.Tensor, scratch: bool = True) -> torch.Tensor:
    """rhs - A u, fused where the operator is level 0's; there in the level's scratch field (valid
    until the level's next residual or product) unless ``scratch`` is off."""
    if level.stencil is not None:
        return _apply(level.stencil, u, rhs)
    assert level.diagonal is not None  # level 0
    box = _box_sum(u, _scratch(level, u.shape, u, "box") if scratch else None)
    out = _scratch(level, u.shape, u) if scratch else None
    return torch.addcmul(rhs, level.diagonal, u, value=-1.0, out=out).addcmul_(level.active, box)


def _scratch(
    level: _Level, shape: torch.Size | tuple[int, ...], like: torch.Tensor, slot: str = "full"
) -> torch.Tensor:
    """Level 0's scratch field ``slot`` of ``shape`` (the first rows of the batch's: a compacted
    batch keeps using it), allocated like ``like`` the first time."""
    held = level.scratch.get(slot)
    if held is None or held.shape[1:] != shape[1:] or len(held) < shape[0]:
        held = level.scratch[slot] = like.new_empty(shape)
    return held[: shape[0]]


def _along(tensor: torch.Tensor, dim: int, start: int, stop: int, step: int = 1) -> torch.Tensor:
    """A view of ``tensor[..., start:stop:step, ...]`` on ``dim``."""
    return tensor[(slice(None),) * dim + (slice(start, stop, step),)]


def _interpolate(coarse: torch.Tensor, dim: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Linear interpolation along ``dim`` from h cells to 2h - 1 pixels: cell i sits on pixel 2i."""
    h = coarse.shape[dim]
    shape = list(coarse.shape)
    shape[dim] = 2 * h - 1
    fine = coarse.new_empty(shape) if out is None else out
    _along(fine, dim, 0, 2 * h - 1, 2).copy_(coarse)
    odd = _along(fine, dim, 1, 2 * h - 2, 2)
    torch.add(_along(coarse, dim, 0, h - 1), _along(coarse, dim, 1, h), out=odd)
    odd.mul_(0.5)
    return fine


def _interpolate_transpose(fine: torch.Tensor, dim: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """The exact transpose of ``_interpolate`` along ``dim`` (2h - 1 pixels -> h cells)."""
    h = (fine.shape[dim] + 1) // 2
    even = _along(fine, dim, 0, 2 * h - 1, 2)
    coarse = even.clone(memory_format=torch.contiguous_format) if out is None else out.copy_(even)
    odd = _along(fine, dim, 1, 2 * h - 2, 2)
    _along(coarse, dim, 0, h - 1).add_(odd, alpha=0.5)
    _along(coarse, dim, 1, h).add_(odd, alpha=0.5)
    return coarse


def _pad_to(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero rows and columns at the end up to ``height`` x ``width`` (the odd padding)."""
    extra_h, extra_w = height - tensor.shape[-2], width - tensor.shape[-1]
    return F.pad(tensor, (0, extra_w, 0, extra_h)) if extra_h or extra_w else tensor


def _prolong_unmasked(level: _Level, coarse: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Bilinear interpolation from the next level's cells to ``level``'s (the next level's padding
    cell, if any, is dropped: it is inactive). Columns first: the strided passes along the last
    dimension then run on the smaller field."""
    height, width = level.active.shape[-2:]
    rows, cols = level.strides
    fine = coarse[..., : (height + 1) // 2 if rows == 2 else height, : (width + 1) // 2 if cols == 2 else width]
    if cols == 2:
        half = None
        if out is not None:
            half = out if rows == 1 else _scratch(level, (*fine.shape[:-1], width), out, "half")
        fine = _interpolate(fine, 3, half)
    if rows == 2:
        fine = _interpolate(fine, 2, out)
    return fine if out is None or rows == 2 or cols == 2 else out.copy_(fine)


def _restrict(level: _Level, fine: torch.Tensor, size: tuple[int, ...], scratch: bool = False) -> torch.Tensor:
    """R = P^T, P the prolongation (``_prolong_unmasked`` times ``level.active``), for a ``fine``
    field that vanishes where ``level`` is inactive (residuals do), padded to the next level's
    ``size``. Rows first, so that the strided passes run on the smaller field; with ``scratch``
    (level 0) the intermediate field is the level's."""
    rows, cols = level.strides
    if rows == 2:
        half = None
        if scratch and cols == 2:
            half = _scratch(level, (*fine.shape[:-2], (fine.shape[-2] + 1) // 2, fine.shape[-1]), fine, "half")
        fine = _interpolate_transpose(fine, 2, half)
    if cols == 2:
        fine = _interpolate_transpose(fine, 3)
    return _pad_to(fine, *size)


def _galerkin_terms(strides: tuple[int, int]) -> list[tuple[int, int, int, float]]:
    """The nonzero terms of the Galerkin product: (coarse offset d, fine offset s, hat tap t,
    coefficient), offsets as indices into _OFFSETS and taps as indices (tr + 1) * 3 + (tc + 1), the
    coefficient h(t) h(t + s - sigma d) per dimension (sigma the stride; a kept dimension's hat is 1
    at t = 0)."""

    def one_dim(stride: int) -> dict[tuple[int, int, int], float]:
        hat = {-1: _TAPS[0], 0: _TAPS[1], 1: _TAPS[2]} if stride == 2 else {0: 1.0}
        return {
            (d, s, t): hat[t] * hat[t + s - stride * d]
            for d in (-1, 0, 1)
            for s in (-1, 0, 1)
            for t in hat
            if t + s - stride * d in hat
        }

    rows, cols = one_dim(strides[0]), one_dim(strides[1])
    return [
        ((dr + 1) * 3 + dc + 1, (sr + 1) * 3 + sc + 1, (tr + 1) * 3 + tc + 1, wr * wc)
        for (dr, sr, tr), wr in rows.items()
        for (dc, sc, tc), wc in cols.items()
    ]


def _fine_stencil(level: _Level) -> torch.Tensor:
    """Level 0's operator as 9-point coefficients ``[B, 9, h, w]`` (for the Galerkin product)."""
    stencil = torch.cat([-w * level.active for row in _NEIGHBOUR_WEIGHTS for w in row], dim=1)
    assert level.diagonal is not None
    stencil[:, _CENTRE : _CENTRE + 1] = level.diagonal - 4.0 * level.active
    return stencil


_GALERKIN_WEIGHTS: dict[tuple[tuple[int, int], torch.dtype, torch.device], torch.Tensor] = {}


def _galerkin_weights(strides: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """_galerkin_terms as convolution weights ``[5, 9, 3, 3]``: output d - 4 (the offsets d >= the
    centre; the others mirror them), input the field g_s, kernel position the hat tap t + 1."""
    key = (strides, dtype, device)
    if key not in _GALERKIN_WEIGHTS:
        weights = torch.zeros(9 - _CENTRE, 9, 3, 3, dtype=torch.float64)
        for d, s, t, weight in _galerkin_terms(strides):
            if d >= _CENTRE:
                weights[d - _CENTRE, s, t // 3, t % 3] += weight
        _GALERKIN_WEIGHTS[key] = weights.to(dtype=dtype, device=device)
    return _GALERKIN_WEIGHTS[key]


_FINE_GALERKIN_WEIGHTS: dict[tuple[tuple[int, int], torch.dtype, torch.device], torch.Tensor] = {}


def _fine_galerkin_weights(strides: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Level 0's Galerkin product as convolution weights ``[5, 5, 5, 5]`` on 5 fields: d_p - 4 (the
    centre) and the products active_p active_{p+s} for the 4 offsets s after the centre. The field
    of an offset before it is one of those, shifted (g_s(p) = g_{-s}(p + s) up to ROAD's weight,
    the same for s and -s), so its taps move by s in a 5x5 kernel; ROAD's weights are folded in."""
    key = (strides, dtype, device)
    if key not in _FINE_GALERKIN_WEIGHTS:
        nine = _galerkin_weights(strides, torch.float64, torch.device("cpu"))
        weights = torch.zeros(9 - _CENTRE, 9 - _CENTRE, 5, 5, dtype=torch.float64)
        for s, (dr, dc) in enumerate(_OFFSETS):
            field, (shift_r, shift_c) = (s - _CENTRE, (0, 0)) if s >= _CENTRE else (8 - s - _CENTRE, (dr, dc))
            weight = 1.0 if s == _CENTRE else -_NEIGHBOUR_WEIGHTS[dr + 1][dc + 1]
            weights[:, field, 1 + shift_r : 4 + shift_r, 1 + shift_c : 4 + shift_c] += weight * nine[:, s]
        _FINE_GALERKIN_WEIGHTS[key] = weights.to(dtype=dtype, device=device)
    return _FINE_GALERKIN_WEIGHTS[key]


# The Galerkin products are computed by a convolution, whose summation order is oneDNN's (it may
# change with the batch size), but their sums are exact whatever the order, so every mask gets the
# same operators whatever it is batched with: level 0's entries are integers and the hat products
# multiples of 1/16, so level k's entries are multiples of 2^-4k, and every partial sum is bounded
# by the row l1 norm 24 * 4^k (level 0's is 24; a product's is at most 4 times its input's). That
# is 11, 17 and 23 significant bits for levels 1 to 3, within float32's 24; deeper levels (29x29
# cells and fewer at 224x224) are summed in float64, exact to level 8 (53 bits; a photo of up to
# 513 pixels a side), and rounded to float32 for the V-cycle. Beyond, term by term in a fixed order.
_EXACT_GALERKIN_LEVELS = 3
_EXACT_GALERKIN_LEVELS_FLOAT64 = 8


def _galerkin(level: _Level, size: tuple[int, int], by_convolution: bool) -> torch.Tensor:
    """The next level's operator R A P (R = P^T) as 9-point stencils ``[B, 9, h, w]``, in closed form.

    With P = diag(active) P0 (P0 bilinear: cell I covers fine pixels sigma I + t with weight h(t)),
    (R A P)[I, I + d] = sum_s sum_t h(t) h(t + s - sigma d) g_s(sigma I + t), where
    g_s(p) = active_p a_{p, p+s} active_{p+s} (13 nonzero (d, s, t) per dimension), instead of
    probing the fine operator 9 times: ``by_convolution``, one strided 3x3 convolution of the 9
    fields g_s (see _EXACT_GALERKIN_LEVELS), otherwise 169 strided multiply-adds.
    """
    if by_convolution:
        return _galerkin_by_convolution(level, size)
    height, width = level.active.shape[-2:]
    padded = F.pad(level.active, (1, 1, 1, 1))
    shifted = torch.cat([padded[..., 1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width] for dr, dc in _OFFSETS], dim=1)
    if level.stencil is None:  # level 0: a_{p, p+s} = -K_s off the centre, d_p at it
        weights = torch.tensor([-w for row in _NEIGHBOUR_WEIGHTS for w in row], dtype=shifted.dtype)
        fields = shifted.mul_(level.active).mul_(weights.to(shifted.device).view(1, 9, 1, 1))
        assert level.diagonal is not None
        fields[:, _CENTRE : _CENTRE + 1] = level.diagonal - 4.0 * level.active
    else:
        fields = shifted.mul_(level.active).mul_(level.stencil)
    fields = F.pad(fields, (1, 1, 1, 1))  # [B, 9, h + 2, w + 2]
    rows, cols = level.strides
    cells = ((height + 1) // 2 if rows == 2 else height, (width + 1) // 2 if cols == 2 else width)
    # Split a halved dimension into its even and odd positions (contiguous copies): every tap is
    # then a unit-stride slice, and the multiply-adds vectorise (strided ones cost 5x more).
    phases = {}
    for pr in (0, 1) if rows == 2 else (None,):
        by_rows = fields[..., pr::2, :] if pr is not None else fields
        for pc in (0, 1) if cols == 2 else (None,):
            phases[pr, pc] = (by_rows[..., pc::2] if pc is not None else by_rows).contiguous()

    def where(tap: int, stride: int) -> tuple[int | None, int]:
        """A tap (0..2 in the padded field) -> (its phase, the start of its slice there)."""
        return (tap % 2, tap // 2) if stride == 2 else (None, tap)

    coarse = fields.new_zeros(fields.shape[0], 9, *cells)
    for d, s, t, weight in _galerkin_terms(level.strides):
        if d < _CENTRE:  # the operator is symmetric: these are the mirrored entries, filled below
            continue
        (pr, r0), (pc, c0) = where(t // 3, rows), where(t % 3, cols)
        coarse[:, d].add_(phases[pr, pc][:, s, r0 : r0 + cells[0], c0 : c0 + cells[1]], alpha=weight)
    # (R A P)[I, I - d] = (R A P)[I - d, I]: offset 8 - k mirrors offset k, read at I - d.
    height, width = cells
    for k in range(_CENTRE + 1, 9):
        dr, dc = _OFFSETS[k]
        mirrored = coarse[:, 8 - k]
        mirrored[..., max(dr, 0) : height + min(dr, 0), max(dc, 0) : width + min(dc, 0)] = coarse[
            :, k, max(-dr, 0) : height + min(-dr, 0), max(-dc, 0) : width + min(-dc, 0)
        ]
    return _pad_to(coarse, *size)


def _galerkin_by_convolution(level: _Level, size: tuple[int, int], stencil: torch.Tensor | None = None) -> torch.Tensor:
    """_galerkin as one strided convolution of the fields g_s. On coarse levels g_s is the stencil
    itself (an inactive cell's row and column are exactly zero), or ``stencil`` if given (the same
    in float64: then so is the result); on level 0 it is active_p active_{p+s} times ROAD's weight,
    5 fields for the 9 offsets (_fine_galerkin_weights)."""
    height, width = level.active.shape[-2:]
    fields = stencil if stencil is not None else level.stencil
    if fields is None:  # level 0: a_{p, p+s} = -K_s active_p active_{p+s} off the centre, d_p at it
        active = level.active
        padded = F.pad(active, (1, 1, 1, 1))
        fields = active.new_empty(active.shape[0], 9 - _CENTRE, height, width)
        assert level.diagonal is not None
        torch.sub(level.diagonal, active, alpha=4.0, out=fields[:, :1])
        for k in range(_CENTRE + 1, 9):
            dr, dc = _OFFSETS[k]
            window = padded[..., 1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width]
            torch.mul(active, window, out=fields[:, k - _CENTRE : k - _CENTRE + 1])
        weights = _fine_galerkin_weights(level.strides, active.dtype, active.device)
        half = F.conv2d(fields, weights, stride=level.strides, padding=2)
    else:
        weights = _galerkin_weights(level.strides, fields.dtype, fields.device)
        half = F.conv2d(fields, weights, stride=level.strides, padding=1)  # [B, 5, cells]: offsets >= the centre
    height, width = half.shape[-2:]
    coarse = half.new_zeros(half.shape[0], 9, height, width)
    coarse[:, _CENTRE:] = half
    # (R A P)[I, I - d] = (R A P)[I - d, I]: offset 8 - k mirrors offset k, read at I - d.
    for k in range(_CENTRE + 1, 9):
        dr, dc = _OFFSETS[k]
        coarse[:, 8 - k, max(dr, 0) : height + min(dr, 0), max(dc, 0) : width + min(dc, 0)] = coarse[
            :, k, max(-dr, 0) : height + min(-dr, 0), max(-dc, 0) : width + min(-dc, 0)
        ]
    return _pad_to(coarse, *size)


def _dense(stencil: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """``[B, N, N]`` matrices (N = h w <= 9) of 9-point stencils; inactive cells get identity rows."""
    batch, _, height, width = stencil.shape
    n = height * width
    rows, cols, ks = [], [], []
    for r in range(height):
        for c in range(width):
            for k, (dr, dc) in enumerate(_OFFSETS):
                if 0 <= r + dr < height and 0 <= c + dc < width:
                    rows.append(r * width + c)
                    cols.append((r + dr) * width + c + dc)
                    ks.append(k)
    values = stencil.flatten(2)[:, ks, rows]  # [B, entries]
    matrix = stencil.new_zeros(batch, n, n)
    matrix[:, rows, cols] = values
    inactive = active.flatten(1) < 0.5
    matrix = torch.where(inactive[:, :, None] | inactive[:, None, :], 0.0, matrix)
    return matrix + torch.diag_embed(inactive.to(matrix.dtype))


def _next_size(height: int, width: int) -> tuple[int, int]:
    """The next level's size: halved (h cells for 2h - 1) where a side is above _COARSEST, padded to
    odd where it will be halved again."""
    h = (height + 1) // 2 if height > _COARSEST else height
    w = (width + 1) // 2 if width > _COARSEST else width
    return h + _padding(h), w + _padding(w)


def _hierarchy(unknown: torch.Tensor, inside: torch.Tensor) -> list[_Level]:
    """Levels down to at most _COARSEST x _COARSEST cells, whose Galerkin operator is inverted
    (at most a 9 x 9 matrix per mask)."""
    levels = [_fine_level(unknown, inside)]
    exact: torch.Tensor | None = None  # the last level's stencil in float64, past _EXACT_GALERKIN_LEVELS
    while max(levels[-1].active.shape[-2:]) > _COARSEST:
        size = _next_size(*levels[-1].active.shape[-2:])
        if len(levels) <= _EXACT_GALERKIN_LEVELS:
            stencil = _galerkin(levels[-1], size, by_convolution=True)
        elif len(levels) <= _EXACT_GALERKIN_LEVELS_FLOAT64 and levels[-1].stencil is not None:
            exact = _galerkin_by_convolution(
                levels[-1], size, exact if exact is not None else levels[-1].stencil.double()
            )
            stencil = exact.to(levels[-1].stencil.dtype)
        else:
            stencil = _galerkin(levels[-1], size, by_convolution=False)
        diag = stencil[:, _CENTRE : _CENTRE + 1]
        # A coarse cell that touches no removed pixel has a zero row: it takes no part.
        active = (diag > 1e-6).to(stencil.dtype)
        weight = torch.maximum(diag / _JACOBI_WEIGHT, _L1_SHARE * stencil.abs().sum(1, keepdim=True))
        smoother = active / weight.clamp_min(1e-6)
        levels.append(_Level(smoother, active, stencil, strides=_strides(*size)))
    last = levels[-1]
    stencil = last.stencil if last.stencil is not None else _fine_stencil(last)  # a photo of <= 3x3 pixels
    # The pseudo-inverse: with few removed pixels two cells' restricted hats can be parallel, and
    # the Galerkin matrix is then only semi-definite (the correction stays symmetric).
    last.inverse = torch.linalg.pinv(_dense(stencil, last.active).double(), hermitian=True).to(stencil.dtype)
    return levels


def _coarsest_solve(level: _Level, residual: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = residual.shape
    flat = residual.reshape(batch, channels, height * width)
    assert level.inverse is not None
    return (flat @ level.inverse.transpose(1, 2)).view(batch, channels, height, width) * level.active


def _v_cycle(
    levels: list[_Level], residual: torch.Tensor, depth: int = 0, out: torch.Tensor | None = None
) -> torch.Tensor:
    """One symmetric V-cycle (one damped Jacobi sweep before and after the coarse correction):
    a fixed symmetric positive definite operator, as conjugate gradients need. ``out``: a field
    to write the result into (shaped like ``residual``; conjugate gradients hand back a spent one,
    cheaper than fresh memory)."""
    level = levels[depth]
    if level.inverse is not None:
        return _coarsest_solve(level, residual)
    x = torch.mul(level.smoother, residual, out=out) if out is not None else level.smoother * residual
    below = tuple(levels[depth + 1].active.shape[-2:])
    correction = _v_cycle(levels, _restrict(level, _residual(level, residual, x), below, depth == 0), depth + 1)
    out = _scratch(level, x.shape, x) if depth == 0 else None  # the residual just restricted is spent
    x.addcmul_(_prolong_unmasked(level, correction, out), level.active)  # x += P correction
    return x.addcmul_(level.smoother, _residual(level, residual, x))


def _select(level: _Level, index: torch.Tensor) -> _Level:
    """The level for the masks at ``index`` of its batch (index_select: advanced indexing measured
    2-7x slower for these copies)."""

    def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.index_select(0, index)

    smoother, active = level.smoother.index_select(0, index), level.active.index_select(0, index)
    stencil, diagonal, inverse = pick(level.stencil), pick(level.diagonal), pick(level.inverse)
    return _Level(smoother, active, stencil, diagonal, inverse, level.strides, level.scratch)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image and channel ``[B, C, 1, 1]``, in float64 for the scalar recurrences. vecdot is 7x
    cheaper than a float64 sum of the products, accurate to ~1e-7 relative, and gives each image
    the same value whatever it is batched with (checked for batches of 1 to 16 and 1 or 2 threads)."""
    return torch.linalg.vecdot(a.flatten(2), b.flatten(2)).double()[..., None, None]


def _push_pull(known: torch.Tensor, kept: torch.Tensor, levels: list[_Level]) -> torch.Tensor:
    """A cheap first guess for the removed pixels (push-pull, Gortler et al. 1996): the kept
    pixels averaged down the hierarchy's transfers, then each removed pixel takes the average of
    the coarsest level at which it has kept pixels around. Smooth and within the kept values'
    range, it starts conjugate gradients much closer than black does. Zero on kept pixels."""
    values, weights = [known], [kept]
    for level, below in zip(levels[:-1], levels[1:]):
        size = below.active.shape[-2:]
        rows, cols = level.strides
        v, w = values[-1], weights[-1]
        for dim, stride in ((2, rows), (3, cols)):
            if stride == 2:
                v, w = _interpolate_transpose(v, dim), _interpolate_transpose(w, dim)
        values.append(_pad_to(v, *size))
        weights.append(_pad_to(w, *size))
    guess = values[-1] / weights[-1].clamp_min(1e-12)
    guess = torch.where(
        weights[-1] > 1e-6,
        guess,
        (values[-1].sum((2, 3), keepdim=True) / weights[-1].sum((2, 3), keepdim=True).clamp_min(1e-12)),
    )
    for depth in range(len(levels) - 2, 0, -1):
        up = _prolong_unmasked(levels[depth], guess)
        v, w = values[depth], weights[depth]
        share = w.clamp(max=1.0)  # share * (v / w) + (1 - share) * up, on one-channel weights
        guess = torch.addcmul(up.mul_(1.0 - share), v, share / w.clamp_min(1e-12))
    # Level 0: a removed pixel has no weight of its own, so it takes the interpolation (and a kept
    # one is not an unknown).
    return _prolong_unmasked(levels[0], guess).mul_(levels[0].active)


def _multigrid_solve(
    pixels: torch.Tensor, unknown: torch.Tensor, tolerance: float, max_iterations: int
) -> tuple[torch.Tensor, list[int], list[bool]]:
    """ROAD's imputation for masks with at least one kept pixel: conjugate gradients
    preconditioned by a multigrid V-cycle, the masks and the 3 channels at once.

    A mask stops once its preconditioned residual z, the V-cycle's estimate of the remaining
    error in pixel units, is below ``tolerance`` on every pixel; its image is then x + z, and it
    leaves the batch. Every operation is per mask (the Galerkin convolutions exact, see
    _EXACT_GALERKIN_LEVELS), so each mask gets the image it would get alone, bit for bit,
    whatever it is batched with. Returns (images, iterations per mask, whether each mask
    converged).
    """
    batch = unknown.shape[0]
    height, width = unknown.shape[-2:]
    size = (height + _padding(height), width + _padding(width))
    real = _pad_to(torch.ones_like(unknown[:1]), *size)
    unknown_p = _pad_to(unknown, *size)
    known = _pad_to((1.0 - unknown) * pixels, *size)  # [B, 3, H', W']
    levels = _hierarchy(unknown_p, _neighbour_sum(real) * real)
    rhs = _box_sum(known).mul_(unknown_p)  # sum of the kept neighbours' weighted values (a * known = 0)
    x = _push_pull(known, real - unknown_p, levels)
    solution = torch.empty_like(x)
    residual = _residual(levels[0], rhs, x, scratch=False)
    z = _v_cycle(levels, residual)
    direction = z
    rz = _dot(residual, z)
    counts = [0] * batch
    converged = [False] * batch
    live = list(range(batch))  # the masks still iterating, in the order of the batch's tensors
    spare: torch.Tensor | None = None  # the last search direction, spent: the next V-cycle's output
    for _ in range(max_iterations):
        product = _apply_level(levels[0], direction)
        curvature = _dot(direction, product)
        step = torch.where(curvature > 0, rz / curvature.clamp_min(1e-300), 0.0).to(x.dtype)
        x.addcmul_(step, direction)
        residual.addcmul_(step, product, value=-1.0)
        for i in live:
            counts[i] += 1
        z = _v_cycle(levels, residual, out=None if spare is None else spare[: len(residual)])
        flat = z.flatten(1)
        done = torch.maximum(flat.amax(1), flat.amin(1).neg_()) <= tolerance  # max |z| without a |z| copy
        if bool(done.any()):
            # A converged mask leaves the batch, and the others go on without computing it (a
            # batch otherwise runs as long as its slowest mask). Its image takes the last
            # correction z too (z = M r estimates the remaining error; adding it costs nothing
            # and cuts the error by up to 10x, so the returned image is within about ``tolerance``
            # of the exact one, not twice that).
            stopped = torch.nonzero(done).flatten()
            rows = [live[j] for j in stopped.tolist()]
            solution[rows] = x.index_select(0, stopped).add_(z.index_select(0, stopped))
            for i in rows:
                converged[i] = True
            going = torch.nonzero(~done).flatten()
            if len(going) == 0:
                break
            levels = [_select(level, going) for level in levels]
            x, residual, z, direction, rz = (t.index_select(0, going) for t in (x, residual, z, direction, rz))
            live = [live[j] for j in going.tolist()]
        rz_next = _dot(residual, z)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(1e-300), 0.0).to(x.dtype)
        direction, spare = z.addcmul_(beta, direction), direction
        rz = rz_next
    else:
        solution[live] = x  # not converged within max_iterations (road_impute falls back)
    x = solution
    out = (known + x * unknown_p)[..., :height, :width]
    return out, counts, converged


def road_impute(
    pixels: torch.Tensor,
    keep: torch.Tensor,
    tolerance: float = ROAD_TOLERANCE,
    max_iterations: int = ROAD_MAX_ITERATIONS,
    chunk: int = ROAD_CHUNK,
    iterations: list[int] | None = None,
    fallback: bool = True,
) -> torch.Tensor:
    """ROAD's linear imputation, before noise (Rong et al., ICML 2022).

    ``pixels`` ``[1, 3, H, W]``, ``keep`` ``[B, 1, H, W]`` (read as kept where >= 0.5) ->
    ``[B, 3, H, W]``: kept pixels exactly as in the photo; every removed pixel the weighted mean
    of its 8 neighbours (edge 1/6, diagonal 1/12; at the image border the weights are
    renormalised over the neighbours that exist), all removed pixels solved together.
    With no pixel kept the system has no unique solution (any constant solves it): the image is
    then the photo's mean colour. Runs on the pixels' device; ``iterations``, if given, receives
    the solver's iteration count for each mask it solved. A mask the multigrid solver has not
    converged on within ``max_iterations`` (none among the curve and stress masks of
    bench/road_cost.py) is solved by ``road_impute_direct`` unless ``fallback`` is off, so the
    answer never depends on the solver.
    """
    kept = keep >= 0.5
    unknown = (~kept).to(pixels.dtype)
    out = pixels.expand(keep.shape[0], -1, -1, -1).clone()
    n_kept = kept.flatten(1).sum(1)
    empty = n_kept == 0
    if bool(empty.any()):
        out[empty] = pixels.mean(dim=(2, 3), keepdim=True).expand(-1, -1, *pixels.shape[2:])
    to_solve = torch.nonzero((n_kept > 0) & (n_kept < kept[0].numel())).flatten()
    for start in range(0, len(to_solve), chunk):
        rows = to_solve[start : start + chunk]
        images, counts, converged = _multigrid_solve(pixels, unknown[rows], tolerance, max_iterations)
        out[rows] = images
        if iterations is not None:
            iterations.extend(counts)
        stuck = rows[~torch.tensor(converged, device=rows.device)]
        if fallback and len(stuck):
            out[stuck] = road_impute_direct(pixels, keep[stuck])
    return out


def road_impute_direct(pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The same imputation by scipy's sparse direct solver (one LU factorisation per mask, the 3
    channels solved with it), built from ROAD's weights 1/6 and 1/12 in float64: the reference
    the multigrid solver is checked against (tests, bench/road_cost.py). Slow: ~0.1-0.9 s per
    224x224 mask."""
    import numpy as np
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    photo = pixels[0].detach().cpu().double().numpy()  # [3, H, W]
    channels, height, width = photo.shape
    flat = photo.reshape(channels, -1)
    masks = (keep.detach().cpu() >= 0.5).numpy().reshape(keep.shape[0], -1)
    out = np.repeat(flat[None], len(masks), axis=0)
    for i, kept in enumerate(masks):
        removed = np.flatnonzero(~kept)
        if len(removed) == 0:
            continue
        if len(removed) == kept.size:
            out[i] = flat.mean(axis=1, keepdims=True)
            continue
        index = np.full(kept.size, -1)
        index[removed] = np.arange(len(removed))
        row, col = removed // width, removed % width
        entries, rows, cols = [], [], []
        diagonal = np.zeros(len(removed))
        rhs = np.zeros((len(removed), channels))
        for dr, dc in _OFFSETS:
            if (dr, dc) == (0, 0):
                continue
            weight = 1 / 12 if dr and dc else 1 / 6
            r, c = row + dr, col + dc
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            eq = np.flatnonzero(inside)
            neighbour = r[inside] * width + c[inside]
            diagonal[eq] += weight
            is_kept = kept[neighbour]
            rhs[eq[is_kept]] += weight * flat[:, neighbour[is_kept]].T
            rows.append(eq[~is_kept])
            cols.append(index[neighbour[~is_kept]])
            entries.append(np.full(int((~is_kept).sum()), -weight))
        n = len(removed)
        matrix = sp.csc_matrix(
            (
                np.concatenate(entries + [diagonal]),
                (np.concatenate(rows + [np.arange(n)]), np.concatenate(cols + [np.arange(n)])),
            ),
            shape=(n, n),
        )
        out[i][:, removed] = splu(matrix).solve(rhs).T
    return torch.from_numpy(out.reshape(len(masks), channels, height, width)).to(pixels.dtype).to(pixels.device)


class RoadSubstrate:
    """ROAD's noisy linear imputation (Rong et al., ICML 2022) for one photo.

    ``fill(keep)``: kept pixels exactly as in the photo; removed pixels imputed by
    ``road_impute`` (the weighted mean of their neighbours, all removed pixels solved together),
    plus Gaussian noise, clipped to [0, 1].

    Choices the paper leaves open:

    - **Borders**: a pixel's mean is taken over the neighbours inside the image, their weights
      renormalised (as the authors' code does), so the border is a free edge, not a black frame.
    - **Noise**: standard deviation ``ROAD_NOISE_STD`` = 0.01 in pixel units (~2.5 grey levels).
      The authors' code (copied into pytorch-grad-cam) adds 0.01 to the model's input tensor,
      ~0.002 in pixel units under ImageNet normalisation; we keep 0.01 in pixel units so the noise does not depend on a model's normalisation, survives 8-bit
      export (the app's images) and stays within a photo's own sensor noise. The noise is one
      fixed field per photo drawn from ``seed`` and added only where a pixel is removed, so a
      mask gives the same image whatever it is batched with (the app can recompute any curve
      image without the model), instead of fresh noise per image as in the authors' code.
    - **Everything removed** (``empty``, the curves' end point): no kept pixel fixes the
      solution, so we define it as the photo's mean colour plus the same noise, clipped.
      ``empty == fill(zeros)`` exactly. (With a single pixel kept, the imputation is that
      pixel's colour everywhere: the end point is the mean, not a limit of the curve.)

    The system is solved by multigrid-preconditioned conjugate gradients on the pixels' device
    (``solver="multigrid"``, within 1e-4 of the exact solution on bench/road_cost.py's masks, 1e-3
    asserted by the tests), or by scipy's direct solver
    (``solver="direct"``, the reference; slow). ``iterations`` lists the solver's iteration
    count for each mask solved so far (for bench/road_cost.py).
    """

    kind = "road"

    def __init__(
        self, pixels: torch.Tensor, seed: int = 0, noise_std: float = ROAD_NOISE_STD, solver: str = "multigrid"
    ) -> None:
        if solver not in ("multigrid", "direct"):
            raise ValueError(f"unknown ROAD solver {solver!r}; use 'multigrid' or 'direct'")
        self.pixels = pixels.detach()
        self.seed, self.noise_std, self.solver = seed, noise_std, solver
        generator = torch.Generator().manual_seed(seed)  # on the CPU: the same field on any device
        noise = torch.randn(self.pixels.shape, generator=generator, dtype=torch.float32) * noise_std
        self.noise = noise.to(device=self.pixels.device, dtype=self.pixels.dtype)
        self.iterations: list[int] = []
        self.empty = self.fill(torch.zeros_like(self.pixels[:, :1]))

    def impute(self, keep: torch.Tensor) -> torch.Tensor:
        """The imputation before noise: ``[B, 1, H, W]`` keep masks -> ``[B, 3, H, W]``."""
        keep = keep.to(self.pixels.device)
        if self.solver == "direct":
            return road_impute_direct(self.pixels, keep)
        return road_impute(self.pixels, keep, iterations=self.iterations)

    def fill(self, keep: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` keep masks (1 keeps the photo's pixel, 0 removes it) -> ``[B, 3, H, W]``."""
        keep = keep.to(self.pixels.device)
        kept = keep >= 0.5
        noisy = (self.impute(keep) + self.noise).clamp(0.0, 1.0)
        return torch.where(kept, self.pixels, noisy)


def make_substrate(pixels: torch.Tensor, kind: str = "black", seed: int = 0) -> Substrate:
    """The substrate ``kind`` for the ``[1, 3, H, W]`` photo ``pixels``. ``seed`` is for noisy substrates (road)."""
    if kind not in SUBSTRATES:
        raise ValueError(f"unknown substrate {kind!r}; use one of {SUBSTRATES}")
    pixels = pixels.detach()
    if kind == "road":
        return RoadSubstrate(pixels, seed)
    return FixedSubstrate(kind, pixels, substrate_image(pixels, kind))
