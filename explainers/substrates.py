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

from dataclasses import dataclass
from typing import Protocol

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
# below this (pixel units). Measured against scipy's direct solve on curve masks the error is then
# at most 3e-4; tests/test_substrates.py asserts < 1e-3, a quarter of one 8-bit grey level.
ROAD_TOLERANCE = 1e-4
ROAD_MAX_ITERATIONS = 50
# Masks solved together. bench/road_cost.py: per image, batches of 2 to 16 cost about the same on
# the 2-core CPU (64-77 ms CPU each under load), 1 and 32 more; 8 is what the curves hand over
# at once (the bundled model's batch), and memory grows with the batch (~10 MB per 224x224 mask).
ROAD_CHUNK = 8


def substrate_image(pixels: torch.Tensor, kind: str = "black") -> torch.Tensor:
    """The image with every pixel removed for a mask-free substrate: black, or a strong Gaussian blur."""
    if kind == "black":
        return torch.zeros_like(pixels)
    if kind == "blur":
        # reflect padding needs half the kernel below the image's side: small images get a smaller kernel
        kernel = min(int(4 * BLUR_SIGMA) | 1, 2 * min(pixels.shape[-2:]) - 1)
        return TF.gaussian_blur(pixels, [kernel, kernel], [BLUR_SIGMA, BLUR_SIGMA])
    raise ValueError(f"unknown substrate {kind!r}; use one of {BASELINES}")


class Substrate(Protocol):
    """A photo with a rule for removed pixels."""

    kind: str
    pixels: torch.Tensor  # [1, 3, H, W], the photo
    empty: torch.Tensor  # [1, 3, H, W], every pixel removed

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
        return self.empty + keep * (self.pixels - self.empty)


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


def _neighbour_sum(u: torch.Tensor) -> torch.Tensor:
    """sum_q w_q u_q over the 8 neighbours inside the image (weights x12), for ``[B, C, h, w]``.

    K = [1 2 1]^T [1 2 1] - 4 (the centre): two 3-tap passes instead of 8 shifted products, and
    elementwise, so each image's result does not depend on what it is batched with (a
    convolution backend may pick another summation order for another batch size).
    """
    padded = F.pad(u, (0, 0, 1, 1))
    rows = torch.add(padded[..., :-2, :], padded[..., 2:, :]).add_(u, alpha=2.0)
    padded = F.pad(rows, (1, 1, 0, 0))
    return torch.add(padded[..., :-2], padded[..., 2:]).add_(rows, alpha=2.0).sub_(u, alpha=4.0)


