"""summary.md (the table a paper would print) and summary.png (SRG per method: a point per
image, the mean and its CI) from a data-set run's summary and rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..methods import METHODS
from .rows import RANDOM


def title(method: str) -> str:
    return METHODS[method].title if method in METHODS else method


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _with_ci(mean: float | None, ci: list[float] | None, signed: bool = False) -> str:
    if mean is None:
        return "–"
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text if ci is None else f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2g}" if value >= 1e-4 else "< 1e-4"


def tables(block: dict[str, Any], methods: Sequence[str], orderings: int) -> str:
    """The methods table, then the paired comparisons, of one block of the summary."""
    lines = [
        "| method | SRG (95 % CI) | insertion AUC | deletion AUC | beats random | seconds | forward passes |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        s = block["methods"][m]
        beats = "–" if s["beats_random"] is None else f"{100 * s['beats_random']:.0f} %"
        lines.append(
            f"| {title(m)} | {_with_ci(s['srg_mean'], s['srg_ci'], True)} | {_number(s['insertion_mean'])} "
            f"| {_number(s['deletion_mean'])} | {beats} | {_number(s['seconds_mean'], 2)} "
            f"| {_number(s['forward_passes_mean'], 0)} |"
        )
    r = block["random"]
    lines.append(
        f"| random order ({orderings} orderings) | {_with_ci(r['srg_mean'], r['srg_ci'], True)} "
        f"| {_number(r['insertion_mean'])} | {_number(r['deletion_mean'])} | – "
        f"| {_number(r['seconds_mean'], 2)} | {_number(r['forward_passes_mean'], 0)} |"
    )
    lines += [
        "",
        "| paired on the same images | SRG difference (95 % CI) | Wilcoxon p | first higher on |",
        "|---|---|---|---|",
    ]
    comparisons = [
        (f"{title(a)} − {title(b)}", block["pairs"][f"{a} vs {b}"])
        for i, a in enumerate(methods)
        for b in methods[i + 1 :]
    ]
    comparisons += [(f"{title(m)} − random order", block["vs_random"][m]) for m in methods]
    for name, c in comparisons:
        higher = "–" if c["first_higher"] is None else f"{100 * c['first_higher']:.0f} %"
        lines.append(f"| {name} | {_with_ci(c['srg_diff_mean'], c['ci'], True)} | {_p(c['p_wilcoxon'])} | {higher} |")
    return "\n".join(lines)


def markdown(summary: dict[str, Any], methods: Sequence[str]) -> str:
    """summary.md: what was run, the tables over every image, then per group."""
    params = summary["params"]
    shown = ", ".join(
        f"{k} {v}"
        for k, v in params.items()
        if k
        not in (
            "model",
            "methods",
            "manifest",
            "params_hash",
            "limit",
            "bootstrap_resamples",
            "confidence",
            "class_column",
        )
    )
    parts = [
        f"# Faithfulness over a data set: {params['model']} on {Path(params['manifest']).name}",
        "",
        f"{summary['n']} images with every result ({summary['n_images']} in the manifest"
        f"{'' if params.get('limit') is None else ', limit ' + str(params['limit'])}; {summary['n_failed']} failed"
        f"{'' if not summary['n_missing'] else '; ' + str(summary['n_missing']) + ' not yet computed'}"
        f"{'' if not summary.get('n_ill_conditioned') else '; ' + str(summary['n_ill_conditioned']) + ' left out as ill-conditioned (below)'}). "
        f"SRG = insertion AUC − deletion AUC (random order ≈ 0). Means with 95 % percentile-bootstrap CIs "
        f'({params["bootstrap_resamples"]} resamples, seed {params["seed"]}); "beats random": the share of images '
        "where the method's SRG is above the random reference's mean and every random ordering's; seconds and "
        "forward passes are the map's own (the curves' are extra). Wilcoxon p-values are two-sided and "
        "not corrected for the number of comparisons.",
        "",
        tables(summary, methods, params["n_random"]),
        "",
        f"Parameters: {shown}.",
    ]
    for column, groups in summary.get("groups", {}).items():
        for value, block in groups.items():
            parts += ["", f"## {column} = {value}: {block['n']} images", "", tables(block, methods, params["n_random"])]
    if summary.get("ill_conditioned"):
        parts += [
            "",
            "## Ill-conditioned images (left out of every table)",
            "",
            "The photo scores (almost) as low as the fully removed image, so the curves' normalisation "
            "(substrate 0, photo 1) divides by about zero: the random reference's normalised AUC is beyond "
            "±3. Their rows are in rows.csv.",
            "",
        ]
        parts += [f"- {e['image']} ({e['prompt']!r})" for e in summary["ill_conditioned"]]
    if summary["errors"]:
        parts += ["", "## Failed images", ""]
        parts += [f"- {e['image']} ({e['prompt']!r}): {e['error']}" for e in summary["errors"][:50]]
        if len(summary["errors"]) > 50:
            parts.append(f"- … and {len(summary['errors']) - 50} more (rows.csv has them all)")
    return "\n".join(parts) + "\n"


def plot(
    summary: dict[str, Any], srgs: dict[str, np.ndarray], methods: Sequence[str], path: Path, seed: int = 0
) -> None:
    """summary.png: per method (and the random reference) each image's SRG as a point, the mean
    as a bar with its 95 % CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*methods, RANDOM]
    jitter = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(names), 4.2), dpi=120)
    for i, name in enumerate(names):
        values = srgs.get(name, np.zeros(0))
        colour = METHODS[name].colour if name in METHODS else "#7f7f7f"
        ax.scatter(i + jitter.uniform(-0.18, 0.18, values.size), values, s=14, alpha=0.5, color=colour, linewidths=0)
        s = summary["random"] if name == RANDOM else summary["methods"][name]
        if s["srg_mean"] is not None:
            low, high = s["srg_ci"]
            ax.errorbar(
                i + 0.3,
                s["srg_mean"],
                yerr=[[s["srg_mean"] - low], [high - s["srg_mean"]]],
                fmt="o",
                color="black",
                capsize=4,
                markersize=5,
            )
    ax.axhline(0.0, color="#999999", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(names)), [title(n) if n != RANDOM else "random order" for n in names])
    ax.set_ylabel("SRG = insertion AUC − deletion AUC")
    ax.set_title(f"{summary['params']['model']}: SRG per image (n = {summary['n']}), mean and 95 % CI", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
