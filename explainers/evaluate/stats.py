"""The summary of a data-set run, per scoring substrate: per method the mean SRG (on the curves
clipped to [0, 1]) with a seeded 95 % bootstrap CI, the unclipped SRG, the insertion peak and the
paper-comparable raw-probability AUCs beside it, the mean AUCs, how often it beats the random
reference, its cost; paired comparisons between methods (and against the random reference) on the
same images: mean SRG difference with its bootstrap CI and the Wilcoxon signed-rank p-value
(scipy.stats.wilcoxon).

Statistics are taken, on each scoring substrate, over the complete images: those with a row
without error for every method asked and for the random reference on that substrate, so every
comparison is paired on the same images, less the ill-conditioned ones, which are counted and
listed: images whose photo does not beat the fully removed image by the margin its score's
meaning declares (``min_span``: ln 2 for log-probabilities and logits, the photo at least twice
as likely; 0.05 for probabilities; ``types.MIN_SPAN``), so the normalisation (substrate 0, photo 1)
divides by a difference that is mostly noise (ImageNet's n04041544_radio on the bundled model:
photo -6.328, black -6.332). The rule reads the photo's own scores on that substrate
(``full_score``, ``substrate_score`` in rows.csv), the same for every method.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats

from .manifest import Item
from .rows import ITEM, RANDOM

CONFIDENCE = 0.95
RESAMPLES = 10_000
# The rule before the photo's own scores were in the rows (a random reference's normalised AUC beyond
# +-3); no longer used by the summary, kept for bench/region_search_dataset.py's own unclipped curves.
ILL_CONDITIONED_AUC = 3.0
CORRECT = "correct"  # the group of a class column: "1" the photos the model classifies right, "0" wrong

Rows = dict[tuple[str, ...], dict[str, Any]]  # (image, prompt, contrast, target, method, substrate) -> typed row
# Per method and scoring substrate: the summary's name of each row column's mean (and CI where asked).
FIGURES = (
    ("srg", "srg", True),
    ("srg_unclipped", "srg_unclipped", True),
    ("insertion_auc", "insertion", True),
    ("deletion_auc", "deletion", True),
    ("insertion_auc_unclipped", "insertion_unclipped", False),
    ("deletion_auc_unclipped", "deletion_unclipped", False),
    ("insertion_peak", "insertion_peak", True),
    ("overshoot_area", "overshoot_area", False),
    ("deletion_floor", "deletion_floor", False),
    ("insertion_auc_probability", "insertion_auc_probability", True),
    ("deletion_auc_probability", "deletion_auc_probability", True),
)
# peak_above_photo: the share of images whose insertion curve rises clearly above the photo's score
# (by the margin at which the app says so, report.PEAK_MARGIN; below it the overshoot is the model's
# noise on nearly whole photos).
PEAK_ABOVE = 1.02


def bootstrap_ci(values: np.ndarray, index: np.ndarray, confidence: float = CONFIDENCE) -> list[float] | None:
    """Percentile bootstrap CI of the mean of ``values`` over the resamples ``index`` ([B, n])."""
    if values.size == 0:
        return None
    means = values[index].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    return [float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))]


def wilcoxon_p(differences: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value that the paired differences centre on 0; None under
    two pairs; 1.0 when every difference is 0 (nothing to rank)."""
    if differences.size < 2:
        return None
    if not np.any(differences != 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample and tie notes: the p-value stays right
        p = float(stats.wilcoxon(differences).pvalue)
    return p if math.isfinite(p) else None


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)] if values.size else values
    return float(finite.mean()) if finite.size == values.size and values.size else None


def _ci(values: np.ndarray, index: np.ndarray) -> list[float] | None:
    """The bootstrap CI where every value is a number (a model without probabilities has none)."""
    return bootstrap_ci(values, index) if values.size and np.isfinite(values).all() else None


def _paired(a: np.ndarray, b: np.ndarray, index: np.ndarray, a_raw: np.ndarray, b_raw: np.ndarray) -> dict[str, Any]:
    differences = a - b
    unclipped = a_raw - b_raw
    return {
        "srg_diff_mean": _mean(differences),
        "ci": bootstrap_ci(differences, index),
        "p_wilcoxon": wilcoxon_p(differences),
        "first_higher": float(np.mean(differences > 0)) if differences.size else None,
        "srg_unclipped_diff_mean": _mean(unclipped),
        "srg_unclipped_ci": _ci(unclipped, index),
    }


def _key(item: Item, method: str, substrate: str) -> tuple[str, ...]:
    return (*item.key, method, substrate)