def _apply(stencil: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A 9-point operator with per-pixel coefficients ``[B, 9, h, w]`` applied to ``[B, C, h, w]``."""
    height, width = u.shape[-2:]
    padded = F.pad(u, (1, 1, 1, 1))
    out = stencil[:, _CENTRE : _CENTRE + 1] * u
    for k, (dr, dc) in enumerate(_OFFSETS):
        if k != _CENTRE:
            out.addcmul_(stencil[:, k : k + 1], padded[..., 1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width])
    return out


@dataclass
class _Level:
    """One level of the multigrid hierarchy. Level 0 is ROAD's operator itself, applied through
    its constant kernel (``centre``); coarser levels carry Galerkin stencils."""

    smoother: torch.Tensor  # [B, 1, h, w]: 1 / m (see _JACOBI_WEIGHT); on the 1x1 level 1 / a_JJ, exact
    active: torch.Tensor  # [B, 1, h, w] float: 1 where a removed pixel is (kept pixels, cells of kept ones: 0)
    stencil: torch.Tensor | None = None  # coarse levels: [B, 9, h, w] coefficients
    centre: torch.Tensor | None = None  # level 0: [B, 1, h, w] = removed * (weight of the neighbours inside)


def _fine_level(unknown: torch.Tensor) -> _Level:
    """ROAD's operator on the removed pixels (``unknown`` ``[B, 1, H, W]``, 1 = removed).

    Rows and columns of kept pixels are zero (kept neighbours go to the right-hand side), so it
    acts on fields that vanish on kept pixels: A u = d u - unknown * (K * u), K the neighbour
    weights and d their sum over the neighbours inside the image: at the image border the mean
    is renormalised over the neighbours that exist.
    """
    inside = _neighbour_sum(torch.ones_like(unknown[:1]))  # 12 inside, 8 on an edge, 5 in a corner
    # sum_K |a_JK| <= 2 d here, so m = d / 0.8 (0.6 * 2 d is less): plain damped Jacobi.
    return _Level(unknown * (_JACOBI_WEIGHT / inside), unknown, centre=unknown * inside)


def _apply_level(level: _Level, u: torch.Tensor) -> torch.Tensor:
    """The level's operator applied to ``[B, C, h, w]`` (which vanishes where the level is inactive)."""
    if level.stencil is not None:
        return _apply(level.stencil, u)
    return torch.addcmul(level.centre * u, level.active, _neighbour_sum(u), value=-1.0)


def _along(tensor: torch.Tensor, dim: int, start: int, stop: int, step: int = 1) -> torch.Tensor:
    """A view of ``tensor[..., start:stop:step, ...]`` on ``dim``."""
    return tensor[(slice(None),) * dim + (slice(start, stop, step),)]


def _interpolate(coarse: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Linear interpolation along ``dim`` from h = ceil(size / 2) cells to ``size``: cell i sits on
    fine pixel 2i; with an even ``size`` the last fine pixel copies the last cell (a constant stays
    constant up to the image border, which is a free edge)."""
    h = coarse.shape[dim]
    shape = list(coarse.shape)
    shape[dim] = size
    fine = coarse.new_empty(shape)
    _along(fine, dim, 0, 2 * h - 1, 2).copy_(coarse)
    odd = _along(fine, dim, 1, 2 * h - 2, 2)
    torch.add(_along(coarse, dim, 0, h - 1), _along(coarse, dim, 1, h), out=odd)
    odd.mul_(0.5)
    if size == 2 * h:
        _along(fine, dim, size - 1, size).copy_(_along(coarse, dim, h - 1, h))
    return fine


def _interpolate_transpose(fine: torch.Tensor, dim: int) -> torch.Tensor:
    """The exact transpose of ``_interpolate`` along ``dim``."""
    size = fine.shape[dim]
    h = (size + 1) // 2
    coarse = _along(fine, dim, 0, 2 * h - 1, 2).clone()
    odd = _along(fine, dim, 1, 2 * h - 2, 2)
    _along(coarse, dim, 0, h - 1).add_(odd, alpha=0.5)
    _along(coarse, dim, 1, h).add_(odd, alpha=0.5)
    if size == 2 * h:
        _along(coarse, dim, h - 1, h).add_(_along(fine, dim, size - 1, size))
    return coarse


def _prolong(level: _Level, coarse: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation ``[B, C, h, w] -> [B, C, H, W]``, zero where ``level`` is inactive."""
    height, width = level.active.shape[-2:]
    return _interpolate(_interpolate(coarse, height, 2), width, 3) * level.active


def _restrict(level: _Level, fine: torch.Tensor) -> torch.Tensor:
    """The transpose of ``_prolong`` (so the V-cycle is symmetric, as conjugate gradients need)."""
    return _interpolate_transpose(_interpolate_transpose(fine * level.active, 3), 2)


def _colour_offsets(height: int, width: int, device) -> torch.Tensor:
    """For 9 colours (row mod 3, col mod 3) and each cell, the stencil index of that colour's
    neighbour: probing a 9-point operator with the 9 colour indicators reads every coefficient."""
    rows = torch.arange(height, device=device).view(-1, 1)
    cols = torch.arange(width, device=device).view(1, -1)
    out = []
    for a in range(3):
        for b in range(3):
            dr = (a - rows) % 3
            dc = (b - cols) % 3
            dr, dc = torch.where(dr == 2, -1, dr), torch.where(dc == 2, -1, dc)
            out.append(((dr + 1) * 3 + (dc + 1)).expand(height, width))
    return torch.stack(out)  # [9, h, w]


def _galerkin(level: _Level, height: int, width: int) -> torch.Tensor:
    """The coarse operator R A P, read off by probing: with bilinear transfers a 9-point fine
    operator gives a 9-point coarse one, so 9 probes (one per colour) recover it exactly."""
    batch = level.active.shape[0]
    rows = torch.arange(height, device=level.active.device).view(-1, 1)
    cols = torch.arange(width, device=level.active.device).view(1, -1)
    probes = torch.stack([((rows % 3 == a) & (cols % 3 == b)) for a in range(3) for b in range(3)])
    probes = probes.to(level.active.dtype).unsqueeze(0)  # [1, 9, h, w]
    up = _prolong(level, probes)  # [B, 9, H, W]: level.active carries the batch
    values = _restrict(level, _apply_level(level, up))  # [B, 9, h, w]
    index = _colour_offsets(height, width, values.device).unsqueeze(0).expand(batch, 9, height, width)
    return torch.zeros_like(values).scatter_(1, index, values)


def _hierarchy(unknown: torch.Tensor) -> list[_Level]:
    """Levels down to a single cell, where the Galerkin operator is one number per image and
    the V-cycle's coarsest solve is exact (no dense factorisation, whose LAPACK calls cost more
    than the whole solve on small batched matrices)."""
    levels = [_fine_level(unknown)]
    while max(levels[-1].active.shape[-2:]) > 1:
        height, width = levels[-1].active.shape[-2:]
        stencil = _galerkin(levels[-1], (height + 1) // 2, (width + 1) // 2)
        diag = stencil[:, _CENTRE : _CENTRE + 1]
        # A coarse cell that touches no removed pixel has a zero row: it takes no part.
        active = diag > 1e-6
        if min(stencil.shape[-2:]) == 1 and max(stencil.shape[-2:]) == 1:
            weight = diag  # the coarsest cell: solved exactly
        else:
            weight = torch.maximum(diag / _JACOBI_WEIGHT, _L1_SHARE * stencil.abs().sum(1, keepdim=True))
        smoother = torch.where(active, 1.0 / weight.clamp_min(1e-6), torch.zeros_like(diag))
        levels.append(_Level(smoother, active.to(stencil.dtype), stencil))
    return levels


def _v_cycle(levels: list[_Level], residual: torch.Tensor, depth: int = 0) -> torch.Tensor:
    """One symmetric V-cycle (one damped Jacobi sweep before and after the coarse correction):
    a fixed symmetric positive definite operator, as conjugate gradients need."""
    level = levels[depth]
    if depth == len(levels) - 1:  # a single cell: its operator is its diagonal
        return level.smoother * residual
    x = level.smoother * residual
    x = x + _prolong(level, _v_cycle(levels, _restrict(level, residual - _apply_level(level, x)), depth + 1))
    return x + level.smoother * (residual - _apply_level(level, x))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image and channel, accumulated in float64: the summation order (which may depend on
    the batch size) then moves the result far below float32's resolution."""
    return (a * b).sum((2, 3), keepdim=True, dtype=torch.float64)


def _multigrid_solve(
    pixels: torch.Tensor, unknown: torch.Tensor, tolerance: float, max_iterations: int
) -> tuple[torch.Tensor, list[int], list[bool]]:
    """ROAD's imputation for masks with at least one kept pixel: conjugate gradients
    preconditioned by a multigrid V-cycle, the masks and the 3 channels at once.

    A mask stops (its iterate frozen) once its preconditioned residual, the V-cycle's estimate
    of the remaining error in pixel units, is below ``tolerance`` on every pixel: each mask gets
    the image it would get alone, whatever it is batched with. Returns (images, iterations
    per mask, whether each mask converged).
    """
    batch = unknown.shape[0]
    levels = _hierarchy(unknown)
    known = (1.0 - unknown) * pixels  # [B, 3, H, W]
    rhs = _neighbour_sum(known) * unknown
    x = torch.zeros_like(rhs)
    residual = rhs
    z = _v_cycle(levels, residual)
    direction = z
    rz = _dot(residual, z)
    running = torch.ones(batch, 1, 1, 1, dtype=torch.bool, device=x.device)
    counts = torch.zeros(batch, dtype=torch.long, device=x.device)
    for _ in range(max_iterations):
        product = _apply_level(levels[0], direction)
        curvature = _dot(direction, product)
        step = torch.where(running & (curvature > 0), rz / curvature.clamp_min(1e-300), 0.0).to(x.dtype)
        x = x + step * direction
        residual = residual - step * product
        counts += running.view(-1)
        z = _v_cycle(levels, residual)
        running = running & (z.abs().amax(dim=(1, 2, 3), keepdim=True) > tolerance)
        if not bool(running.any()):
            break
        rz_next = _dot(residual, z)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(1e-300), 0.0).to(x.dtype)
        direction = z + beta * direction
        rz = rz_next
    return known + x * unknown, counts.tolist(), (~running).view(-1).tolist()


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
    (``solver="multigrid"``, within 1e-3 of the exact solution), or by scipy's direct solver
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
