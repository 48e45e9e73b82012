"""Result -> pictures and files: overlays, curve plots, CSV and the export bundle.

Takes only ``Result`` values (numpy), so the app and the CLI render the same way.
"""
from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from .methods import METHODS
from .types import Curves, Result

RANDOM_TITLE, RANDOM_COLOUR = "Random order", "#7f7f7f"


def title(name: str) -> str:
    """What a method (or "random", the reference) is called on the page and in the plots."""
    return RANDOM_TITLE if name == "random" else METHODS[name].title if name in METHODS else name


def colour(name: str) -> str:
    return RANDOM_COLOUR if name == "random" else METHODS[name].colour if name in METHODS else "#000000"


def display_values(saliency: np.ndarray) -> np.ndarray:
    """A map -> [0, 1] for display: the positive part scaled by its 99th percentile."""
    values = np.nan_to_num(np.asarray(saliency, dtype=np.float64))
    positive = np.clip(values, 0, None)
    scale = np.percentile(positive, 99) if positive.any() else 0.0
    if scale <= 0:
        scale = positive.max() if positive.max() > 0 else 1.0
    return np.clip(positive / scale, 0, 1)


def overlay(image: np.ndarray, saliency: np.ndarray, cmap: str = "jet", alpha: float = 0.5,
            size: tuple[int, int] | None = None) -> Image.Image:
    """Heat map over the image. ``size`` (width, height) upsamples both, e.g. to the original photo."""
    from matplotlib import colormaps

    heat = colormaps[cmap](display_values(saliency))[..., :3]
    heat_image = Image.fromarray((heat * 255).astype(np.uint8))
    base = Image.fromarray(image)
    if size is not None and size != base.size:
        base = base.resize(size, Image.BICUBIC)
        heat_image = heat_image.resize(size, Image.BILINEAR)
    return Image.blend(base, heat_image, float(alpha))


def _named_curves(result: Result) -> list[tuple[str, Curves]]:
    return [*((name, r.curves) for name, r in result.methods.items()), ("random", result.random.curves)]


def shared_ylim(result: Result, kinds: tuple[str, ...] = ("deletion", "insertion")) -> tuple[float, float]:
    """One y range that holds every curve of ``kinds`` (at least 0..1), so separate plots compare."""
    values = [np.asarray(getattr(r, kind).normalized, dtype=np.float64)
              for _, r in _named_curves(result) for kind in kinds]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    low = min(0.0, float(finite.min())) if finite.size else 0.0
    high = max(1.0, float(finite.max())) if finite.size else 1.0
    pad = 0.05 * (high - low)
    return low - pad, high + pad


def curves_figure(result: Result, kinds: tuple[str, ...] = ("deletion", "insertion"),
                  ylim: tuple[float, float] | None = None):
    """One matplotlib Figure: a panel per curve kind, every method and the random reference.

    The panels share one y range (``ylim``, default ``shared_ylim``) so they compare at a glance.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ylim = ylim or shared_ylim(result, kinds)
    figure = Figure(figsize=(6.0 * len(kinds), 4.2), dpi=100, layout="constrained")
    axes = figure.subplots(1, len(kinds), squeeze=False)[0]
    for axis, kind in zip(axes, kinds):
        for name, r in _named_curves(result):
            curve = getattr(r, kind)
            axis.plot(curve.fractions, curve.normalized, color=colour(name),
                      linestyle="--" if name == "random" else "-", linewidth=2.5,
                      label=f"{title(name)} (AUC {curve.auc:.3f})")
        better = "higher is better" if getattr(result.random, kind).higher_is_better else "lower is better"
        axis.set_title(f"{kind.capitalize()} curve ({better})", fontsize=13)
        axis.set_xlabel("fraction of pixels " + ("removed" if kind == "deletion" else "revealed"), fontsize=11)
        axis.set_ylabel("score (blank picture 0, full photo 1)", fontsize=11)
        axis.set_xlim(0, 1)
        axis.set_ylim(*ylim)
        axis.tick_params(labelsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=10, loc="best")
    return figure


def figure_to_image(figure) -> Image.Image:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def curves_csv(result: Result) -> str:
    """Long-format CSV: method, curve, fraction, raw score, normalised score."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "curve", "fraction", "score", "normalized"])
    for name, r in _named_curves(result):
        for curve in r:
            for f, s, n in zip(curve.fractions, curve.scores, curve.normalized):
                writer.writerow([name, curve.kind, f"{f:.6g}", f"{s:.6g}", f"{n:.6g}"])
    return out.getvalue()


AUC_HEADERS = ["Method", "SRG (higher is better)", "More faithful than random order?",
               "Insertion AUC (higher is better)", "Deletion AUC (lower is better)", "Seconds", "Forward passes"]


def auc_table(result: Result) -> list[list]:
    """Rows (AUC_HEADERS): method, SRG, verdict, insertion AUC, deletion AUC, seconds, forward passes;
    the random reference last."""
    rows = [[title(n), round(r.srg, 4), "yes" if result.more_faithful_than_random(n) else "no",
             round(r.insertion.auc, 4), round(r.deletion.auc, 4), round(r.saliency.seconds, 2),
             r.saliency.forward_passes]
            for n, r in result.methods.items()]
    rows.append([title("random"), round(result.random.srg, 4),
                 f"(max of {result.random.orderings} orderings: {max(result.random.srgs):.4f})",
                 round(result.random.insertion.auc, 4), round(result.random.deletion.auc, 4), None, None])
    return rows


def save_bundle(result: Result, out_dir: str | Path, cmap: str = "jet", alpha: float = 0.5,
                original_size: tuple[int, int] | None = None) -> list[Path]:
    """Write ``<method>.png``, ``curves.png``, ``curves.csv`` and ``result.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, r in result.methods.items():
        path = out / f"{name}.png"
        overlay(result.image, r.saliency.values, cmap, alpha, original_size).save(path)
        written.append(path)
    path = out / "curves.png"
    curves_figure(result).savefig(path)
    written.append(path)
    path = out / "curves.csv"
    path.write_text(curves_csv(result))
    written.append(path)
    path = out / "result.json"
    summary = {**result.summary(), "render": {"colour_map": cmap, "opacity": float(alpha),
                                              "overlay_size": list(original_size or result.image.shape[1::-1])}}
    path.write_text(json.dumps(summary, indent=2, allow_nan=False))
    written.append(path)
    return written


def zip_bundle(files: list[Path], zip_path: str | Path) -> Path:
    """The files of a bundle in one zip, for a single download."""
    zip_path = Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for f in files:
            archive.write(f, arcname=f.name)
    return zip_path
