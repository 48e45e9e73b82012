"""Faithfulness of every method against the random reference on the assets photos.

    python bench/faithfulness.py [--steps 50] [--substrate black|blur]

Prints a markdown table: per photo and method, insertion / deletion AUC (the one protocol of
ARCHITECTURE.md, bundled model) next to the random pixel-order reference, and whether the
method beats it on each curve.
"""
from __future__ import annotations

import argparse

from _common import PHOTOS, ROOT

from explainers import explain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--substrate", default="black")
    args = parser.parse_args()
    print(f"curve steps {args.steps}, substrate {args.substrate}, bundled model, app defaults otherwise\n")
    print("| photo, prompt | score | Grad-CAM ins / del | IG ins / del | region ins / del | random ins / del |")
    print("|---|---|---|---|---|---|")
    wins = {}
    for photo, prompt in PHOTOS.items():
        r = explain(ROOT / "assets" / f"{photo}.jpg", prompt, curve_steps=args.steps, substrate=args.substrate)
        cells = []
        for name, m in r.methods.items():
            ins_ok = m.insertion.auc > r.random.insertion.auc
            del_ok = m.deletion.auc < r.random.deletion.auc
            wins.setdefault(name, [0, 0])
            wins[name][0] += ins_ok
            wins[name][1] += del_ok
            cells.append(f"{m.insertion.auc:.3f}{'' if ins_ok else ' ✗'} / {m.deletion.auc:.3f}{'' if del_ok else ' ✗'}")
        print(f"| {photo}, \"{prompt}\" | {r.score:.2f} | " + " | ".join(cells)
              + f" | {r.random.insertion.auc:.3f} / {r.random.deletion.auc:.3f} |", flush=True)
    print("\n✗ = does not beat the random reference. Beats random (insertion, deletion) on "
          + ", ".join(f"{n}: {a}/{len(PHOTOS)}, {b}/{len(PHOTOS)}" for n, (a, b) in wins.items()))


if __name__ == "__main__":
    main()
