"""The ROAD substrate: noisy linear imputation (Rong et al., ICML 2022), checked against its
definition, against scipy's exact direct solve, and inside the curves' protocol."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from explainers import metrics, substrates
from explainers.models.base import ModelAdapter
from explainers.substrates import (
    BASELINES,
    ROAD_NOISE_STD,
    SUBSTRATES,
    RoadSubstrate,
    make_substrate,
    road_impute,
    road_impute_direct,
)
from explainers.types import Target

# The multigrid solver against the exact direct solve, in pixel units: a quarter of an 8-bit
# grey level, and a tenth of ROAD's noise.
AGREEMENT = 1e-3
EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)  # the imputation couples diagonal neighbours too


def photo(height, width, low=0.0, high=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(1, 3, height, width, generator=generator)


def keep_masks(height, width, seed=0):
    """Named ``[1, 1, H, W]`` keep masks (1 = kept): the shapes the curves and region search make,
    holes touching the image border, and the hardest cases for a solver (one kept pixel)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - 0.4 * height) ** 2 + (xx - 0.6 * width) ** 2 < (0.25 * min(height, width)) ** 2
    masks = {
        "random 10% kept": rng.random((height, width)) < 0.1,
        "random 50% kept": rng.random((height, width)) < 0.5,
        "random 90% kept": rng.random((height, width)) < 0.9,
        "disc kept (insertion)": disc,
        "disc removed (deletion)": ~disc,
        "left band removed (touches 3 borders)": xx >= width // 3,
        "one corner pixel kept": (yy == 0) & (xx == 0),
        "all but one pixel kept": ~((yy == height // 2) & (xx == width // 3)),
    }
    return {name: torch.from_numpy(m).float().view(1, 1, height, width) for name, m in masks.items()}


def test_road_is_a_curve_substrate_but_not_an_ig_baseline():
    assert "road" in SUBSTRATES and "road" not in BASELINES  # IG's baseline cannot depend on a mask
    substrate = make_substrate(photo(12, 10), "road", seed=0)
    assert isinstance(substrate, RoadSubstrate) and substrate.kind == "road"
    with pytest.raises(ValueError):
        RoadSubstrate(photo(12, 10), solver="nope")


def test_kept_pixels_are_unchanged_exactly_and_values_stay_in_range():
    pixels = photo(24, 21)
    substrate = RoadSubstrate(pixels, seed=1)
    keep = torch.cat(list(keep_masks(24, 21).values()))
    images = substrate.fill(keep)
    kept = keep.expand_as(images) > 0.5
    assert torch.equal(images[kept], pixels.expand_as(images)[kept])
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    # removed pixels were imputed (noise makes an exact coincidence with the photo impossible)
    assert bool((images[~kept] != pixels.expand_as(images)[~kept]).all())


@pytest.mark.parametrize("solver", ["direct", "multigrid"])
def test_maximum_principle(solver):
    """Before noise, each removed pixel is a weighted mean of its neighbours, so:
    (a) it lies within the min/max of its 8 neighbours in the imputed image, and
    (b) every pixel of an 8-connected hole lies within the min/max of the kept pixels that
        border that hole (per channel).
    The photo is in [0.5, 1] and holes touch the border: treating missing border neighbours as
    black instead of renormalising the weights would pull border pixels below 0.5."""
    height, width = 40, 37
    pixels = photo(height, width, low=0.5, high=1.0, seed=2)
    slack = 1e-9 if solver == "direct" else AGREEMENT
    substrate = RoadSubstrate(pixels, noise_std=0.0, solver=solver)
    for name, keep in keep_masks(height, width, seed=3).items():
        imputed = substrate.impute(keep)[0].double().numpy()  # [3, H, W]
        kept = keep[0, 0].numpy() > 0.5
        removed = ~kept
        padded = np.pad(imputed, ((0, 0), (1, 1), (1, 1)), mode="edge")  # edge copies add no new extreme
        shifts = [
            padded[:, 1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width]
            for dr in (-1, 0, 1)
            for dc in (-1, 0, 1)
            if (dr, dc) != (0, 0)
        ]
        low, high = np.min(shifts, axis=0), np.max(shifts, axis=0)
        assert np.all(imputed[:, removed] >= low[:, removed] - slack), name
        assert np.all(imputed[:, removed] <= high[:, removed] + slack), name
        labels, count = ndimage.label(removed, structure=EIGHT_NEIGHBOURS)
        photo_np = pixels[0].double().numpy()
        for hole in range(1, count + 1):
            inside = labels == hole
            border = ndimage.binary_dilation(inside, structure=EIGHT_NEIGHBOURS) & kept
            for c in range(3):
                values = imputed[c][inside]
                assert values.min() >= photo_np[c][border].min() - slack, name
                assert values.max() <= photo_np[c][border].max() + slack, name


def test_multigrid_matches_the_direct_solve():
    """The fast solver alone (no fallback) against scipy's exact sparse LU, on odd and even sizes,
    a tiny photo, scattered single removed pixels (1 % of 96x96: before the l1 term in the
    smoother, damped Jacobi diverged on such coarse levels and CG stalled at 50 iterations), and
    at 224x224 the cases that are hardest for it (a large hole fixed by a few kept pixels)."""
    # 1 % of 96x96 removed at random: seeds 0 and 1 made the Jacobi-only smoother stall
    salt = torch.cat(
        [torch.from_numpy(np.random.default_rng(seed).random((1, 1, 96, 96)) >= 0.01).float() for seed in (0, 1)]
    )
    cases = [
        (photo(40, 37, seed=4), torch.cat(list(keep_masks(40, 37, seed=5).values()))),
        (photo(6, 5, seed=6), torch.cat(list(keep_masks(6, 5, seed=7).values()))),
        (photo(96, 96, seed=12), salt),
    ]
    big = keep_masks(224, 224, seed=8)
    cases.append(
        (
            photo(224, 224, seed=9),
            torch.cat([big["one corner pixel kept"], big["random 10% kept"], big["disc kept (insertion)"]]),
        )
    )
    yy, xx = np.mgrid[:224, :224]
    small_disc = (yy - 150) ** 2 + (xx - 60) ** 2 < 15**2  # 2 % of the pixels: an early insertion step
    cases.append((photo(224, 224, seed=10), torch.from_numpy(small_disc).float().view(1, 1, 224, 224)))
    for pixels, keep in cases:
        iterations = []
        fast = road_impute(pixels, keep, iterations=iterations, fallback=False)
        exact = road_impute_direct(pixels, keep)
        error = (fast - exact).abs().amax(dim=(1, 2, 3))
        assert float(error.max()) < AGREEMENT, (pixels.shape, error.tolist(), iterations)
        assert max(iterations) < 20  # multigrid: a few iterations whatever the hole's size


def test_a_mask_the_solver_does_not_converge_on_falls_back_to_the_direct_solve():
    pixels = photo(40, 37, seed=17)
    keep = keep_masks(40, 37, seed=18)["disc kept (insertion)"]
    iterations = []
    rescued = road_impute(pixels, keep, max_iterations=1, iterations=iterations)
    assert iterations == [1]
    torch.testing.assert_close(rescued, road_impute_direct(pixels, keep), rtol=0, atol=1e-6)
    unconverged = road_impute(pixels, keep, max_iterations=1, fallback=False)
    assert float((unconverged - rescued).abs().max()) > AGREEMENT


def test_deterministic_under_a_seed_and_independent_of_batching():
    pixels = photo(24, 21, seed=11)
    keep = torch.cat(list(keep_masks(24, 21, seed=12).values()))
    a, b = RoadSubstrate(pixels, seed=3), RoadSubstrate(pixels, seed=3)
    together = a.fill(keep)
    assert torch.equal(together, b.fill(keep))
    # each mask gives the same image alone as in a batch (the app rebuilds curve images one by one)
    alone = torch.cat([a.fill(keep[i : i + 1]) for i in range(len(keep))])
    assert torch.equal(together, alone)
    other = RoadSubstrate(pixels, seed=4).fill(keep)
    removed = keep.expand_as(together) < 0.5
    assert torch.equal(other[~removed], together[~removed])
    assert bool((other[removed] != together[removed]).all())


def test_the_galerkin_convolution_equals_the_term_by_term_sums_exactly():
    """The coarse operators come from a convolution whose summation order oneDNN picks (by batch
    size, threads); their sums are exact (float32 for the first levels, float64 below), so the
    first ones equal the fixed-order sums bit for bit and every level is the same for a mask alone
    as in a batch: a mask's image cannot depend on what it is batched with."""
    keep = torch.cat([m for name, m in keep_masks(96, 96, seed=21).items() if "pixel" not in name])
    unknown = substrates._pad_to(1.0 - keep, 97, 97)
    real = substrates._pad_to(torch.ones_like(keep[:1]), 97, 97)
    inside = substrates._neighbour_sum(real) * real
    levels = substrates._hierarchy(unknown, inside)
    assert len(levels) > substrates._EXACT_GALERKIN_LEVELS + 1  # float64 levels too
    for depth in range(substrates._EXACT_GALERKIN_LEVELS):
        size = tuple(levels[depth + 1].active.shape[-2:])
        by_terms = substrates._galerkin(levels[depth], size, by_convolution=False)
        assert torch.equal(levels[depth + 1].stencil, by_terms), depth
    for i in (0, 2):
        alone = substrates._hierarchy(unknown[i : i + 1], inside)
        for depth, (level, batched) in enumerate(zip(alone[1:], levels[1:])):
            assert torch.equal(level.stencil, batched.stencil[i : i + 1]), (i, depth)
        assert torch.equal(alone[-1].inverse, levels[-1].inverse[i : i + 1])


def test_noise_is_gaussian_with_the_stated_deviation_on_removed_pixels_only():
    pixels = photo(64, 64, low=0.3, high=0.7, seed=13)  # far from 0 and 1: no clipping
    substrate = RoadSubstrate(pixels, seed=0)
    keep = keep_masks(64, 64, seed=14)["random 50% kept"]
    noise = substrate.fill(keep) - substrate.impute(keep)
    removed = keep.expand_as(noise) < 0.5
    assert torch.equal(noise[~removed], torch.zeros_like(noise[~removed]))
    assert float(noise[removed].std()) == pytest.approx(ROAD_NOISE_STD, rel=0.05)
    assert abs(float(noise[removed].mean())) < 0.1 * ROAD_NOISE_STD


def test_removing_everything_gives_the_mean_colour_and_empty_is_fill_of_zeros():
    pixels = photo(20, 17, seed=15)
    substrate = make_substrate(pixels, "road", seed=2)
    assert torch.equal(substrate.empty, substrate.fill(torch.zeros(1, 1, 20, 17)))
    noiseless = RoadSubstrate(pixels, noise_std=0.0)
    mean = pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels)
    torch.testing.assert_close(noiseless.empty, mean)
    torch.testing.assert_close(road_impute_direct(pixels, torch.zeros(1, 1, 20, 17)), mean)


class Recorder(ModelAdapter):
    """Scores every image 0 and keeps it, so a test can count what the curves removed."""

    name = "recorder"
    input_size = (30, 30)
    max_batch = 7

    def __init__(self):
        self.images = []

    def prompt_scores(self, pixels, prompts):
        self.images.append(pixels.clone())
        return torch.zeros(pixels.shape[0], len(prompts))


def test_tied_map_deletes_exactly_round_f_n_pixels_under_road():
    """A map that is zero on 90 % of the pixels: deletion at fraction f removes exactly
    round(f * N) pixels, because the protocol ranks pixels with a stable sort (ties: lower flat
    index first) and takes the top count. Percentile thresholding, as pytorch-grad-cam's ROAD
    metrics do (``threshold = np.percentile(cam, p)``; keep ``cam < threshold``), cannot split
    a tie: once f passes 10 %, the top fraction reaches into the zeros, the threshold is 0 and it
    removes all N pixels."""
    height = width = 30
    n = height * width
    rng = np.random.default_rng(0)
    saliency = np.zeros(n)
    saliency[rng.choice(n, n // 10, replace=False)] = rng.random(n // 10) + 0.1
    saliency = saliency.reshape(height, width)
    pixels = photo(height, width, low=0.25, high=0.75, seed=16)  # no clipping: imputed pixels differ
    steps = 10
    recorder = Recorder()
    metrics.curves_for_orders(
        recorder, pixels, Target("x"), [metrics.pixel_order(saliency)], steps=steps, substrate="road", seed=0
    )
    images = torch.cat(recorder.images)[2:]  # after the two end points: deletion steps 1..9, then insertion
    for k in range(1, steps):
        changed = int((images[k - 1] != pixels[0]).any(dim=0).sum())
        assert changed == round(k / steps * n), k
        # the contrast: pytorch-grad-cam's percentile rule for "remove the top k/steps"
        threshold = np.percentile(saliency, 100 * (1 - k / steps))
        removed_by_percentile = int((~(saliency < threshold)).sum())
        if k / steps > 0.1:
            assert removed_by_percentile == n


@pytest.mark.parametrize("height, width", [(8, 8), (12, 30), (21, 21)])
def test_blur_works_on_images_smaller_than_its_kernel_and_keeps_a_constant_image(height, width):
    """The blur kernel (4 sigma = 41 px) shrinks to fit small images (reflect padding needs less
    than the side): a constant image stays constant, a varied one gets flatter."""
    constant = torch.full((1, 3, height, width), 0.25)
    torch.testing.assert_close(make_substrate(constant, "blur").empty, constant)
    varied = photo(height, width)
    blurred = make_substrate(varied, "blur").empty
    assert blurred.shape == varied.shape and blurred.std() < varied.std()


@pytest.mark.parametrize("shape", [(1, 3, 224, 224), (2, 3, 40, 37), (1, 3, 3, 5)])
def test_the_opencv_blur_is_torchvisions_gaussian(shape):
    """The blur substrate runs on OpenCV on the CPU; it must be torchvision's Gaussian (the same
    kernel, shrunk for small images, and reflect-101 border), as on other devices."""
    import torchvision.transforms.functional as TF

    from explainers.substrates import BLUR_SIGMA, substrate_image

    pixels = photo(*shape[-2:], seed=21).expand(shape[0], -1, -1, -1).contiguous()
    kernel = min(int(4 * BLUR_SIGMA) | 1, 2 * min(shape[-2:]) - 1)
    expected = TF.gaussian_blur(pixels, [kernel, kernel], [BLUR_SIGMA, BLUR_SIGMA])
    torch.testing.assert_close(substrate_image(pixels, "blur"), expected, rtol=0, atol=1e-5)


def test_the_neighbour_sum_is_the_same_on_opencv_and_torch():
    from explainers import substrates

    field = torch.rand(3, 2, 17, 16, generator=torch.Generator().manual_seed(22))
    on_opencv = substrates._box_sum(field)
    on_torch = substrates._box_sum(field.double()).float()  # float64 takes the torch path
    torch.testing.assert_close(on_opencv, on_torch, rtol=0, atol=1e-5)
    assert float(on_torch.abs().max()) > 1.0
    # negated (the operator product's), into a given field: exactly minus the plain sum on both paths
    out = torch.empty_like(field)
    assert torch.equal(substrates._box_sum(field, out, negate=True), -on_opencv)
    assert torch.equal(substrates._box_sum(field.double(), negate=True).float(), -on_torch)


def test_the_solver_is_the_same_on_the_torch_path():
    """float64 pixels take the shifted-slice neighbour sums instead of OpenCV's (as CUDA does)."""
    pixels = photo(40, 37, seed=23)
    keep = torch.cat(list(keep_masks(40, 37, seed=24).values()))
    on_opencv = road_impute(pixels, keep, fallback=False)
    on_torch = road_impute(pixels.double(), keep.double(), fallback=False).float()
    assert float((on_opencv - on_torch).abs().max()) < AGREEMENT
