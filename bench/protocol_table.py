"""The faithfulness protocol and the sanity check on the assets photos, bundled model, CLI defaults
(50 curve steps, seed 0, every method's default parameters).

    python bench/protocol_table.py                       # both parts, then the tables
    python bench/protocol_table.py --part srg            # SRG per method, substrate and random reference
    python bench/protocol_table.py --part sanity         # the sanity check's correlations per stage
    python bench/protocol_table.py --print-only          # the tables again from bench/.cache
    python bench/protocol_table.py --update region       # recompute one method in the cached SRG rows

Parts (and subsets: ``--photos``, ``--substrates``) can run in separate processes with their own
``--tag``; ``--print-only`` joins every cached file of a part.

Part ``srg``: per photo and substrate (black, blur, road), every method's map (Grad-CAM, integrated
gradients, region search, RISE) and its SRG = AUC(insertion) - AUC(deletion), next to the random
reference of 3 orderings of single pixels and of the 49 SLIC regions region search uses (the
method curves are scored once; the region reference costs its own passes).

Part ``sanity``: per photo, the model-parameter randomisation test (Adebayo et al., NeurIPS 2018;
explainers/sanity.py) for the methods (``--methods``; default all four) on the black substrate: Spearman of |map| and SSIM
against the trained model's map at each cumulative stage.

Costs are forward/backward passes (images through the model; exact) and wall seconds (noisy:
the load average is printed). Raw numbers go to bench/.cache/protocol_<part>_<tag>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from _common import CACHE, PHOTOS, header, load_average, photo_path

from explainers import api
from explainers.models import load_model
from explainers.types import beats_random

METHODS = ("gradcam", "ig", "region", "rise")
SUBSTRATES = ("black", "blur", "road")
STEPS = 50  # the CLI's curve steps


def prepared_request(adapter, photo: str, substrate: str, ranking: str = "pixels", methods=METHODS):
    request = api.validate(
        PHOTOS[photo], None, list(methods), curve_steps=STEPS, substrate=substrate, random_ranking=ranking
    )
    return request, api.prepare(photo_path(photo), request.target, adapter)


def run_srg(photos: list[str], substrates: list[str]) -> list[dict]:
    adapter = load_model("bundled")
    rows = []
    for photo in photos:
        for substrate in substrates:
            request, prepared = prepared_request(adapter, photo, substrate)
            maps = api.run_methods(prepared, request.methods, request.params)
            started = time.perf_counter()
            curves, pixel_ref = api.evaluate_maps(prepared, {n: m.values for n, m in maps.items()}, request.params)
            curve_seconds = time.perf_counter() - started
            regions_params = {**request.params, "random_ranking": "regions"}
            started = time.perf_counter()
            _, region_ref = api.evaluate_maps(prepared, {}, regions_params)  # the reference alone
            region_seconds = time.perf_counter() - started
            row = {
                "photo": photo,
                "substrate": substrate,
                "score": prepared.score,
                "methods": {
                    n: {
                        "srg": curves[n].srg,
                        "insertion": curves[n].insertion.auc,
                        "deletion": curves[n].deletion.auc,
                        "beats_pixels": beats_random(curves[n].srg, pixel_ref),
                        "beats_regions": beats_random(curves[n].srg, region_ref),
                        "forward": maps[n].forward_passes,
                        "backward": maps[n].backward_passes,
                        "seconds": maps[n].seconds,
                        "curve_forward": curves[n].insertion.forward_passes + curves[n].deletion.forward_passes,
                    }
                    for n in request.methods
                },
                "random": {
                    kind: {
                        "srg": ref.srg,
                        "srg_max": max(ref.srgs),
                        "insertion": ref.insertion.auc,
                        "deletion": ref.deletion.auc,
                        "forward": ref.insertion.forward_passes + ref.deletion.forward_passes,
                    }
                    for kind, ref in (("pixels", pixel_ref), ("regions", region_ref))
                },
                "curve_seconds": curve_seconds,
                "region_reference_seconds": region_seconds,
                "load": load_average(),
            }
            rows.append(row)
            print(
                f"{photo} {substrate}: "
                + ", ".join(f"{n} {v['srg']:+.3f}" for n, v in row["methods"].items())
                + f"; random pixels {pixel_ref.srg:+.3f}, regions {region_ref.srg:+.3f} ({load_average()})",
                file=sys.stderr,
                flush=True,
            )
    return rows


def update_srg(methods: list[str]) -> None:
    """Recompute ``methods``' maps and curves in every cached SRG row (e.g. after a method's
    default changed), keeping the rows' random references (same photos, substrates and seed)."""
    adapter = load_model("bundled")
    for cache in sorted(CACHE.glob("protocol_srg_*.json")):
        rows = json.loads(cache.read_text())
        for row in rows:
            request, prepared = prepared_request(adapter, row["photo"], row["substrate"])
            maps = api.run_methods(prepared, methods, request.params)
            curves, _ = api.evaluate_maps(
                prepared, {n: m.values for n, m in maps.items()}, {**request.params, "n_random": 1}
            )
            for n in methods:
                srg = curves[n].srg
                refs = {kind: row["random"][kind] for kind in ("pixels", "regions")}
                row["methods"][n] = {
                    "srg": srg,
                    "insertion": curves[n].insertion.auc,
                    "deletion": curves[n].deletion.auc,
                    "beats_pixels": bool(srg > refs["pixels"]["srg"] and srg > refs["pixels"]["srg_max"]),
                    "beats_regions": bool(srg > refs["regions"]["srg"] and srg > refs["regions"]["srg_max"]),
                    "forward": maps[n].forward_passes,
                    "backward": maps[n].backward_passes,
                    "seconds": maps[n].seconds,
                    "curve_forward": curves[n].insertion.forward_passes + curves[n].deletion.forward_passes,
                    "search": maps[n].meta.get("search"),
                    "load": load_average(),
                }
            print(
                f"{row['photo']} {row['substrate']}: "
                + ", ".join(f"{n} {row['methods'][n]['srg']:+.3f}" for n in methods),
                file=sys.stderr,
                flush=True,
            )
            cache.write_text(json.dumps(rows, indent=1))