def finished(rows: Rows, items: Sequence[Item], methods: Sequence[str], substrate: str) -> list[Item]:
    """The items with a row without error on ``substrate`` for every method and for the random reference."""
    return [
        item
        for item in items
        if all(
            (row := rows.get(_key(item, m, substrate))) is not None and not row.get("error") for m in (*methods, RANDOM)
        )
    ]


def ill_conditioned(rows: Rows, item: Item, substrate: str) -> bool:
    """Whether the photo fails to beat the fully removed image on ``substrate`` by its score's
    ``min_span`` (see the module's note); the random reference's row holds the photo's scores."""
    row = rows[_key(item, RANDOM, substrate)]
    full, empty, margin = row.get("full_score"), row.get("substrate_score"), row.get("min_span")
    if full is None or empty is None or not (math.isfinite(full) and math.isfinite(empty)):
        return True  # no scores to normalise by
    return bool(full - empty < (0.0 if margin is None or margin != margin else margin))


def complete(rows: Rows, items: Sequence[Item], methods: Sequence[str], substrate: str) -> list[Item]:
    """The finished items whose normalisation on ``substrate`` is well conditioned: what that
    substrate's statistics are taken over."""
    return [item for item in finished(rows, items, methods, substrate) if not ill_conditioned(rows, item, substrate)]


def block(
    rows: Rows,
    items: Sequence[Item],
    methods: Sequence[str],
    substrate: str,
    seed: int,
    resamples: int = RESAMPLES,
) -> dict[str, Any]:
    """The statistics of ``methods`` over ``items``' complete images on ``substrate`` (see the
    module's note)."""
    kept = complete(rows, items, methods, substrate)
    n = len(kept)
    # One set of resamples for every figure of the block: the CIs of a pair are paired too.
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n)) if n else np.zeros((0, 0), int)

    def column(method: str, name: str) -> np.ndarray:
        values = [rows[_key(item, method, substrate)].get(name) for item in kept]
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    def figures(method: str) -> dict[str, Any]:
        out: dict[str, Any] = {"n": n}
        for row_column, name, with_ci in FIGURES:
            values = column(method, row_column)
            out[f"{name}_mean"] = _mean(values)
            if with_ci:
                out[f"{name}_ci"] = _ci(values, index)
        peaks = column(method, "insertion_peak")
        out["peak_above_photo"] = float(np.mean(peaks > PEAK_ABOVE)) if n else None
        if method != RANDOM:
            out["beats_random"] = _mean(column(method, "beats_random"))
        out["seconds_mean"] = _mean(column(method, "seconds"))
        out["forward_passes_mean"] = _mean(column(method, "forward_passes"))
        if method != RANDOM:
            out["backward_passes_mean"] = _mean(column(method, "backward_passes"))
            out["curve_forward_passes_mean"] = _mean(column(method, "curve_forward_passes"))
            out["curve_seconds_mean"] = _mean(column(method, "curve_seconds"))
        return out

    srgs = {m: column(m, "srg") for m in (*methods, RANDOM)}
    raw = {m: column(m, "srg_unclipped") for m in (*methods, RANDOM)}
    return {
        "n": n,
        "probability_mean": _mean(column(RANDOM, "probability")),
        "methods": {m: figures(m) for m in methods},
        "random": figures(RANDOM),
        "pairs": {f"{a} vs {b}": _paired(srgs[a], srgs[b], index, raw[a], raw[b]) for a, b in combinations(methods, 2)},
        "vs_random": {m: _paired(srgs[m], srgs[RANDOM], index, raw[m], raw[RANDOM]) for m in methods},
    }


def item_value(rows: Rows, item: Item, column: str, methods: Sequence[str], substrates: Sequence[str]) -> str | None:
    """The item's value in ``column``: a manifest column, or one the rows hold (top1, correct)."""
    if column in item.extras:
        return item.extras[column]
    for m in (*methods, RANDOM):
        for substrate in substrates:
            row = rows.get(_key(item, m, substrate))
            if row is not None and row.get(column) not in (None, ""):
                return str(row[column])
    return None


def substrate_block(
    rows: Rows,
    items: Sequence[Item],
    methods: Sequence[str],
    substrate: str,
    substrates: Sequence[str],
    seed: int,
    resamples: int = RESAMPLES,
    group_by: Sequence[str] = (),
) -> dict[str, Any]:
    """One scoring substrate's part of the summary: the block over every item, its ill-conditioned
    images, and a block per value of each ``group_by`` column (``correct``: always both "1", the
    photos the model classifies right, and "0", the wrong ones)."""
    ill = [
        {"image": item.image, "prompt": item.prompt}
        for item in finished(rows, items, methods, substrate)
        if ill_conditioned(rows, item, substrate)
    ]
    out = {
        **block(rows, items, methods, substrate, seed, resamples),
        "n_ill_conditioned": len(ill),
        "ill_conditioned": ill,
    }
    groups: dict[str, dict[str, Any]] = {}
    for column in group_by:
        values = [item_value(rows, item, column, methods, substrates) for item in items]
        found = {v for v in values if v is not None}
        ordered = (
            ["1", "0", *sorted(found - {"1", "0"}, key=_natural)] if column == CORRECT else sorted(found, key=_natural)
        )
        groups[column] = {}
        for value in ordered:
            chosen = [item for item, v in zip(items, values) if v == value]
            groups[column][value] = {
                **block(rows, chosen, methods, substrate, seed, resamples),
                "n_images": len(chosen),
            }
    out["groups"] = groups
    return out


