"""The protocol's verdict over a data set, as issue 18 tabulates it: for each evaluate folder, per
scoring substrate the mean SRG of every method clipped (the headline) and unclipped, on every photo,
on the correctly classified ones and on the wrong ones, and each method pair's paired difference
with its 95 % CI; then which method ranks first where.

    python -m explainers.evaluate MANIFEST --class-column imagenet_index --score-substrates black,blur --out A
    python -m explainers.evaluate MANIFEST --class-column imagenet_index --score-substrates black,blur \\
        --curve-ranking regions --out B
    python bench/verdict_table.py pixels=A regions=B

Reads only summary.json (run ``--summary-only`` first if the rows are newer). Prints markdown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _ci(mean: float | None, ci: list[float] | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:+.3f}" + ("" if ci is None else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]")


def groups(block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, block): every photo, then the correct and the wrong ones where the run has a class column."""
    out = [("all", block)]
    correct = block.get("groups", {}).get("correct", {})
    out += [(label, correct[value]) for value, label in (("1", "correct"), ("0", "wrong")) if value in correct]
    return out


def ranking(block: dict[str, Any], methods: list[str]) -> str:
    ranked = sorted(methods, key=lambda m: -(block["methods"][m]["srg_mean"] or float("-inf")))
    return " > ".join(ranked)


def table(label: str, summary: dict[str, Any]) -> list[str]:
    methods = summary["params"]["methods"]
    made = summary["params"]["substrate"]
    lines = [
        f"## {label}: {summary['params']['model']}, maps made on {made}, curve ranking "
        f"{summary['params'].get('curve_ranking', 'pixels')}",
        "",
    ]
    header = "| scored on | photos | n | " + " | ".join(f"{m} clipped (unclipped)" for m in methods)
    header += " | random | ranking (clipped) | ranking (unclipped) |"
    lines += [header, "|" + "---|" * (len(methods) + 6)]
    for substrate, block in summary["substrates"].items():
        for name, entry in groups(block):
            if not entry["n"]:
                lines.append(f"| {substrate} | {name} | 0 |" + " – |" * (len(methods) + 3))
                continue
            cells = [
                f"{_signed(entry['methods'][m]['srg_mean'])} ({_signed(entry['methods'][m]['srg_unclipped_mean'])})"
                for m in methods
            ]
            raw = sorted(methods, key=lambda m: -(entry["methods"][m]["srg_unclipped_mean"] or float("-inf")))
            lines.append(
                f"| {substrate} | {name} | {entry['n']} | "
                + " | ".join(cells)
                + f" | {_signed(entry['random']['srg_mean'])} "
                f"| {ranking(entry, methods)} | {' > '.join(raw)} |"
            )
    lines += [
        "",
        "| scored on | photos | pair | clipped difference [95 % CI] | unclipped [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    for substrate, block in summary["substrates"].items():
        for name, entry in groups(block):
            for pair, values in entry["pairs"].items():
                lines.append(
                    f"| {substrate} | {name} | {pair} | {_ci(values['srg_diff_mean'], values['ci'])} "
                    f"| {_ci(values.get('srg_unclipped_diff_mean'), values.get('srg_unclipped_ci'))} |"
                )
    lines += [
        "",
        "| scored on | photos | method | insertion peak | share of photos with peak > 1.02 | deletion floor |",
    ]
    lines += ["|---|---|---|---|---|---|"]
    for substrate, block in summary["substrates"].items():
        for name, entry in groups(block):
            for m in methods:
                s = entry["methods"][m]
                share = "–" if s["peak_above_photo"] is None else f"{100 * s['peak_above_photo']:.0f} %"
                lines.append(
                    f"| {substrate} | {name} | {m} | {_signed(s['insertion_peak_mean'])} | {share} "
                    f"| {_signed(s['deletion_floor_mean'])} |"
                )
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=FOLDER of an evaluate run (its summary.json)")
    args = parser.parse_args()
    for run in args.runs:
        label, _, folder = run.rpartition("=")
        summary = json.loads((Path(folder) / "summary.json").read_text())
        print("\n".join(table(label or folder, summary)))


if __name__ == "__main__":
    main()
