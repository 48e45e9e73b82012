"""Command line: ``python -m explainers IMAGE --prompt TEXT --out DIR``.

Writes DIR/result.json, DIR/<method>.png (overlays), DIR/curves.png and DIR/curves.csv.
Bad input exits with code 2 and one line ``error: ...`` on stderr.
"""
from __future__ import annotations

import argparse
import os
import sys

CLI_CURVE_STEPS = 50  # the paper protocol; the app uses fewer for speed
FLAG_NAMES = {"curve_steps": "--steps", "substrate": "--substrate", "ig_steps": "--ig-steps",
              "ig_baseline": "--ig-baseline", "n_regions": "--regions", "region_kind": "--region-kind",
              "region_search": "--region-search", "seed": "--seed"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m explainers",
                     description="Saliency maps (Grad-CAM, integrated gradients, region search) with "
                                 "deletion/insertion faithfulness curves for an image and a prompt.")
    parser.add_argument("image", help="path to the image (PNG, JPEG, GIF, WebP, BMP, TIFF)")
    parser.add_argument("--prompt", required=True, help="what to look for, e.g. 'a cat'")
    parser.add_argument("--contrast", action="append", default=[], metavar="TEXT",
                        help="a contrast prompt (repeatable): explain the prompt against these")
    parser.add_argument("--model", default="bundled", help="bundled (offline default) or clip:<hub id or folder>")
    parser.add_argument("--methods", default="gradcam,ig,region", help="comma-separated: gradcam,ig,region")
    parser.add_argument("--steps", default=str(CLI_CURVE_STEPS), help="curve steps (default 50)")
    parser.add_argument("--substrate", default="black", help="black (default) or blur")
    parser.add_argument("--ig-steps", default=None, help="integrated-gradients steps")
    parser.add_argument("--ig-baseline", default=None, help="black or blur")
    parser.add_argument("--regions", default=None, help="number of regions for region search (default 49)")
    parser.add_argument("--region-kind", default=None, help="slic (default) or grid")
    parser.add_argument("--region-search", default=None, help="fast (default), lazy or greedy (SMDL's reference)")
    parser.add_argument("--seed", default="0", help="seed of the random reference (default 0)")
    parser.add_argument("--out", required=True, help="output folder")
    return parser


def _number(text):
    """CLI text -> int where it is one, else the text (validation names the parameter)."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .errors import UserError

    try:
        from . import explain
        from .images import open_image
        from .render import save_bundle

        from .api import validate_params

        params = {"curve_steps": _number(args.steps), "substrate": args.substrate,
                  "ig_steps": _number(args.ig_steps), "ig_baseline": args.ig_baseline,
                  "n_regions": _number(args.regions), "region_kind": args.region_kind,
                  "region_search": args.region_search, "seed": _number(args.seed)}
        validate_params(params, labels=FLAG_NAMES)  # messages name the flag the user typed
        image = open_image(args.image)
        result = explain(image, args.prompt, contrast=args.contrast, model=args.model,
                         methods=[m.strip() for m in args.methods.split(",") if m.strip()], **params)
        written = save_bundle(result, args.out, original_size=image.size)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. the output folder cannot be written
        print(f"error: {error.strerror or error} ({getattr(error, 'filename', '') or args.out})", file=sys.stderr)
        return 2
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    summary = result.summary()
    print(f"{result.model}: score of {result.target.prompt!r} = {result.score:.4f}")
    for name, m in summary["methods"].items():
        print(f"  {name:8s} insertion AUC {m['insertion_auc']:.3f}  deletion AUC {m['deletion_auc']:.3f}  "
              f"{m['seconds']:.2f} s  {m['forward_passes']} forward passes")
    print(f"  {'random':8s} insertion AUC {summary['random']['insertion_auc']:.3f}  "
          f"deletion AUC {summary['random']['deletion_auc']:.3f}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
