"""summary.md (the tables a paper would print, per scoring substrate, the correctly classified
photos first) and summary.png (SRG per method on the headline substrate: a point per image, the
mean and its CI) from a data-set run's summary and rows."""

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


def _peak(mean: float | None, share: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" + ("" if share is None else f" ({100 * share:.0f} % above 1.02)")


def tables(block: dict[str, Any], methods: Sequence[str], orderings: int) -> str:
    """The methods table, then the paired comparisons, of one block of the summary."""
    lines = [
        "| method | SRG (95 % CI) | SRG unclipped | insertion AUC | deletion AUC | insertion peak "
        "| beats random | seconds | forward passes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        s = block["methods"][m]
        beats = "–" if s["beats_random"] is None else f"{100 * s['beats_random']:.0f} %"
        lines.append(
            f"| {title(m)} | {_with_ci(s['srg_mean'], s['srg_ci'], True)} | {_signed(s['srg_unclipped_mean'])} "
            f"| {_number(s['insertion_mean'])} | {_number(s['deletion_mean'])} "
            f"| {_peak(s['insertion_peak_mean'], s['peak_above_photo'])} | {beats} | {_number(s['seconds_mean'], 2)} "
            f"| {_number(s['forward_passes_mean'], 0)} |"
        )
    r = block["random"]
    lines.append(
        f"| random order ({orderings} orderings) | {_with_ci(r['srg_mean'], r['srg_ci'], True)} "
        f"| {_signed(r['srg_unclipped_mean'])} | {_number(r['insertion_mean'])} | {_number(r['deletion_mean'])} "
        f"| {_peak(r['insertion_peak_mean'], r['peak_above_photo'])} | – "
        f"| {_number(r['seconds_mean'], 2)} | {_number(r['forward_passes_mean'], 0)} |"
    )
    lines += [
        "",
        "| paired on the same images | SRG difference (95 % CI) | unclipped | Wilcoxon p | first higher on |",
        "|---|---|---|---|---|",
    ]
    comparisons = [
        (f"{title(a)} − {title(b)}", block["pairs"][f"{a} vs {b}"])
        for i, a in enumerate(methods)
        for b in methods[i + 1 :]
    ]
    comparisons += [(f"{title(m)} − random order", block["vs_random"][m]) for m in methods]
    for name, c in comparisons:
        higher = "–" if c["first_higher"] is None else f"{100 * c['first_higher']:.0f} %"
        lines.append(
            f"| {name} | {_with_ci(c['srg_diff_mean'], c['ci'], True)} "
            f"| {_with_ci(c.get('srg_unclipped_diff_mean'), c.get('srg_unclipped_ci'), True)} "
            f"| {_p(c['p_wilcoxon'])} | {higher} |"
        )
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def leader(block: dict[str, Any], methods: Sequence[str]) -> str:
    """One sentence: the method with the highest mean SRG in ``block`` and whether its lead over
    the next one is clear (the paired 95 % CI of the difference above 0)."""
    ranked = sorted(
        (m for m in methods if block["methods"][m]["srg_mean"] is not None),
        key=lambda m: block["methods"][m]["srg_mean"],
        reverse=True,
    )
    if not ranked:
        return "no image has every result yet"
    best = ranked[0]
    text = f"{title(best)} has the highest SRG ({block['methods'][best]['srg_mean']:+.3f})"
    if len(ranked) < 2:
        return text
    second = ranked[1]
    pair = block["pairs"].get(f"{best} vs {second}")
    sign = 1.0
    if pair is None:
        pair, sign = block["pairs"][f"{second} vs {best}"], -1.0
    ci = pair["ci"]
    if ci is None:
        return f"{text}, ahead of {title(second)}"
    low, high = sorted((sign * ci[0], sign * ci[1]))
    clear = "a clear lead" if low > 0 else "not a clear lead (the CI holds 0)"
    return f"{text}, ahead of {title(second)} by {sign * pair['srg_diff_mean']:+.3f} [{low:+.3f}, {high:+.3f}]: {clear}"


def _sanity(sanity: dict[str, Any], methods: Sequence[str]) -> list[str]:
    parts = [
        "",
        "## Sanity check (model-parameter randomisation, Adebayo et al. 2018)",
        "",
        "Each map again on the model randomised from the top layer down, compared with the trained model's map "
        "(Spearman of the absolute values, SSIM): falling towards 0 is a pass. A blank randomised map (every value "
        "equal) is no pass: it is counted apart, and the means are over the maps that are not blank. The reference "
        "rows say what a correlation is worth: the trained map against a centred Gaussian blob (centre bias) and "
        "against the photo's edge magnitude (image structure).",
    ]
    for m in methods:
        entry = sanity.get(m)
        if not entry:
            continue
        parts += [
            "",
            f"### {title(m)} ({entry['n_images']} images)",
            "",
            "| randomised | n | blank | Spearman (95 % CI) | SSIM (95 % CI) |",
            "|---|---|---|---|---|",
        ]
        for stage in entry["stages"]:
            blank = "–" if stage["blank_share"] is None else f"{100 * stage['blank_share']:.0f} %"
            parts.append(
                f"| {stage['stage']} | {stage['n']} | {blank} | {_with_ci(stage['spearman_mean'], stage['spearman_ci'], True)} "
                f"| {_with_ci(stage['ssim_mean'], stage['ssim_ci'], True)} |"
            )
        names = {
            "centre": "reference: trained map vs a centred blob",
            "edges": "reference: trained map vs the photo's edges",
        }
        for key, label in names.items():
            ref = entry["references"].get(key)
            if ref:
                parts.append(
                    f"| {label} | {ref['n']} | – | {_with_ci(ref['spearman_mean'], ref['spearman_ci'], True)} | – |"
                )
    return parts


def markdown(summary: dict[str, Any], methods: Sequence[str]) -> str:
    """summary.md: what was run; per scoring substrate the correctly classified photos first (the
    headline), then the misclassified ones, then every photo and the other groups; the sanity check."""
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
    substrates = summary.get("substrates") or {params["substrate"]: summary}
    made_on = params["substrate"]
    orderings = params["n_random"]
    parts = [
        f"# Faithfulness over a data set: {params['model']} on {Path(params['manifest']).name}",
        "",
        f"{summary['n_images']} images in the manifest"
        f"{'' if params.get('limit') is None else ' (limit ' + str(params['limit']) + ')'}; {summary['n_failed']} failed"
        f"{'' if not summary['n_missing'] else '; ' + str(summary['n_missing']) + ' not yet computed'}. "
        f"The maps are made with the {made_on} substrate; their curves are scored on "
        f"{', '.join(substrates)} (the first is the headline). "
        "SRG = insertion AUC − deletion AUC on the normalised curves (substrate 0, photo 1) clipped to [0, 1] "
        "(random order ≈ 0); beside it the unclipped SRG and the insertion curve's peak (above 1: a part of the "
        "photo alone scores higher than the whole; in brackets the share of images where it passes 1.02). Means with 95 % "
        f'percentile-bootstrap CIs ({params["bootstrap_resamples"]} resamples, seed {params["seed"]}); "beats '
        "random\": the share of images where the method's SRG is above the random reference's mean and every random "
        "ordering's; seconds and forward passes are the map's own (the curves' are extra). Photos whose score does "
        "not beat the fully removed image's by the margin their score declares are left out on that substrate "
        "(listed below). Wilcoxon p-values are two-sided and not corrected for the number of comparisons.",
    ]
    verdicts = []
    for substrate, block in substrates.items():
        correct = block.get("groups", {}).get("correct", {}).get("1")
        chosen, which = (correct, "the correctly classified photos") if correct else (block, "every photo")
        own = " (the maps' own substrate)" if substrate == made_on else ""
        verdicts.append(f"- On {substrate}{own}, over {which} ({chosen['n']}): {leader(chosen, methods)}.")
    parts += ["", "## Which map is most faithful", "", *verdicts]
    for substrate, block in substrates.items():
        own = (
            "the substrate the maps were made with"
            if substrate == made_on
            else "a substrate the maps were not made with"
        )
        parts += ["", f"## Scored on {substrate} ({own})"]
        groups = block.get("groups", {})
        correct = groups.get("correct", {})
        if correct:
            for value, words in (("1", "Correctly classified photos (the headline)"), ("0", "Misclassified photos")):
                entry = correct.get(value)
                if entry is not None:
                    parts += ["", f"### {words}: {entry['n']} images"]
                    parts += ["", tables(entry, methods, orderings)] if entry["n"] else []
        parts += ["", f"### Every photo: {block['n']} images", "", tables(block, methods, orderings)]
        for column, values in groups.items():
            if column == "correct":
                continue
            for value, entry in values.items():
                parts += ["", f"### {column} = {value}: {entry['n']} images", "", tables(entry, methods, orderings)]
        if block.get("ill_conditioned"):
            parts += [
                "",
                f"### Ill-conditioned on {substrate} (left out of its tables)",
                "",
                "The photo's score does not beat the fully removed image's by the margin its score declares "
                "(ln 2 for log-probabilities and logits, 0.05 for probabilities), so the curves' normalisation "
                "divides by a difference that is mostly noise. Their rows are in rows.csv.",
                "",
            ]
            parts += [f"- {e['image']} ({e['prompt']!r})" for e in block["ill_conditioned"]]
    if summary.get("sanity"):
        parts += _sanity(summary["sanity"], methods)
    parts += ["", f"Parameters: {shown}."]
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
    ax.set_ylabel("SRG = insertion AUC − deletion AUC (clipped)")
    first = summary["params"]["score_substrates"][0]
    ax.set_title(
        f"{summary['params']['model']}, scored on {first}: SRG per image (n = {summary['n']}), mean and 95 % CI",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