def run_sanity(photos: list[str], methods=METHODS, save=lambda rows: None) -> list[dict]:
    adapter = load_model("bundled")
    rows = []
    for photo in photos:
        request, prepared = prepared_request(adapter, photo, "black", methods=methods)
        maps = api.run_methods(prepared, request.methods, request.params)
        check = api.check_sanity(prepared, maps, request.params)
        rows.append(
            {
                "photo": photo,
                "seconds": check.seconds,
                "randomize_seconds": list(check.randomize_seconds),
                "stages": [label for label, _ in check.stages],
                "load": load_average(),
                "methods": {
                    n: [
                        {
                            "stage": s.stage,
                            "spearman": s.spearman,
                            "ssim": s.ssim,
                            "blank": bool(np.ptp(s.values) == 0),
                            "forward": s.forward_passes,
                            "backward": s.backward_passes,
                            "seconds": s.seconds,
                        }
                        for s in stages
                    ]
                    for n, stages in check.methods.items()
                },
                "original": {
                    n: {"forward": m.forward_passes, "backward": m.backward_passes, "seconds": m.seconds}
                    for n, m in maps.items()
                },
            }
        )
        print(
            f"{photo}: sanity {check.seconds:.0f} s, {check.forward_passes} forward passes; final stage "
            + ", ".join(f"{n} {s[-1].spearman:+.2f}" for n, s in check.methods.items())
            + f" ({load_average()})",
            file=sys.stderr,
            flush=True,
        )
        save(rows)  # after each photo: a long run stopped early keeps what it measured
    return rows


def _range(values) -> str:
    values = list(values)
    return f"{np.mean(values):.2f} ({min(values):.2f} to {max(values):.2f})"


