"""The summary of a data-set run: per method the mean SRG with a seeded 95 % bootstrap CI, the
mean AUCs, how often it beats the random reference, its cost; paired comparisons between methods
(and against the random reference) on the same images: mean SRG difference with its bootstrap CI
and the Wilcoxon signed-rank p-value (scipy.stats.wilcoxon).

Statistics are taken over the complete images: those with a row without error for every method
asked and for the random reference, so every comparison is paired on the same images, less the
ill-conditioned ones, which are counted and listed: images where the photo scores (almost) as low
as the fully removed image, so the normalisation (substrate 0, photo 1) divides by about zero and
one such image would swamp every mean (ImageNet's n04041544_radio on the bundled model: photo
-6.328, black -6.332, AUCs near +-1700). They are found by the random reference, the same for
every method: its normalised insertion or deletion AUC beyond +-ILL_CONDITIONED_AUC (over the 200
ImageNet samples it otherwise stays within +-0.7).
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
from .rows import RANDOM

CONFIDENCE = 0.95
RESAMPLES = 10_000
ILL_CONDITIONED_AUC = 3.0

Rows = dict[tuple[str, ...], dict[str, Any]]  # key (image, prompt, contrast, target, method) -> typed row


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
    return float(values.mean()) if values.size else None


def _paired(a: np.ndarray, b: np.ndarray, index: np.ndarray) -> dict[str, Any]:
    differences = a - b
    return {
        "srg_diff_mean": _mean(differences),
        "ci": bootstrap_ci(differences, index),
        "p_wilcoxon": wilcoxon_p(differences),
        "first_higher": float(np.mean(differences > 0)) if differences.size else None,
    }


def finished(rows: Rows, items: Sequence[Item], methods: Sequence[str]) -> list[Item]:
    """The items with a row without error for every method and for the random reference."""
    return [
        item
        for item in items
        if all((row := rows.get(item.key + (m,))) is not None and not row.get("error") for m in (*methods, RANDOM))
    ]


def ill_conditioned(rows: Rows, item: Item) -> bool:
    """Whether the item's normalised curves divide by about zero (see the module's note)."""
    reference = rows[item.key + (RANDOM,)]
    return any(
        abs(reference[c]) > ILL_CONDITIONED_AUC
        for c in ("insertion_auc", "deletion_auc")
        if reference.get(c) is not None and math.isfinite(reference[c])
    )


def complete(rows: Rows, items: Sequence[Item], methods: Sequence[str]) -> list[Item]:
    """The finished items whose normalisation is well conditioned: what the statistics are taken over."""
    return [item for item in finished(rows, items, methods) if not ill_conditioned(rows, item)]


def block(
    rows: Rows, items: Sequence[Item], methods: Sequence[str], seed: int, resamples: int = RESAMPLES
) -> dict[str, Any]:
    """The statistics of ``methods`` over ``items``' complete images (see the module's note)."""
    kept = complete(rows, items, methods)
    n = len(kept)
    # One set of resamples for every figure of the block: the CIs of a pair are paired too.
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n)) if n else np.zeros((0, 0), int)

    def column(method: str, name: str) -> np.ndarray:
        return np.array([rows[item.key + (method,)][name] for item in kept], dtype=float)

    def figures(method: str) -> dict[str, Any]:
        srg, insertion = column(method, "srg"), column(method, "insertion_auc")
        deletion = column(method, "deletion_auc")
        out = {
            "n": n,
            "srg_mean": _mean(srg),
            "srg_ci": bootstrap_ci(srg, index),
            "insertion_mean": _mean(insertion),
            "insertion_ci": bootstrap_ci(insertion, index),
            "deletion_mean": _mean(deletion),
            "deletion_ci": bootstrap_ci(deletion, index),
        }
        if method != RANDOM:
            out["beats_random"] = _mean(column(method, "beats_random"))
        out["seconds_mean"] = _mean(column(method, "seconds"))
        out["forward_passes_mean"] = _mean(column(method, "forward_passes"))
        if method != RANDOM:
            out["backward_passes_mean"] = _mean(column(method, "backward_passes"))
            out["curve_forward_passes_mean"] = _mean(column(method, "curve_forward_passes"))
        return out

    srgs = {m: column(m, "srg") for m in (*methods, RANDOM)}
    return {
        "n": n,
        "methods": {m: figures(m) for m in methods},
        "random": figures(RANDOM),
        "pairs": {f"{a} vs {b}": _paired(srgs[a], srgs[b], index) for a, b in combinations(methods, 2)},
        "vs_random": {m: _paired(srgs[m], srgs[RANDOM], index) for m in methods},
    }


def item_value(rows: Rows, item: Item, column: str, methods: Sequence[str]) -> str | None:
    """The item's value in ``column``: a manifest column, or one the rows hold (top1, correct)."""
    if column in item.extras:
        return item.extras[column]
    for m in (*methods, RANDOM):
        row = rows.get(item.key + (m,))
        if row is not None and row.get(column) not in (None, ""):
            return str(row[column])
    return None


def summarize(
    rows: Rows,
    items: Sequence[Item],
    methods: Sequence[str],
    seed: int,
    resamples: int = RESAMPLES,
    group_by: Sequence[str] = (),
) -> dict[str, Any]:
    """The whole summary: the block over every item, the failed images, and a block per value of
    each ``group_by`` column (e.g. ``correct``: the images the model classifies right and wrong)."""
    failed = []
    for item in items:
        errors = [
            rows[item.key + (m,)]["error"]
            for m in (*methods, RANDOM)
            if item.key + (m,) in rows and rows[item.key + (m,)].get("error")
        ]
        if errors:
            failed.append({"image": item.image, "prompt": item.prompt, "error": errors[0]})
    missing = sum(1 for item in items if any(item.key + (m,) not in rows for m in (*methods, RANDOM)))
    ill = [
        {"image": item.image, "prompt": item.prompt}
        for item in finished(rows, items, methods)
        if ill_conditioned(rows, item)
    ]
    out = {
        **block(rows, items, methods, seed, resamples),
        "n_images": len(items),
        "n_failed": len(failed),
        "n_missing": missing,
        "errors": failed,
        "n_ill_conditioned": len(ill),
        "ill_conditioned": ill,
    }
    groups: dict[str, dict[str, Any]] = {}
    for column in group_by:
        values = [item_value(rows, item, column, methods) for item in items]
        groups[column] = {}
        for value in sorted({v for v in values if v is not None}, key=_natural):
            chosen = [item for item, v in zip(items, values) if v == value]
            groups[column][value] = {**block(rows, chosen, methods, seed, resamples), "n_images": len(chosen)}
    out["groups"] = groups
    return out


def _natural(text: str) -> tuple:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)
