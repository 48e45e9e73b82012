"""Command line: ``python -m explainers.evaluate MANIFEST.csv --out DIR [options]``.

Evaluates every method on every photo of the manifest and writes DIR/rows.csv (one row per
image x method x scoring substrate, plus the random reference's), DIR/summary.json, DIR/summary.md
and DIR/summary.png (with --sanity also DIR/sanity.csv). Rerunning with the same DIR resumes. Every parameter flag of
``python -m explainers`` is here too, generated from the same specs with the same defaults
(curve steps 50). Bad input exits with code 2 and one line ``error: ...``; Ctrl-C exits with
code 130, keeping every finished row.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..__main__ import OneLineParser, add_param_flags, options_from_args, params_from_args


def build_parser() -> argparse.ArgumentParser:
    """The parser: the run's own options, then one flag per parameter spec."""
    from ..methods import METHODS, default_methods
    from ..models import DEVICES

    parser = OneLineParser(
        prog="python -m explainers.evaluate",
        description="Faithfulness of saliency methods over a data set: deletion/insertion AUCs and SRG per "
        "image and method, with bootstrap confidence intervals and paired comparisons.",
    )
    parser.add_argument(
        "manifest",
        help="CSV with columns image (path relative to the CSV's folder) and prompt, "
        "optionally contrast ('|'-separated), and for vlm: models answer, for detector: models box "
        "(x0,y0,x1,y1); other columns are carried to the rows",
    )
    parser.add_argument("--out", required=True, help="output folder (rerun with the same one to resume)")
    parser.add_argument(
        "--model",
        default="bundled",
        help="bundled (offline default), clip:<hub id or folder>, vlm:<hub id or folder> or detector:<hub id or folder>",
    )
    parser.add_argument(
        "--methods",
        default=",".join(default_methods()),
        help=f"comma-separated, from {','.join(METHODS)} (default {','.join(default_methods())})",
    )
    parser.add_argument(
        "--device", default="auto", help=f"{', '.join(DEVICES)} (default auto: CUDA where there is one)"
    )
    parser.add_argument("--limit", type=_count, default=None, metavar="N", help="only the first N manifest rows")
    parser.add_argument(
        "--workers",
        type=_count,
        default=None,
        metavar="N",
        help="worker processes, each loading the model once (with --ray: actors; default 1, "
        "or with --ray one per GPU / per CPU of the cluster)",
    )
    parser.add_argument(
        "--threads",
        type=_count,
        default=None,
        metavar="N",
        help="torch threads per worker (default: this machine's divided among the workers; 1 per Ray actor)",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray actor pool: alone, a local Ray; with an address, that cluster "
        "(auto, ray://HEAD:10001 or HEAD:6379)",
    )
    parser.add_argument(
        "--class-column",
        default=None,
        metavar="COLUMN",
        help="manifest column with each photo's true class index (classifier models, e.g. "
        "imagenet_index for bundled): rows get top1 and correct",
    )
    parser.add_argument(
        "--group-by",
        default="",
        metavar="COLUMNS",
        help="comma-separated columns (manifest ones, or correct) whose values get their own tables in the summary",
    )
    parser.add_argument(
        "--sanity",
        action="store_true",
        help="also the sanity check (model-parameter randomisation, Adebayo et al. 2018) on every photo: per "
        "method and stage the correlation means with CIs and the share of blank maps, beside two reference "
        "rows (the trained map against a centred blob and against the photo's edges); DIR/sanity.csv "
        "(every method again per stage: several times the cost)",
    )
    parser.add_argument("--retry-errors", action="store_true", help="compute again the images that failed before")
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="compute nothing: write the summary of the rows already in --out (a long run's progress)",
    )
    parser.add_argument(
        "--bootstrap",
        type=_count,
        default=None,
        metavar="N",
        help="bootstrap resamples for the confidence intervals (default 10000)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_param_flags(
        parser,
        {
            "score_substrates": "the --substrate, then blur (black where --substrate is blur): a substrate "
            "the maps were not made with, at the cost of the curves once more"
        },
    )
    return parser


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ..errors import UserError, cli_error

    try:
        from . import ROWS, evaluate
        from .stats import RESAMPLES

        params = params_from_args(args)  # a bad value is refused here, naming its flag
        options = options_from_args(args, args.model)
        summary = evaluate(
            args.manifest,
            args.out,
            model=args.model,
            methods=args.methods,
            device=args.device,
            limit=args.limit,
            workers=args.workers,
            ray=args.ray,
            threads=args.threads,
            class_column=args.class_column,
            group_by=args.group_by,
            retry_errors=args.retry_errors,
            compute=not args.summary_only,
            resamples=args.bootstrap or RESAMPLES,
            progress=False if args.no_progress else None,
            sanity=args.sanity,
            **params,
            **options,
        )
    except (UserError, OSError) as error:  # OSError: e.g. the output folder cannot be written
        print(f"error: {cli_error(error, args.out)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"interrupted: every finished image is in {os.path.join(args.out, ROWS)}; run the same command "
            "again to resume",
            file=sys.stderr,
        )
        return 130
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    run = summary.run
    print(summary.table())
    left = f", {run['images_left']} left to compute" if run["images_left"] else ""
    print(
        f"computed {run['images_computed']} images, skipped {run['images_skipped']} already done{left}, in "
        f"{run['seconds']:.1f} s ({run['workers']} worker(s) x {run['threads_per_worker']} thread(s) on "
        f"{run['device']}{', Ray' if run['ray'] else ''})"
    )
    print(f"wrote {', '.join(str(summary.out / name) for name in (ROWS, 'summary.json', 'summary.md', 'summary.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