def print_srg(rows: list[dict]) -> None:
    methods = list(rows[0]["methods"])
    substrates = list(dict.fromkeys(r["substrate"] for r in rows))
    print(
        "SRG = AUC(insertion) - AUC(deletion); ✗p / ✗r: not above the random reference of single pixels / "
        "of the 49 SLIC regions (its mean SRG and each of its 3 orderings').\n"
    )
    print("| photo | substrate | " + " | ".join(methods) + " | random pixels (max) | random regions (max) |")
    print("|---|---|" + "---|" * len(methods) + "---|---|")
    for r in rows:
        cells = []
        for n in methods:
            m = r["methods"][n]
            marks = ("" if m["beats_pixels"] else " ✗p") + ("" if m["beats_regions"] else " ✗r")
            cells.append(f"{m['srg']:+.3f}{marks}")
        rp, rr = r["random"]["pixels"], r["random"]["regions"]
        print(
            f"| {r['photo']} | {r['substrate']} | "
            + " | ".join(cells)
            + f" | {rp['srg']:+.3f} ({rp['srg_max']:+.3f}) | {rr['srg']:+.3f} ({rr['srg_max']:+.3f}) |"
        )
    print("\nMean SRG over the photos, and on how many photos the map beats each reference (pixels, regions):\n")
    print("| substrate | " + " | ".join(methods) + " | random pixels | random regions |")
    print("|---|" + "---|" * len(methods) + "---|---|")
    for s in substrates:
        sub = [r for r in rows if r["substrate"] == s]
        cells = [
            f"{np.mean([r['methods'][n]['srg'] for r in sub]):+.3f} "
            f"({sum(r['methods'][n]['beats_pixels'] for r in sub)}/{len(sub)}, "
            f"{sum(r['methods'][n]['beats_regions'] for r in sub)}/{len(sub)})"
            for n in methods
        ]
        print(
            f"| {s} | " + " | ".join(cells) + f" | {np.mean([r['random']['pixels']['srg'] for r in sub]):+.3f} | "
            f"{np.mean([r['random']['regions']['srg'] for r in sub]):+.3f} |"
        )
    print(
        "\nCost per photo (mean over the photos; forward / backward passes are exact, seconds are wall "
        "seconds on a shared 2-core CPU):\n"
    )
    print(
        "| substrate | "
        + " | ".join(f"{n}: passes, s" for n in methods)
        + " | curves (the 4 maps + random pixels): passes, s | of which random pixels: passes "
        "| random regions: passes, s |"
    )
    print("|---|" + "---|" * len(methods) + "---|---|---|")
    for s in substrates:
        sub = [r for r in rows if r["substrate"] == s]
        cells = []
        for n in methods:
            fwd = np.mean([r["methods"][n]["forward"] for r in sub])
            bwd = np.mean([r["methods"][n]["backward"] for r in sub])
            cells.append(
                f"{fwd:.0f}"
                + (f" / {bwd:.0f}" if bwd else "")
                + f", {np.mean([r['methods'][n]['seconds'] for r in sub]):.1f}"
            )
        curve_passes = np.mean(
            [sum(m["curve_forward"] for m in r["methods"].values()) + r["random"]["pixels"]["forward"] for r in sub]
        )
        print(
            f"| {s} | "
            + " | ".join(cells)
            + f" | {curve_passes:.0f}, {np.mean([r['curve_seconds'] for r in sub]):.1f}"
            + f" | {np.mean([r['random']['pixels']['forward'] for r in sub]):.0f}"
            + f" | {np.mean([r['random']['regions']['forward'] for r in sub]):.0f}, "
            + f"{np.mean([r['region_reference_seconds'] for r in sub]):.1f} |"
        )
    print(f"\nLoad averages during the runs: {', '.join(dict.fromkeys(r['load'] for r in rows))}.")


