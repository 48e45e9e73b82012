"""Two region-search maps over the same photos, paired: the default run's maps against a run of the
search alone, and each against Grad-CAM (from the default run), per scoring substrate, correct and
wrong predictions apart, clipped SRG with a bootstrap 95 % CI.

    python -m explainers.evaluate MANIFEST --out runs/transfer200 --class-column imagenet_index \\
        --score-substrates black,blur,road --workers 2
    python -m explainers.evaluate MANIFEST --out runs/search100 --limit 100 --class-column imagenet_index \\
        --score-substrates black,blur,road --methods region --region-cam-blend 0 --region-within flat \\
        --random-orderings 1 --workers 2
    python bench/pair_runs.py runs/transfer200 runs/search100

Reads only the two folders' rows.csv; photos are paired by the manifest's image column.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

Key = tuple[str, str, str]  # image, method, substrate


def read_rows(folder: Path) -> dict[Key, dict[str, str]]:
    with open(folder / "rows.csv", newline="") as handle:
        return {
            (row["image"], row["method"], row["substrate"]): row
            for row in csv.DictReader(handle)
            if not row.get("error") and row["srg"] != ""
        }


def mean_ci(values: np.ndarray, rng: np.random.Generator, resamples: int = 10_000) -> str:
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return f"{values.mean():+.3f} [{low:+.3f}, {high:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("default_run", type=Path)
    parser.add_argument("search_run", type=Path)
    args = parser.parse_args()
    default, search = read_rows(args.default_run), read_rows(args.search_run)
    rng = np.random.default_rng(0)
    images = sorted({image for image, _, _ in search})
    print(f"{len(images)} photos in {args.search_run}\n")
    print(
        "| photos | scored on | n | search alone | default − search alone | search alone − Grad-CAM | default − Grad-CAM |"
    )
    print("|---|---|---|---|---|---|---|")
    for value, label in (("1", "correct"), ("0", "wrong")):
        for substrate in ("black", "blur", "road"):
            paired = [
                image
                for image in images
                if (image, "region", substrate) in search
                and (image, "region", substrate) in default
                and (image, "gradcam", substrate) in default
                and default[(image, "region", substrate)].get("correct") == value
            ]
            if not paired:
                continue

            def srg(rows: dict[Key, dict[str, str]], method: str) -> np.ndarray:
                return np.array([float(rows[(image, method, substrate)]["srg"]) for image in paired])

            alone, blended, gradcam = srg(search, "region"), srg(default, "region"), srg(default, "gradcam")
            print(
                f"| {label} | {substrate} | {len(paired)} | {alone.mean():+.3f} | {mean_ci(blended - alone, rng)} | "
                f"{mean_ci(alone - gradcam, rng)} | {mean_ci(blended - gradcam, rng)} |"
            )


if __name__ == "__main__":
    main()
