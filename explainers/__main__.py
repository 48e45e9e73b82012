"""Command line: ``python -m explainers IMAGE --prompt TEXT --out DIR``.

Writes DIR/result.json, DIR/<method>.png (overlays), DIR/curves.png and DIR/curves.csv.
Bad input exits with code 2 and one line ``error: ...`` on stderr. Every parameter flag is
generated from the parameter specs (the protocol's and each registered method's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn

# What an empty list parameter means, for --help.
CLI_LIST_DEFAULTS = {"score_substrates": "the --substrate"}


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (``error: ... (see --help)``, exit code 2)."""

    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from .methods import METHODS, default_methods
    from .models import DEVICES

    parser = OneLineParser(
        prog="python -m explainers",
        description="Saliency maps (" + ", ".join(m.title for m in METHODS.values()) + ") with "
        "deletion/insertion faithfulness curves for an image and a prompt.",
    )
    parser.add_argument("image", help="path to the image (PNG, JPEG, GIF, WebP, BMP, TIFF)")
    parser.add_argument("--prompt", required=True, help="what to look for, e.g. 'a cat'")
    parser.add_argument(
        "--contrast",
        action="append",
        default=[],
        metavar="TEXT",
        help="a contrast prompt (repeatable): explain the prompt against these",
    )
    parser.add_argument(
        "--model",
        default="bundled",
        help="bundled (offline default), clip:<hub id or folder>, vlm:<hub id or folder> (explains the "
        "answer to the question --prompt) or detector:<hub id or folder> (explains a box for the query --prompt)",
    )
    parser.add_argument(
        "--methods",
        default=",".join(default_methods()),
        help=f"comma-separated, from {','.join(METHODS)} (default {','.join(default_methods())})",
    )
    parser.add_argument(
        "--device", default="auto", help=f"{', '.join(DEVICES)} (default auto: CUDA where there is one)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--sanity",
        action="store_true",
        help="also run the sanity check (model-parameter randomisation, Adebayo et al. 2018): "
        "every method again on the model randomised layer by layer from the top; "
        "Spearman and SSIM per stage in result.json (several times the methods' cost)",
    )
    add_param_flags(parser)
    return parser


def add_param_flags(parser: argparse.ArgumentParser, list_defaults: dict[str, str] | None = None) -> None:
    """One flag per parameter spec (the protocol's, then each registered method's), in argument
    groups; shared by this CLI and ``python -m explainers.evaluate``. Every flag defaults to None
    so ``params_from_args`` can tell a given value from the default. ``list_defaults`` says in
    --help what an empty list parameter means for this command."""
    from .api import PAPER_CURVE_STEPS, PROTOCOL_PARAMS
    from .methods import METHODS
    from .models import MODEL_KINDS

    groups = [("the faithfulness protocol", PROTOCOL_PARAMS)]
    groups += [(f"{m.title} ({m.paper})", m.params) for m in METHODS.values() if m.params]
    groups += [(f"{k.prefix} models: {k.description}", k.params) for k in MODEL_KINDS.values() if k.params]
    for title, specs in groups:
        group = parser.add_argument_group(title)
        for spec in specs:
            default = PAPER_CURVE_STEPS if spec.name == "curve_steps" else spec.default
            if spec.many:
                default = ",".join(spec.default) or {**CLI_LIST_DEFAULTS, **(list_defaults or {})}.get(
                    spec.name, "none"
                )
            group.add_argument(
                spec.cli_flag,
                dest=spec.name,
                default=None,
                metavar="A,B" if spec.many else "N" if not spec.choices else "X",
                help=f"{spec.help}: {spec.describe()} (default {default})".replace("%", "%%"),
            )


def params_from_args(args: argparse.Namespace) -> dict:
    """The parameters given by ``add_param_flags``' flags, validated, with the CLI's defaults
    (curve_steps 50, every other at its spec's default). Raises UserError naming the flag."""
    from .api import PAPER_CURVE_STEPS, PARAMS, validate_params

    params = {
        name: (_number(getattr(args, name)) if not spec.choices else getattr(args, name))
        for name, spec in PARAMS.items()
    }
    if params["curve_steps"] is None:
        params["curve_steps"] = PAPER_CURVE_STEPS
    return validate_params(params, labels={name: spec.cli_flag for name, spec in PARAMS.items()})


def options_from_args(args: argparse.Namespace, model: str) -> dict:
    """The target parameters of ``model``'s kind given by the flags, validated, with their defaults
    (None: the model decides). Raises UserError naming the flag, or the kind a flag belongs to."""
    from .api import clean_options, split_options
    from .models import MODEL_KINDS

    specs = [spec for kind in MODEL_KINDS.values() for spec in kind.params]
    given = {spec.name: getattr(args, spec.name) for spec in specs if getattr(args, spec.name, None) is not None}
    options, _ = split_options(model, given)
    return clean_options(model, options, labels={spec.name: spec.cli_flag for spec in specs})


def _number(text):
    """CLI text -> int where it is one, else float, else the text (validation names the parameter)."""
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
    from .errors import UserError, cli_error

    try:
        from .api import explain
        from .images import open_image
        from .render import save_bundle

        params = params_from_args(args)  # a bad value is refused here, naming its flag
        options = options_from_args(args, args.model)
        image = open_image(args.image)
        result = explain(
            image,
            args.prompt,
            contrast=args.contrast,
            model=args.model,
            device=args.device,
            methods=[m.strip() for m in args.methods.split(",") if m.strip()],
            sanity=args.sanity,
            **params,
            **options,
        )
        written = save_bundle(result, args.out, original_size=image.size)
    except (UserError, OSError) as error:  # OSError: e.g. the output folder cannot be written
        print(f"error: {cli_error(error, args.out)}", file=sys.stderr)
        return 2
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    probability = "" if result.probability is None else f" (probability {result.probability:.1%})"
    print(f"{result.model}: score of {result.target.prompt!r} = {result.score:.4f}{probability}")
    if result.target.kind != "prompt":
        print(f"  target: {json.dumps(result.target.summary(), ensure_ascii=False)}")
    for substrate in result.substrates:
        reference = result.random_by_substrate[substrate]
        made = " (the maps' own)" if substrate == result.params["substrate"] else ""
        print(f"scored on the {substrate} substrate{made}; SRG clipped to [0, 1] (unclipped in brackets):")
        for name, m in result.methods.items():
            curves = m.by_substrate[substrate]
            verdict = (
                "more faithful than random order"
                if result.more_faithful_than_random(name, substrate)
                else "NOT above random"
            )
            print(
                f"  {name:8s} SRG {curves.srg:+.3f} [{curves.srg_unclipped:+.3f}] ({verdict})  insertion AUC "
                f"{curves.insertion.auc:.3f}  deletion AUC {curves.deletion.auc:.3f}  insertion peak "
                f"{curves.insertion.peak:.2f}  {m.saliency.seconds:.2f} s  {m.saliency.forward_passes} forward passes"
            )
        print(
            f"  {'random':8s} SRG {reference.srg:+.3f} (max of {reference.orderings} orderings "
            f"{max(reference.srgs):+.3f})  insertion AUC {reference.insertion.auc:.3f}  "
            f"deletion AUC {reference.deletion.auc:.3f}"
        )
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
