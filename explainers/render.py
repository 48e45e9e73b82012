"""Result -> pictures and files: overlays, curve plots, the scrubber's and the step-through's
pictures, CSV and the export bundle (and back: ``load_bundle``).

Takes only ``Result`` values (numpy), so the app and the CLI render the same way. Nothing here
calls a model: the scrubber's and the step-through's pictures are rebuilt from the maps
(``metrics.curve_images``, the substrate's ``fill``), never scored. Nothing here reads the method
registry either: what a map's picture needs travels with the map (``SaliencyMap.regions``,
``title``, ``colour``) and the caller says what the registry decides (``smooth``, which map the
step-through replays).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .types import (
    RANDOM_TITLE,
    Curve,
    Curves,
    MethodResult,
    RandomReference,
    Result,
    SaliencyMap,
    SanityCheck,
    SanityStage,
    SavedTarget,
    ScoreMeaning,
    Target,
    clipped_auc,
)

RANDOM_COLOUR = "#7f7f7f"
DEFAULT_COLOUR = "#000000"  # a map whose colour was never set (made without run_method)
# Perceptually uniform first (equal steps in value look equal; they read in black and white);
# jet and turbo for comparison with older papers.
COLOUR_MAPS = ("inferno", "viridis", "magma", "cividis", "turbo", "jet")
DEFAULT_COLOUR_MAP = "inferno"
# How a smoothable map (the registry says which: integrated gradients) is drawn: as computed, or
# smoothed as most papers show it.
IG_DISPLAYS = {"raw": "as computed", "smoothed": "smoothed (blur + 99th-percentile clip)"}
SMOOTH_SIGMA = 0.015  # of the picture's longer side: the Gaussian blur of the "smoothed" display
CLIP_PERCENTILE = 99  # display: values above this percentile of the positive part share the top colour
OUTLINED_REGIONS = 5  # region search: the first regions chosen are outlined and numbered


def colour(result: Result, name: str) -> str:
    """The line colour of a method of ``result`` (or of "random", the reference)."""
    if name == "random":
        return RANDOM_COLOUR
    saliency = result.methods[name].saliency if name in result.methods else None
    return (saliency.colour if saliency is not None else "") or DEFAULT_COLOUR


def title(result: Result, name: str) -> str:
    """What a method of ``result`` (or "random", the reference) is called in plots and tables."""
    if name == "random":
        return RANDOM_TITLE
    saliency = result.methods[name].saliency if name in result.methods else None
    return (saliency.title if saliency is not None else "") or name


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def display_values(saliency: np.ndarray, smooth: float = 0.0) -> np.ndarray:
    """A map -> [0, 1] for display: the positive part scaled by its 99th percentile. ``smooth``
    (a fraction of the longer side) blurs it first with a Gaussian."""
    values = np.nan_to_num(np.asarray(saliency, dtype=np.float64))
    if smooth > 0:
        from scipy.ndimage import gaussian_filter

        values = gaussian_filter(values, sigma=smooth * max(values.shape))
    positive = np.clip(values, 0, None)
    scale = np.percentile(positive, CLIP_PERCENTILE) if positive.any() else 0.0
    if scale <= 0:
        scale = positive.max() if positive.max() > 0 else 1.0
    return np.clip(positive / scale, 0, 1)


def _heat(values: np.ndarray, cmap: str) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[cmap](values)[..., :3] * 255).astype(np.uint8)


def overlay(
    image: np.ndarray,
    saliency: np.ndarray,
    cmap: str = DEFAULT_COLOUR_MAP,
    alpha: float = 0.5,
    size: tuple[int, int] | None = None,
    smooth: float = 0.0,
) -> Image.Image:
    """Heat map over the image. ``size`` (width, height) upsamples both, e.g. to the original photo."""
    heat_image = Image.fromarray(_heat(display_values(saliency, smooth), cmap))
    base = Image.fromarray(image)
    size = cast(tuple[int, int], tuple(size)) if size is not None else base.size  # a list works too
    if base.size != size:
        base = base.resize(size, Image.Resampling.BICUBIC)
    if heat_image.size != size:
        heat_image = heat_image.resize(size, Image.Resampling.BILINEAR)
    return Image.blend(base, heat_image, float(alpha))


def region_ranking(values: np.ndarray, labels: np.ndarray) -> list[int]:
    """The regions, brightest first: ranked by the map's mean value in each (ties: lower label
    first). A map painted by rank (region search's) gives back its order."""
    n = int(labels.max()) + 1
    flat = labels.ravel()
    sums = np.bincount(flat, weights=np.nan_to_num(np.asarray(values, dtype=np.float64)).ravel(), minlength=n)
    means = sums / np.maximum(np.bincount(flat, minlength=n), 1)
    return [int(r) for r in np.argsort(-means, kind="stable")]


def region_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    order: Sequence[int],
    cmap: str = DEFAULT_COLOUR_MAP,
    alpha: float = 0.5,
    size: tuple[int, int] | None = None,
    outlined: int = OUTLINED_REGIONS,
) -> Image.Image:
    """Region search's map, readable: each region in its rank's colour (first chosen brightest),
    the first ``outlined`` regions outlined in white and numbered 1, 2, ... at their inmost point."""
    from scipy.ndimage import binary_erosion, distance_transform_edt

    n = int(labels.max()) + 1
    rank_value = np.zeros(n)
    rank_value[list(order)] = 1.0 - np.arange(len(order)) / max(n, 1)
    size = size or (image.shape[1], image.shape[0])
    big_labels = np.asarray(Image.fromarray(labels.astype(np.int32)).resize(size, Image.Resampling.NEAREST))
    base = (
        Image.fromarray(image).resize(size, Image.Resampling.BICUBIC)
        if size != image.shape[1::-1]
        else Image.fromarray(image)
    )
    heat = Image.fromarray(_heat(rank_value[big_labels], cmap))
    picture = np.asarray(Image.blend(base, heat, float(alpha))).copy()
    width = max(2, round(max(size) / 200))
    places = []
    for rank, region in enumerate(list(order)[:outlined]):
        mask = big_labels == region
        if not mask.any():
            continue
        edge = mask & ~binary_erosion(mask, iterations=width)
        picture[edge] = (255, 255, 255)
        inside = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        y, x = map(int, np.unravel_index(int(np.argmax(inside)), inside.shape))
        places.append((rank + 1, x, y))
    out = Image.fromarray(picture)
    draw = ImageDraw.Draw(out)
    font = _font(max(14, round(max(size) / 22)))
    for number, x, y in places:
        draw.text((x, y), str(number), fill="white", font=font, anchor="mm", stroke_width=3, stroke_fill="black")
    return out