def print_sanity(all_rows: list[dict]) -> None:
    methods = list(dict.fromkeys(n for r in all_rows for n in r["methods"]))
    stages = all_rows[0]["stages"]
    print(
        "Cascading randomisation of the bundled model (top first, cumulative); per method and stage, "
        "the mean over the photos (min to max) of Spearman's rho of |map| and of SSIM against "
        "the trained model's map. Blank: photos where the map is all zero (rho reported as 0).\n"
    )
    print("| method | photos | stage | Spearman | SSIM | blank | passes (fwd / bwd) | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for n in methods:
        rows = [r for r in all_rows if n in r["methods"]]
        for k, stage in enumerate(stages):
            entries = [r["methods"][n][k] for r in rows]
            fwd = np.mean([e["forward"] for e in entries])
            bwd = np.mean([e["backward"] for e in entries])
            print(
                f"| {n} | {len(rows)} | {stage} | {_range(e['spearman'] for e in entries)} | {_range(e['ssim'] for e in entries)} | "
                f"{sum(e['blank'] for e in entries)}/{len(entries)} | {fwd:.0f}"
                + (f" / {bwd:.0f}" if bwd else "")
                + f" | {np.mean([e['seconds'] for e in entries]):.1f} |"
            )
    print("\nCost of the whole check per photo (mean over the photos):\n")
    print("| method | original map: passes, s | sanity check, all stages: passes, s | ratio |")
    print("|---|---|---|---|")
    for n in methods:
        rows = [r for r in all_rows if n in r["methods"]]
        orig_f = np.mean([r["original"][n]["forward"] for r in rows])
        orig_s = np.mean([r["original"][n]["seconds"] for r in rows])
        san_f = np.mean([sum(e["forward"] for e in r["methods"][n]) for r in rows])
        san_s = np.mean([sum(e["seconds"] for e in r["methods"][n]) for r in rows])
        print(f"| {n} | {orig_f:.0f}, {orig_s:.1f} | {san_f:.0f}, {san_s:.1f} | {san_f / max(orig_f, 1):.1f}x |")
    print(
        f"\nIn all: {_range(r['seconds'] for r in all_rows)} s per photo for its methods, of which "
        f"{np.mean([sum(r['randomize_seconds']) for r in all_rows]):.2f} s re-drawing weights. "
        f"Load averages: {', '.join(dict.fromkeys(r['load'] for r in all_rows))}."
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=("srg", "sanity", "all"), default="all")
    parser.add_argument("--photos", default=",".join(PHOTOS))
    parser.add_argument("--substrates", default=",".join(SUBSTRATES))
    parser.add_argument("--methods", default=",".join(METHODS), help="the sanity part's methods")
    parser.add_argument("--tag", default="all", help="names this run's cache file (for parallel runs)")
    parser.add_argument("--print-only", action="store_true", help="print the tables from bench/.cache")
    parser.add_argument(
        "--update",
        metavar="METHODS",
        help="recompute these methods (comma-separated) in the "
        "cached SRG rows, keeping their random references, then print",
    )
    args = parser.parse_args()
    if args.update:
        update_srg(args.update.split(","))
        args.print_only, args.part = True, "srg"
    photos = [p for p in args.photos.split(",") if p]
    CACHE.mkdir(parents=True, exist_ok=True)
    parts = ("srg", "sanity") if args.part == "all" else (args.part,)
    for part in parts:
        if args.print_only:
            rows = [
                row for cache in sorted(CACHE.glob(f"protocol_{part}_*.json")) for row in json.loads(cache.read_text())
            ]
            rows.sort(key=lambda r: (list(PHOTOS).index(r["photo"]), SUBSTRATES.index(r.get("substrate", "black"))))
        else:
            path = CACHE / f"protocol_{part}_{args.tag}.json"
            rows = (
                run_srg(photos, args.substrates.split(","))
                if part == "srg"
                else run_sanity(
                    photos, args.methods.split(","), save=lambda rows: path.write_text(json.dumps(rows, indent=1))
                )
            )
            path.write_text(json.dumps(rows, indent=1))
        header("SRG per method, substrate and random reference" if part == "srg" else "Sanity check per stage")
        (print_srg if part == "srg" else print_sanity)(rows)


if __name__ == "__main__":
    main()