def summarize(
    rows: Rows,
    items: Sequence[Item],
    methods: Sequence[str],
    seed: int,
    resamples: int = RESAMPLES,
    group_by: Sequence[str] = (),
    substrates: Sequence[str] = ("black",),
) -> dict[str, Any]:
    """The whole summary: per scoring substrate (``substrates``) its block, ill-conditioned images
    and groups (``substrate_block``); the first substrate's at the top level too; the failed images
    and the images still missing rows."""
    failed = []
    for item in items:
        errors = [
            rows[key]["error"]
            for m in (*methods, RANDOM)
            for s in substrates
            if (key := _key(item, m, s)) in rows and rows[key].get("error")
        ]
        if errors:
            failed.append({"image": item.image, "prompt": item.prompt, "error": errors[0]})
    missing = sum(
        1 for item in items if any(_key(item, m, s) not in rows for m in (*methods, RANDOM) for s in substrates)
    )
    blocks = {s: substrate_block(rows, items, methods, s, substrates, seed, resamples, group_by) for s in substrates}
    return {
        **blocks[substrates[0]],
        "substrates": blocks,
        "n_images": len(items),
        "n_failed": len(failed),
        "n_missing": missing,
        "errors": failed,
    }


SanityRows = dict[tuple[str, ...], dict[str, Any]]  # rows.SANITY_KEY -> typed sanity row


def sanity_summary(
    rows: SanityRows, items: Sequence[Item], methods: Sequence[str], seed: int, resamples: int = RESAMPLES
) -> dict[str, Any]:
    """``evaluate --sanity`` over the data set, per method: for each stage of the cascade, the mean
    Spearman and SSIM of the randomised map with the trained one (with bootstrap CIs) over the
    images whose randomised map is not blank, and the share that is blank (a blank map is no
    pass); and the reference rows: the trained map's mean correlation with a centred Gaussian blob
    and with the photo's edge magnitude, which say what a correlation is worth."""
    out: dict[str, Any] = {}
    wanted = {item.key for item in items}
    for method in methods:
        mine = [r for key, r in rows.items() if key[:ITEM] in wanted and key[ITEM] == method and not r.get("error")]
        stages: dict[int, list[dict[str, Any]]] = {}
        references: dict[str, list[float]] = {}
        for r in mine:
            if r.get("kind") == "stage" and r.get("stage_index") is not None:
                stages.setdefault(int(r["stage_index"]), []).append(r)
            elif r.get("kind") == "reference":  # NaN: the trained map itself is blank
                value = r.get("spearman")
                references.setdefault(str(r["stage"]), []).append(math.nan if value is None else float(value))
        entries = []
        for index in sorted(stages):
            group = stages[index]
            shown = [r for r in group if not r.get("blank")]
            entry = {
                "stage": group[0]["stage"],
                "stage_index": index,
                "n": len(group),
                "n_blank": len(group) - len(shown),
            }
            entry["blank_share"] = entry["n_blank"] / len(group) if group else None
            for name in ("spearman", "ssim"):
                found = np.array([r[name] for r in shown if r.get(name) is not None], dtype=float)
                found = found[np.isfinite(found)]
                index_ = np.random.default_rng(seed).integers(0, found.size, size=(resamples, found.size))
                entry[f"{name}_mean"] = _mean(found)
                entry[f"{name}_ci"] = _ci(found, index_)
            entries.append(entry)
        refs = {}
        for name, values in references.items():
            everything = np.array(values, dtype=float)
            array = everything[np.isfinite(everything)]
            index_ = np.random.default_rng(seed).integers(0, array.size, size=(resamples, array.size))
            refs[name] = {
                "n": int(everything.size),
                "n_blank": int(everything.size - array.size),
                "spearman_mean": _mean(array),
                "spearman_ci": _ci(array, index_),
            }
        out[method] = {
            "n_images": len({r["image"] + "|" + r["prompt"] for r in mine}),
            "stages": entries,
            "references": refs,
        }
    return out


def _natural(text: str) -> tuple:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)