def preview_overlay(
    photo: Image.Image,
    preview: np.ndarray,
    cmap: str = DEFAULT_COLOUR_MAP,
    alpha: float = 0.5,
    size: tuple[int, int] | None = None,
) -> Image.Image:
    """A map found so far (e.g. region search's regions chosen so far, the rest 0) over the photo."""
    rgb = np.asarray(photo.convert("RGB"))
    return overlay(rgb, preview, cmap, alpha, size or photo.size)


def colour_stops(cmap: str = DEFAULT_COLOUR_MAP, count: int = 11) -> list[str]:
    """``count`` colours along a colour map, low to high, as hex (for a colour bar)."""
    colours = _heat(np.linspace(0, 1, count), cmap)
    return ["#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb)) for rgb in colours]


def map_picture(
    image: np.ndarray,
    saliency: SaliencyMap,
    cmap: str = DEFAULT_COLOUR_MAP,
    alpha: float = 0.5,
    size: tuple[int, int] | None = None,
    smooth: bool = False,
    outline: tuple[float, float, float, float] | None = None,
) -> Image.Image:
    """A map over ``image`` (the model-input view) as the page shows it: a map that carries its
    regions region by region in its ranks' colours with the first ones outlined and numbered,
    any other as a heat overlay (``smooth``: blurred first, as most papers show integrated
    gradients). ``outline``: the target's part of the photo (``Target.outline``: a detector's
    box, as fractions of the width and height), drawn as a frame."""
    regions = saliency.regions
    if regions is not None and regions.shape == saliency.values.shape:
        picture = region_overlay(image, regions, region_ranking(saliency.values, regions), cmap, alpha, size)
    else:
        picture = overlay(image, saliency.values, cmap, alpha, size, SMOOTH_SIGMA if smooth else 0.0)
    return outlined(picture, outline) if outline is not None else picture


def method_picture(
    result: Result,
    name: str,
    cmap: str = DEFAULT_COLOUR_MAP,
    alpha: float = 0.5,
    size: tuple[int, int] | None = None,
    smooth: bool = False,
) -> Image.Image:
    """A method's map of ``result`` as the page shows it (``map_picture``, the target's part outlined)."""
    return map_picture(result.image, result.methods[name].saliency, cmap, alpha, size, smooth, result.target.outline())


OUTLINE_COLOUR = (0, 255, 255)  # cyan: stands out on every colour map's hues
BOX_COLOURS = ((0, 255, 255), (255, 64, 255), (64, 255, 64), (255, 255, 0), (255, 128, 0))


def _frame(
    draw: ImageDraw.ImageDraw, box: Sequence[float], size: tuple[int, int], colour: tuple[int, int, int]
) -> None:
    """A frame around ``box`` (fractions of ``size``), kept inside the picture, in a dark halo so it
    reads on light and dark maps alike."""
    width, height = size
    x0, y0, x1, y1 = (  # rounded here: PIL would cut the fractions off
        round(min(max(box[0], 0.0), 1.0) * (width - 1)),
        round(min(max(box[1], 0.0), 1.0) * (height - 1)),
        round(min(max(box[2], 0.0), 1.0) * (width - 1)),
        round(min(max(box[3], 0.0), 1.0) * (height - 1)),
    )
    line = max(2, round(max(size) / 150))
    draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0), width=line + 2)
    draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)


