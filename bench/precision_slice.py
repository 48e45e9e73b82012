"""What a lower precision on the compiled runtime would change: the per-image SRGs of a data-set run
with OpenVINO in bf16 (its default on AVX-512 BF16 CPUs) against the same run in f32, or the
runtime on against off.

    python bench/precision_slice.py compare DIR_A DIR_B            # two evaluate folders, paired
    python bench/precision_slice.py bf16 --out DIR [--limit 16] [--manifest CSV] [--score-substrates black,blur,road]
        [--methods gradcam,ig,region] [--scope all|search]

``bf16`` runs ``explainers.evaluate`` in this process with the runtime compiled in bf16 and its
probe (which would refuse it: the f32 tolerance is 5e-5 on the logits) switched off -- for this
measurement only; the engine has no such setting. ``compare`` pairs the rows of two folders by
image, method and substrate and prints, per method and substrate, the largest |SRG difference|, the mean difference with
a bootstrap 95 % CI, and the same for the insertion and deletion AUCs. The lead's bar for a lower
precision: every paired difference's CI within +-0.005 over the 200 photos.
"""

from __future__ import annotations

import argparse
import contextvars
import csv
import dataclasses
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from _common import imagenet_samples

from explainers.evaluate.stats import bootstrap_ci


def read(folder: Path) -> dict[tuple[str, str, str], dict[str, float]]:
    out = {}
    with (folder / "rows.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row.get("error"):
                continue
            out[row["image"], row["method"], row.get("substrate", "")] = {
                k: float(row[k]) for k in ("srg", "insertion_auc", "deletion_auc") if row.get(k) not in (None, "")
            }
    return out


def compare(a: Path, b: Path) -> None:
    first, second = read(a), read(b)
    keys = sorted(set(first) & set(second))
    by_method: dict[tuple[str, str], list[tuple[str, str, str]]] = defaultdict(list)
    for key in keys:
        by_method[key[1], key[2]].append(key)
    print(f"{a} against {b}: {len({k[0] for k in keys})} images in both\n")
    print(
        "| method | substrate | images | max abs SRG diff | mean SRG diff [95 % CI] | max abs insertion AUC diff "
        "| max abs deletion AUC diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for (method, substrate), rows in sorted(by_method.items()):
        diffs = {
            c: np.array([first[k][c] - second[k][c] for k in rows if c in first[k] and c in second[k]])
            for c in ("srg", "insertion_auc", "deletion_auc")
        }
        finite = {c: d[np.isfinite(d)] for c, d in diffs.items()}
        srg = finite["srg"]
        index = np.random.default_rng(0).integers(0, len(srg), size=(10_000, len(srg)))
        ci = bootstrap_ci(srg, index) or [math.nan, math.nan]
        print(
            f"| {method} | {substrate} | {len(srg)} | {np.abs(srg).max():.2e} | {srg.mean():+.2e} [{ci[0]:+.2e}, {ci[1]:+.2e}] "
            f"| {np.abs(finite['insertion_auc']).max():.2e} | {np.abs(finite['deletion_auc']).max():.2e} |"
        )


SEARCHING = contextvars.ContextVar("searching", default=False)  # inside region search or RISE (--scope search)
SEARCH_METHODS = ("region", "rise")


def run_bf16(manifest: Path, out: Path, limit: int, threads: int, substrates: str, methods: str, scope: str) -> None:
    """An evaluate run with the bundled network's forward-only graphs compiled in bf16. The
    gradient graphs (IG) stay f32 and Grad-CAM stays on torch, so their maps are f32's and their
    differences are what bf16 curves change; region search and RISE search in bf16 too. With
    ``scope="search"`` only the searches' passes are bf16 (their own graphs, cached apart)."""
    from explainers import methods as registry
    from explainers.evaluate import evaluate
    from explainers.models import runtime

    f32_checked = runtime.CompiledForward._checked
    f32_compiled_model = runtime.CompiledForward._compiled_model
    f32_get = runtime.CompiledForward._get

    def checked_bf16(self, model, threads_, probe, expected, single_image):
        self._bf16 = True
        try:
            compiled, error = f32_checked(self, model, threads_, probe, expected, single_image)
        finally:
            self._bf16 = False
        self.last_probe_error = error
        print(f"bf16 probe: max |logit difference| from torch f32 {error:.3g}", flush=True)
        return compiled, 0.0  # accepted: this measurement is about what bf16 changes

    def compiled_model(self, model, threads_):
        if not getattr(self, "_bf16", False):
            return f32_compiled_model(self, model, threads_)
        return runtime._ov_core().compile_model(
            model,
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": runtime._openvino.Type.bf16,
                "INFERENCE_NUM_THREADS": threads_,
                "PERFORMANCE_HINT": "THROUGHPUT",
                "NUM_STREAMS": threads_,
                "ENABLE_CPU_PINNING": False,
            },
        )

    def get_by_scope(self, shape, fingerprint):
        """Forward graphs from a bf16 cache of their own inside the searches, f32's elsewhere."""
        if not SEARCHING.get():
            return f32_get(self, shape, fingerprint)
        f32_graphs = self._compiled
        self._compiled = self.__dict__.setdefault("_bf16_graphs", {})
        try:
            return f32_get(self, shape, fingerprint)
        finally:
            self._compiled = f32_graphs

    def checked_by_scope(self, model, threads_, probe, expected, single_image):
        if SEARCHING.get():  # (only _get compiles, and inside a search that is get_by_scope)
            return checked_bf16(self, model, threads_, probe, expected, single_image)
        return f32_checked(self, model, threads_, probe, expected, single_image)

    def searching(explain):
        def explain_in_bf16(*args, **kwargs):
            token = SEARCHING.set(True)
            try:
                return explain(*args, **kwargs)
            finally:
                SEARCHING.reset(token)

        return explain_in_bf16

    runtime.CompiledForward._compiled_model = compiled_model
    if scope == "all":
        runtime.CompiledForward._checked = checked_bf16
    else:
        runtime.CompiledForward._checked = checked_by_scope
        runtime.CompiledForward._get = get_by_scope
        for name in SEARCH_METHODS:
            method = registry.METHODS[name]
            registry.METHODS[name] = dataclasses.replace(method, explain=searching(method.explain))
    evaluate(
        manifest,
        out,
        methods=methods or None,
        limit=limit,
        workers=1,
        threads=threads,
        class_column="imagenet_index",
        progress=False,
        score_substrates=tuple(substrates.split(",")),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare")
    c.add_argument("first", type=Path)
    c.add_argument("second", type=Path)
    r = sub.add_parser("bf16")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--manifest", type=Path, default=imagenet_samples() / "manifest.csv")
    r.add_argument("--limit", type=int, default=16)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--score-substrates", default="black,blur,road", help="as evaluate's (the README table's)")
    r.add_argument("--methods", default="", help="as evaluate's (default: its default methods)")
    r.add_argument(
        "--scope", choices=("all", "search"), default="all", help="bf16 for every forward pass, or the searches' only"
    )
    args = parser.parse_args()
    if args.command == "compare":
        compare(args.first, args.second)
    else:
        run_bf16(args.manifest, args.out, args.limit, args.threads, args.score_substrates, args.methods, args.scope)


if __name__ == "__main__":
    main()