def outlined(picture: Image.Image, box: Sequence[float], colour: tuple[int, int, int] = OUTLINE_COLOUR) -> Image.Image:
    """``picture`` with ``box`` (x0, y0, x1, y1 as fractions of its width and height) framed."""
    out = picture.convert("RGB")
    _frame(ImageDraw.Draw(out), box, out.size, colour)
    return out


def targets_picture(
    photo: Image.Image, targets: Sequence[Target], size: tuple[int, int] | None = None
) -> Image.Image | None:
    """The photo with each target's part framed and numbered 1, 2, ... (a detector's boxes, best
    first) for the user to pick one; None when no target has a part of the photo to show."""
    boxes: list[tuple[int, tuple[float, float, float, float]]] = []
    for number, target in enumerate(targets, start=1):
        box = target.outline()
        if box is not None:
            boxes.append((number, box))
    if not boxes:
        return None
    out = photo.convert("RGB")
    if size is not None and out.size != tuple(size):
        out = out.resize((int(size[0]), int(size[1])), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(out)
    font = _font(max(14, round(max(out.size) / 24)))
    for number, box in reversed(boxes):  # the best box drawn last, on top
        colour = BOX_COLOURS[(number - 1) % len(BOX_COLOURS)]
        _frame(draw, box, out.size, colour)
        x, y = max(box[0], 0.0) * out.width, max(box[1], 0.0) * out.height
        draw.text((x + 4, y + 2), str(number), fill=colour, font=font, anchor="la", stroke_width=3, stroke_fill="black")
    return out


def _pixels(result: Result):
    """The model's pixels, exactly: Result.image / 255 as float32, ``[1, 3, H, W]``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(result.image)).permute(2, 0, 1)[None].float() / 255


# --- curves ----------------------------------------------------------------------------------


def _named_curves(result: Result) -> list[tuple[str, Curves]]:
    return [*((name, r.curves) for name, r in result.methods.items()), ("random", result.random.curves)]


def shared_ylim(result: Result, kinds: tuple[str, ...] = ("deletion", "insertion")) -> tuple[float, float]:
    """One y range that holds every curve of ``kinds`` (at least 0..1), so separate plots compare."""
    values = [
        np.asarray(getattr(r, kind).normalized, dtype=np.float64) for _, r in _named_curves(result) for kind in kinds
    ]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    low = min(0.0, float(finite.min())) if finite.size else 0.0
    high = max(1.0, float(finite.max())) if finite.size else 1.0
    pad = 0.05 * (high - low)
    return low - pad, high + pad


def curves_figure(
    result: Result, kinds: tuple[str, ...] = ("deletion", "insertion"), ylim: tuple[float, float] | None = None
):
    """One matplotlib Figure: a panel per curve kind, every method and the random reference.

    The panels share one y range (``ylim``, default ``shared_ylim``) so they compare at a glance.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ylim = ylim or shared_ylim(result, kinds)
    # Fixed margins rather than a layout engine: the layout pass cost as much as the drawing.
    figure = Figure(figsize=(6.0 * len(kinds), 4.2), dpi=100)
    figure.subplots_adjust(left=0.11 / len(kinds), right=1 - 0.02 / len(kinds), top=0.92, bottom=0.12, wspace=0.25)
    axes = figure.subplots(1, len(kinds), squeeze=False)[0]
    for axis, kind in zip(axes, kinds):
        for name, r in _named_curves(result):
            curve = getattr(r, kind)
            axis.plot(
                curve.fractions,
                curve.normalized,
                color=colour(result, name),
                linestyle="--" if name == "random" else "-",
                linewidth=2.5,
                label=f"{title(result, name)} (AUC {curve.auc:.3f})",
            )
        better = "higher is better" if getattr(result.random, kind).higher_is_better else "lower is better"
        # The AUCs count the curves clipped to this band (what lies outside is reported apart).
        for level in (0.0, 1.0):
            axis.axhline(level, color="#999999", linewidth=0.8, linestyle=":")
        axis.set_title(f"{kind.capitalize()} curve ({better}), {result.substrates[0]} substrate", fontsize=13)
        axis.set_xlabel("fraction of pixels " + ("removed" if kind == "deletion" else "revealed"), fontsize=11)
        axis.set_ylabel("score (blank picture 0, full photo 1)", fontsize=11)
        axis.set_xlim(0, 1)
        axis.set_ylim(*ylim)
        axis.tick_params(labelsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=10, loc="best")
    return figure


def figure_to_image(figure) -> Image.Image:
    """The figure drawn into a picture (straight from the renderer's buffer: no PNG round trip)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    width, height = canvas.get_width_height()
    return Image.frombuffer("RGBA", (width, height), bytes(canvas.buffer_rgba()), "raw", "RGBA", 0, 1).convert("RGB")


class _Plot:
    """A figure drawn once, and where its data points land on the picture, so that a slider's
    marker is painted onto a copy (milliseconds) instead of drawing the figure again."""

    def __init__(self, figure, axes: Sequence) -> None:
        self.image = figure_to_image(figure)  # draws the figure: its transforms are now final
        self.figure, self.axes = figure, list(axes)

    def pixel(self, axis_index: int, x: float, y: float) -> tuple[float, float]:
        px, py = self.axes[axis_index].transData.transform((x, y))
        return float(px), float(self.image.height - py)

    def vertical_line(self, draw: ImageDraw.ImageDraw, axis_index: int, x: float) -> None:
        low, high = self.axes[axis_index].get_ylim()
        (x0, top), (_, bottom) = self.pixel(axis_index, x, high), self.pixel(axis_index, x, low)
        for y in np.arange(top, bottom, 8.0):  # dotted
            draw.line([(x0, y), (x0, min(y + 4, bottom))], fill="black", width=2)

    def dot(self, draw: ImageDraw.ImageDraw, axis_index: int, x: float, y: float, fill: str) -> None:
        if not np.isfinite(y):
            return
        px, py = self.pixel(axis_index, x, y)
        draw.ellipse([px - 7, py - 7, px + 7, py + 7], fill=fill, outline="black", width=2)


_plots: dict[tuple[int, str], tuple[Any, _Plot]] = {}
PLOTS_KEPT = 24


def _cached_plot(result: Result, key: str, draw_figure) -> _Plot:
    """The plot ``key`` of ``result``, drawn on first use. Results are keyed by identity (the app
    holds one Result per bundle), checked through a weak reference so a reused id is not confused."""
    import weakref

    entry = _plots.get((id(result), key))
    if entry is not None and entry[0]() is result:
        return entry[1]
    plot = _Plot(*draw_figure())
    while len(_plots) >= PLOTS_KEPT:
        _plots.pop(next(iter(_plots)))
    _plots[(id(result), key)] = (weakref.ref(result), plot)
    return plot


def curve_plot(
    result: Result, kind: str, ylim: tuple[float, float] | None = None, marker: int | None = None
) -> Image.Image:
    """One curve kind's plot (as ``curves_figure``), with the scrubber's ``marker`` (a step of the
    curves): a dotted vertical line and a dot on each curve. The figure is drawn once per result."""
    ylim = ylim or shared_ylim(result)

    def draw_figure():
        figure = curves_figure(result, kinds=(kind,), ylim=ylim)
        return figure, figure.axes

    plot = _cached_plot(result, f"curve:{kind}:{ylim}", draw_figure)
    if marker is None:
        return plot.image
    picture = plot.image.copy()
    draw = ImageDraw.Draw(picture)
    step = max(0, min(int(marker), len(getattr(result.random, kind).fractions) - 1))
    plot.vertical_line(draw, 0, float(getattr(result.random, kind).fractions[step]))
    for name, r in _named_curves(result):
        curve = getattr(r, kind)
        plot.dot(draw, 0, float(curve.fractions[step]), float(curve.normalized[step]), colour(result, name))
    return picture


def curves_picture(result: Result) -> Image.Image:
    """Both curve plots side by side on one y range (the bundle's curves.png), from the plots the
    page already drew."""
    ylim = shared_ylim(result)
    deletion, insertion = curve_plot(result, "deletion", ylim), curve_plot(result, "insertion", ylim)
    both = Image.new("RGB", (deletion.width + insertion.width, max(deletion.height, insertion.height)), "white")
    both.paste(deletion, (0, 0))
    both.paste(insertion, (deletion.width, 0))
    return both


def _to_image(tensor) -> Image.Image:
    array = (tensor[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def curve_step_images(result: Result, name: str, step: int) -> tuple[Image.Image, Image.Image]:
    """The deletion and the insertion picture the curves of ``name`` scored at ``step``
    (rebuilt from the map and the substrate: no forward pass)."""
    from . import metrics

    values = result.methods[name].saliency.values
    if result.params.get("curve_ranking") == "regions":  # the curves flipped whole regions
        from .regions import region_labels

        labels = region_labels(_pixels(result), int(result.params["n_regions"]), str(result.params["region_kind"]))
        values = metrics.region_means(values, labels)
    deleted, revealed = metrics.curve_images(
        _pixels(result),
        values,
        int(step),
        int(result.params["curve_steps"]),
        result.substrates[0],  # the headline curves' substrate
        int(result.params["seed"]),
    )
    return _to_image(deleted), _to_image(revealed)


def scrub_picture(result: Result, step: int, size: tuple[int, int] | None = None, thumb: int = 190) -> Image.Image:
    """The scrubber's picture at ``step``: for each method, the photo with that fraction deleted
    (most important first) and with that fraction revealed, each with its score (0 = blank, 1 = photo)."""
    steps = int(result.params["curve_steps"])
    step = max(0, min(int(step), steps))
    width, height = size or result.image.shape[1::-1]
    scale = thumb / max(width, height)
    tw, th = max(1, round(width * scale)), max(1, round(height * scale))
    names = list(result.methods)
    per_row = min(len(names), 3)
    rows = -(-len(names) // per_row)
    pad, head, foot = 12, 26, 22
    block_w = 2 * tw + pad
    canvas = Image.new(
        "RGB", (per_row * block_w + (per_row + 1) * pad, rows * (head + th + foot) + (rows + 1) * pad), "white"
    )
    draw = ImageDraw.Draw(canvas)
    title_font, text_font = _font(17), _font(14)
    for i, name in enumerate(names):
        x = pad + (i % per_row) * (block_w + pad)
        y = pad + (i // per_row) * (head + th + foot + pad)
        draw.rectangle([x - 4, y + 4, x + 2, y + head - 6], fill=colour(result, name))
        draw.text((x + 8, y + 2), title(result, name), fill="black", font=title_font)
        deleted, revealed = curve_step_images(result, name, step)
        r = result.methods[name]
        for j, (picture, what, value) in enumerate(
            ((deleted, "deleted", r.deletion.normalized[step]), (revealed, "revealed", r.insertion.normalized[step]))
        ):
            left = x + j * (tw + pad)
            canvas.paste(picture.resize((tw, th), Image.Resampling.BICUBIC), (left, y + head))
            draw.text((left, y + head + th + 3), f"{what}: score {value:.2f}", fill="black", font=text_font)
    return canvas


# --- the region search's steps ---------------------------------------------------------------


def search_path(result: Result, name: str) -> list[dict]:
    """The steps of the search that made map ``name`` (``meta["path"]``: region, gain, the kept
    and the removed part's scores), [] for a map made otherwise."""
    return list(result.methods[name].saliency.meta.get("path") or []) if name in result.methods else []


def region_step_images(result: Result, name: str, chosen: int) -> tuple[Image.Image, Image.Image]:
    """The pictures the search behind map ``name`` (region search) scored after ``chosen`` steps:
    only the chosen regions kept, and only they removed (on the run's substrate; no forward pass)."""
    import torch

    from .substrates import make_substrate

    labels = result.methods[name].saliency.regions
    if labels is None:
        raise ValueError(f"the map {name!r} carries no regions to step through")
    order = [step["region"] for step in search_path(result, name)]
    keep = torch.from_numpy(np.isin(labels, order[: int(chosen)]).astype(np.float32))[None, None]
    substrate = make_substrate(_pixels(result), str(result.params["substrate"]), int(result.params["seed"]))
    kept, removed = substrate.fill(torch.cat([keep, 1.0 - keep])).split(1)
    return _to_image(kept), _to_image(removed)


def _path_column(path: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if p.get(key) is None else p[key] for p in path], dtype=np.float64)


def _path_figure(result: Result, name: str):
    """The region search's path: the gain of each step (grey; light where the fast search only
    estimated it) and the scores of the kept and the removed part."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    path = search_path(result, name)
    n = len(path)
    steps = np.arange(1, n + 1)
    figure = Figure(figsize=(6.4, 3.4), dpi=100)
    figure.subplots_adjust(left=0.12, right=0.98, top=0.9, bottom=0.15)
    axis = figure.subplots()
    scored = np.isfinite(_path_column(path, "kept"))
    gains = _path_column(path, "gain")
    axis.bar(steps[scored], gains[scored], color="#999999", label="gain in F")
    if (~scored).any():
        axis.bar(steps[~scored], gains[~scored], color="#dddddd", label="gain in F (estimated)")
    axis.plot(steps, _path_column(path, "kept"), "-o", color="#2ca02c", markersize=3, label="score of the kept part")
    axis.plot(
        steps, _path_column(path, "removed"), "-o", color="#d62728", markersize=3, label="score of the removed part"
    )
    axis.set_xlim(0.5, n + 0.5)
    axis.set_xlabel("step (regions chosen)", fontsize=11)
    axis.set_ylabel("0 = blank, 1 = photo", fontsize=11)
    axis.set_title("The search, step by step", fontsize=12)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    return figure, [axis]


def step_picture(
    result: Result, name: str, chosen: int, size: tuple[int, int] | None = None, thumb: int = 300
) -> Image.Image:
    """The step-through of map ``name`` at ``chosen`` regions: the kept picture (only the chosen
    regions) and the removed one (all but them), as region search scored them, beside the
    search's path with a marker at this step."""
    path = search_path(result, name)
    chosen = max(0, min(int(chosen), len(path)))
    plot = _cached_plot(result, f"path:{name}", lambda: _path_figure(result, name))
    graph = plot.image.copy()
    draw = ImageDraw.Draw(graph)
    if chosen:
        plot.vertical_line(draw, 0, float(chosen))
        entry = path[chosen - 1]
        for key, fill in (("kept", "#2ca02c"), ("removed", "#d62728")):
            if entry.get(key) is not None:
                plot.dot(draw, 0, float(chosen), float(entry[key]), fill)
    width, height = size or result.image.shape[1::-1]
    scale = thumb / max(width, height)
    tw, th = max(1, round(width * scale)), max(1, round(height * scale))
    kept, removed = region_step_images(result, name, chosen)
    pad, head = 12, 28
    canvas = Image.new("RGB", (2 * tw + 3 * pad + graph.width, max(head + th + pad, graph.height)), "white")
    text = ImageDraw.Draw(canvas)
    font = _font(16)
    top = max(0, (canvas.height - head - th) // 2)
    for index, (picture, label) in enumerate(((kept, f"kept: the {chosen} chosen"), (removed, "removed: the rest"))):
        left = pad + index * (tw + pad)
        text.text((left, top), label, fill="black", font=font)
        canvas.paste(picture.resize((tw, th), Image.Resampling.BICUBIC), (left, top + head))
    canvas.paste(graph, (2 * tw + 3 * pad, (canvas.height - graph.height) // 2))
    return canvas


# --- the sanity check ------------------------------------------------------------------------


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line] if line else lines


def sanity_strip(
    result: Result, cmap: str = DEFAULT_COLOUR_MAP, size: tuple[int, int] | None = None, thumb: int = 120
) -> Image.Image | None:
    """The sanity check as a strip per method: its map on the trained model, then on the model
    randomised down to each stage (top layer first), each with its rank correlation (rho) and SSIM
    against the first. The maps alone (|map|, no photo underneath), as Adebayo et al. show them."""
    check = result.sanity
    if check is None or not check.methods:
        return None
    width, height = size or result.image.shape[1::-1]
    scale = thumb / max(width, height)
    tw, th = max(1, round(width * scale)), max(1, round(height * scale))
    labels = ["trained model", *(f"{label} randomised" for label, _ in check.stages)]
    pad, head, foot, left = 8, 44, 36, 150
    names = [n for n in result.methods if n in check.methods]
    canvas = Image.new("RGB", (left + len(labels) * (tw + pad) + pad, head + len(names) * (th + foot + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    small, bold = _font(12), _font(15)
    for j, label in enumerate(labels):
        for k, line in enumerate(_wrap(label, max(8, tw // 7))[:3]):
            draw.text((left + j * (tw + pad), 2 + 13 * k), line, fill="black", font=small)
    for i, name in enumerate(names):
        top = head + i * (th + foot + pad)
        draw.rectangle([pad, top + 2, pad + 5, top + 20], fill=colour(result, name))
        for k, line in enumerate(_wrap(title(result, name), 16)[:2]):
            draw.text((pad + 10, top + 18 * k), line, fill="black", font=bold)
        maps = [result.methods[name].saliency.values, *(stage.values for stage in check.methods[name])]
        for j, values in enumerate(maps):
            heat = Image.fromarray(_heat(display_values(np.abs(np.asarray(values, dtype=np.float64))), cmap))
            x = left + j * (tw + pad)
            canvas.paste(heat.resize((tw, th), Image.Resampling.BILINEAR), (x, top))
            if j:
                stage = check.methods[name][j - 1]
                draw.text(
                    (x, top + th + 3), "blank" if stage.blank else f"rho {stage.spearman:.2f}", fill="black", font=small
                )
                if not stage.blank:
                    draw.text((x, top + th + 17), f"SSIM {stage.ssim:.2f}", fill="black", font=small)
    return canvas


# --- files -----------------------------------------------------------------------------------


def curves_csv(result: Result) -> str:
    """Long-format CSV: method, curve, fraction, raw score, normalised score."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "curve", "fraction", "score", "normalized", "substrate", "probability"])
    named = [*((n, r.by_substrate) for n, r in result.methods.items()), ("random", _random_curves(result))]
    for name, by_substrate in named:
        for substrate, curves in by_substrate.items():
            for curve in curves:
                probabilities = curve.probabilities if curve.probabilities is not None else [None] * len(curve.scores)
                for f, s, n, p in zip(curve.fractions, curve.scores, curve.normalized, probabilities):
                    probability = "" if p is None else f"{p:.6g}"
                    writer.writerow([name, curve.kind, f"{f:.6g}", f"{s:.6g}", f"{n:.6g}", substrate, probability])
    return out.getvalue()


def _random_curves(result: Result) -> dict[str, Curves]:
    return {substrate: reference.curves for substrate, reference in result.random_by_substrate.items()}


AUC_HEADERS = [
    "Method",
    "SRG (higher is better)",
    "More faithful than random order?",
    "Insertion AUC (higher is better)",
    "Deletion AUC (lower is better)",
    "SRG unclipped",
    "Insertion peak (1 = the whole photo)",
    "Seconds",
    "Forward passes",
    "Scored on",
]


def _round(value: float, digits: int) -> float | None:
    return round(float(value), digits) if np.isfinite(value) else None


def auc_table(result: Result) -> list[list]:
    """Rows (AUC_HEADERS) per scoring substrate, the headline first: per method its SRG (on the
    curves clipped to [0, 1]), verdict, insertion and deletion AUC, unclipped SRG, insertion peak,
    seconds and forward passes; the random reference last."""
    rows = []
    for substrate in result.substrates:
        reference = result.random_by_substrate[substrate]
        for n, r in result.methods.items():
            curves = r.by_substrate[substrate]
            rows.append(
                [
                    title(result, n),
                    round(curves.srg, 4),
                    "yes" if result.more_faithful_than_random(n, substrate) else "no",
                    round(curves.insertion.auc, 4),
                    round(curves.deletion.auc, 4),
                    _round(curves.srg_unclipped, 4),
                    _round(curves.insertion.peak, 3),
                    round(r.saliency.seconds, 2),
                    r.saliency.forward_passes,
                    substrate,
                ]
            )
        rows.append(
            [
                title(result, "random"),
                round(reference.srg, 4),
                f"(max of {reference.orderings} orderings: {max(reference.srgs):.4f})",
                round(reference.insertion.auc, 4),
                round(reference.deletion.auc, 4),
                _round(reference.curves.srg_unclipped, 4),
                _round(reference.insertion.peak, 3),
                None,
                None,
                substrate,
            ]
        )
    return rows


MAPS_FILE = "maps.npz"


def save_bundle(
    result: Result,
    out_dir: str | Path,
    cmap: str = DEFAULT_COLOUR_MAP,
    alpha: float = 0.5,
    original_size: tuple[int, int] | None = None,
) -> list[Path]:
    """Write ``<method>.png``, ``curves.png``, ``curves.csv``, ``result.json`` and ``maps.npz``
    (the model-input image, every map and the regions of maps painted per region, as numpy
    arrays) into ``out_dir``. ``load_bundle``
    reads them back into a Result."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in result.methods:
        path = out / f"{name}.png"
        method_picture(result, name, cmap, alpha, original_size).save(path)
        written.append(path)
    path = out / "curves.png"
    curves_picture(result).save(path)
    written.append(path)
    path = out / "curves.csv"
    path.write_text(curves_csv(result))
    written.append(path)
    path = out / "result.json"
    summary = {
        **result.summary(),
        "render": {
            "colour_map": cmap,
            "opacity": float(alpha),
            "overlay_size": list(original_size or result.image.shape[1::-1]),
            # what the maps' pictures need besides their values (maps.npz keeps their regions)
            "maps": {
                name: {"title": r.saliency.title, "colour": r.saliency.colour} for name, r in result.methods.items()
            },
        },
    }
    if result.sanity is not None:  # what load_bundle needs besides the summary's correlations
        summary["sanity_check"] = {
            "stages": [[label, list(modules)] for label, modules in result.sanity.stages],
            "seed": result.sanity.seed,
            "seconds": result.sanity.seconds,
        }
    path.write_text(json.dumps(summary, indent=2, allow_nan=False))
    written.append(path)
    path = out / MAPS_FILE
    sanity_maps: dict[str, Any] = (  # Any: savez_compressed's stubs would match an array to allow_pickle
        {}
        if result.sanity is None
        else {
            f"sanity_{name}_{k}": np.asarray(stage.values, dtype=np.float32)
            for name, stages in result.sanity.methods.items()
            for k, stage in enumerate(stages)
        }
    )
    regions: dict[str, Any] = {
        f"regions_{name}": r.saliency.regions.astype(np.int32)
        for name, r in result.methods.items()
        if r.saliency.regions is not None
    }
    maps: dict[str, Any] = {f"map_{name}": r.saliency.values.astype(np.float32) for name, r in result.methods.items()}
    np.savez_compressed(
        path,
        image=result.image,
        **sanity_maps,
        **regions,
        **maps,
    )
    written.append(path)
    return written


def zip_bundle(files: list[Path], zip_path: str | Path) -> Path:
    """The files of a bundle in one zip, for a single download."""
    zip_path = Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for f in files:
            archive.write(f, arcname=f.name)
    return zip_path


def _array(values: Any) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _curves_from(
    summary_curves: dict, aucs: dict, passes: int = 0, seconds: float = 0.0, substrate: str = "black"
) -> Curves:
    def curve(kind: str) -> Curve:
        c = summary_curves[kind]
        normalized = _array(c["normalized"])
        fractions = _array(c["fractions"])
        auc = aucs.get(f"{kind}_auc")
        probabilities = c.get("probabilities")
        return Curve(
            kind,
            fractions,
            _array(c["scores"]),
            normalized,
            clipped_auc(normalized, fractions) if auc is None else float(auc),
            float(c["full_score"] if c["full_score"] is not None else np.nan),
            float(c["substrate_score"] if c["substrate_score"] is not None else np.nan),
            passes // 2,
            seconds / 2,
            None if probabilities is None else _array(probabilities),
            str(c.get("substrate") or substrate),
        )

    return Curves(curve("deletion"), curve("insertion"))


def _substrates_from(entry: dict, default: Curves) -> dict[str, Curves]:
    """A result.json entry's curves on each scoring substrate (a bundle from before them: the one)."""
    return {
        substrate: _curves_from(
            block["curves"],
            block,
            block.get("curve_forward_passes") or 0,
            block.get("curve_seconds") or 0.0,
            substrate,
        )
        for substrate, block in entry.get("substrates", {}).items()
    } or {default.substrate: default}


def bundle_from_zip(zip_path: str | Path) -> tuple[Result, dict]:
    """A bundle's zip -> (the Result it was written from, its "render" settings: colour map,
    opacity, overlay size). What the app's sliders and its refine button start from."""
    path = Path(zip_path)
    stat = path.stat()
    return _bundle_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _bundle_cached(path: str, mtime_ns: int, size: int) -> tuple[Result, dict]:  # noqa: ARG001 - cache keys
    with zipfile.ZipFile(path) as archive:
        summary = json.loads(archive.read("result.json"))
        with np.load(io.BytesIO(archive.read(MAPS_FILE)), allow_pickle=False) as arrays:
            image = arrays["image"]
            maps = {name[4:]: arrays[name] for name in arrays.files if name.startswith("map_")}
            regions = {name[8:]: arrays[name].astype(np.int64) for name in arrays.files if name.startswith("regions_")}
            sanity_maps = {name: arrays[name] for name in arrays.files if name.startswith("sanity_")}
    methods = {}
    looks = summary.get("render", {}).get("maps", {})
    made_on = str(summary["params"].get("substrate", "black"))  # a bundle from before scoring substrates
    for name, m in summary["methods"].items():
        saliency = SaliencyMap(
            name,
            maps[name],
            seconds=float(m["seconds"] or 0.0),
            forward_passes=int(m["forward_passes"] or 0),
            backward_passes=int(m["backward_passes"] or 0),
            meta=m["meta"],
            regions=regions.get(name),
            title=looks.get(name, {}).get("title", ""),
            colour=looks.get(name, {}).get("colour", ""),
        )
        headline = _curves_from(
            m["curves"], m, m.get("curve_forward_passes") or 0, m.get("curve_seconds") or 0.0, made_on
        )
        by_substrate = _substrates_from(m, headline)
        methods[name] = MethodResult(saliency, by_substrate[next(iter(by_substrate))], by_substrate)
    random = summary["random"]

    def reference_from(entry: dict, curves: Curves) -> RandomReference:
        return RandomReference(
            curves,
            tuple(np.nan if s is None else float(s) for s in entry["srg_orderings"]),
            random["ranking"],
            int(random["seed"]),
            tuple(np.nan if s is None else float(s) for s in entry.get("srg_unclipped_orderings", [])),
        )

    references = {
        substrate: reference_from(entry, _curves_from(entry["curves"], entry, substrate=substrate))
        for substrate, entry in random.get("substrates", {}).items()
    } or {made_on: reference_from(random, _curves_from(random["curves"], random, substrate=made_on))}
    meaning = summary.get("score_meaning")
    result = Result(
        model=summary["model"],
        target=_target_from(summary),
        score=float(summary["score"]) if summary["score"] is not None else float("nan"),
        prompt_probabilities=summary["prompt_probabilities"],
        image=image,
        methods=methods,
        random=references[next(iter(references))],
        params=summary["params"],
        seconds=float(summary["seconds"]),
        notes=tuple(summary["notes"]),
        sanity=_sanity_from(summary, sanity_maps),
        probability=summary.get("probability"),
        photo_size=tuple(summary["photo_size"]) if summary.get("photo_size") else None,
        score_meaning=None if meaning is None else ScoreMeaning(meaning["name"], meaning["words"], meaning["min_span"]),
        random_by_substrate=references,
    )
    return result, summary.get("render", {})


def _target_from(summary: dict) -> Target:
    """result.json's target: a plain prompt, or what a model-resolved target kept (SavedTarget)."""
    pinned, outline = summary.get("target_pinned") or {}, summary.get("target_outline")
    if not pinned and outline is None:
        return Target(summary["prompt"], tuple(summary["contrast"]))
    return SavedTarget(
        summary["prompt"],
        tuple(summary["contrast"]),
        saved=tuple((summary.get("target") or {}).items()),
        saved_pinned=tuple(pinned.items()),
        saved_outline=None if outline is None else tuple(float(v) for v in outline),  # type: ignore[arg-type]
    )


def _sanity_from(summary: dict, maps: dict[str, np.ndarray]) -> SanityCheck | None:
    detail = summary.get("sanity_check")
    if detail is None or "sanity" not in summary:
        return None
    methods = {
        name: tuple(
            SanityStage(
                s["stage"],
                np.nan if s["spearman"] is None else float(s["spearman"]),
                np.nan if s["ssim"] is None else float(s["ssim"]),
                maps[f"sanity_{name}_{k}"],
                blank=bool(s.get("blank", False)),
            )
            for k, s in enumerate(stages)
        )
        for name, stages in summary["sanity"].items()
    }
    return SanityCheck(
        tuple((label, tuple(modules)) for label, modules in detail["stages"]),
        methods,
        int(detail["seed"]),
        float(detail["seconds"]),
        references={
            name: {k: np.nan if v is None else float(v) for k, v in values.items()}
            for name, values in summary.get("sanity_references", {}).items()
        },
    )
