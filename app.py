"""Saliency Lab: the Gradio app. Widgets and wiring only.

Every computation goes through the engine's API (``explainers.explain`` and
``explainers.render``); this file imports no torch of its own.

    python app.py                  # http://127.0.0.1:7860, offline, on the bundled model

Settings read from the environment:
    GRADIO_SERVER_NAME / GRADIO_SERVER_PORT   where to listen (Gradio's own variables)
    SALIENCY_EXAMPLES_CACHE                   eager | lazy | off. Default: eager on a Hugging
                                              Face Space (SPACE_ID set), lazy elsewhere.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gradio as gr  # noqa: E402

from explainers import DEFAULTS, UserError, explain, render  # noqa: E402
from explainers.api import describe_prompt  # noqa: E402
from explainers.images import open_image  # noqa: E402
from explainers.models import CLIP_CHOICES, DEFAULT_MODEL  # noqa: E402

log = logging.getLogger("saliency_lab.app")

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"

METHOD_CHOICES = [("Grad-CAM", "gradcam"), ("Integrated gradients", "ig"), ("Region search", "region")]
ALL_METHODS = [value for _, value in METHOD_CHOICES]
MODEL_CHOICES = [(f"{DEFAULT_MODEL} (offline: EfficientNet-Lite0 + prompt matching)", DEFAULT_MODEL)] + [
    (f"{name} (downloads on first use)", name) for name in CLIP_CHOICES
]
COLOUR_MAPS = ["jet", "turbo", "inferno", "viridis", "magma"]
DISPLAY_SIDE = 512  # overlays on the page: the photo's aspect, longest side this many pixels
DOWNLOAD_SIDE = 1024  # overlays in the download: the photo's size, capped at this
AUC_HEADERS = render.AUC_HEADERS
QUEUE_SIZE = 16
RUNS_DIR = Path(tempfile.gettempdir()) / "saliency-lab-runs"
RUNS_MAX_AGE_S = 3600

# (image, prompt, contrast): the examples. Every other input is reset to its default on a click,
# so that the cached result matches what the page shows.
EXAMPLES = [
    ("chelsea.jpg", "a cat", ""),
    ("coffee.jpg", "a cup of espresso", ""),
    ("rocket.jpg", "a rocket", ""),
    ("grace_hopper.jpg", "a military uniform", ""),
    ("astronaut.jpg", "an astronaut", ""),
    ("chelsea.jpg", "a cat", "a tiger, a lynx"),
]

METHOD_NOTES = {
    "gradcam": (
        "**Grad-CAM** looks inside the model, at its last layer of feature maps, and asks which of "
        "them push the score up. It needs one pass forwards and one backwards, so it is the fastest; "
        "but that layer is a coarse grid (7 × 7 cells for the bundled model), so its map is a few soft blobs."
    ),
    "ig": (
        "**Integrated gradients** fades the photo in from a blank picture in small steps and adds up, "
        "pixel by pixel, how much each step moved the score. Its map is sharp and often speckled; "
        "in theory all of it adds up to the score of the photo minus the score of the blank picture."
    ),
    "region": (
        "**Region search** cuts the photo into pieces (about 49 by default) and, like a greedy puzzle "
        "player, keeps adding the piece that raises the score most. It only asks the model questions "
        "(no look inside), so it is the slowest: hundreds of forward passes."
    ),
}
CURVE_NOTES = (
    "**Deletion curve.** Take away the pixels the map calls most important first (paint them black, "
    "or blur them) and watch the score. A faithful map makes the score fall fast, so the area under "
    "the curve (AUC) is small: *lower is better*.\n\n"
    "**Insertion curve.** Start from the blank picture and put back the most important pixels first. "
    "A faithful map makes the score rise fast: *higher is better*.\n\n"
    "**Random order** (grey, dashed) does the same with the pixels in a random order. A map worth "
    "trusting beats it: below it on the deletion plot, above it on the insertion plot.\n\n"
    "On both plots 0 is the score of the blank picture and 1 the score of the whole photo. "
    "A map shows what *this model* relies on, not what a person would look at."
)


# --------------------------------------------------------------------------------------------
# Running the engine: one run at a time per model, cancellable, errors as plain sentences.

class RunCancelled(Exception):
    """Raised inside the worker thread when the user pressed Cancel."""


_model_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
_loaded_models: set[str] = set()


def _sentence(text: str) -> str:
    text = " ".join(str(text).split())
    if not text:
        return "Something went wrong."
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _split_contrast(text: Optional[str]) -> list[str]:
    return [part.strip() for part in (text or "").replace("\n", ",").split(",") if part.strip()]


def _run_dir() -> Path:
    """A fresh folder for one run's download; folders older than an hour are removed."""
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in RUNS_DIR.iterdir():
        try:
            if now - old.stat().st_mtime > RUNS_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    return Path(tempfile.mkdtemp(prefix="run-", dir=RUNS_DIR))


def _fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    width, height = size
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _compute(photo, prompt: str, contrast: list[str], model: str, methods: list[str],
             params: dict[str, Any], progress: gr.Progress, cancelled: threading.Event):
    """Runs in a worker thread: waits for the model's lock, then explains. Returns (result, classes)."""
    lock = _model_locks[model]
    waited = False
    while not lock.acquire(timeout=0.25):
        if cancelled.is_set():
            raise RunCancelled()
        if not waited:
            progress(0.0, desc="Waiting for another run on this model to finish…")
            waited = True
    try:
        if cancelled.is_set():
            raise RunCancelled()
        if model not in _loaded_models:
            what = "the bundled model" if model == DEFAULT_MODEL else f"{model} (first use: a download of several hundred MB)"
            progress(0.0, desc=f"Loading {what}…")

        def report(fraction: float, description: str, **details) -> None:
            if cancelled.is_set():
                raise RunCancelled()
            text = description[:1].upper() + description[1:]
            progress(float(fraction), desc=text if text == "Done" else text + "…")

        result = explain(photo, prompt, contrast=contrast, model=model, methods=methods,
                         progress=report, **params)
        _loaded_models.add(model)
        classes = describe_prompt(model, result.target.prompt)
        return result, classes
    finally:
        lock.release()


def _score_markdown(result, classes) -> str:
    prompt = result.target.prompt
    lines = []
    if result.target.contrast:
        others = ", ".join(f"“{c}”" for c in result.target.contrast)
        lines.append(f"### Probability of “{prompt}” rather than {others}: {result.score:.1%}")
        lines.append("The model compares the prompts with each other; the bars show each one's share. "
                     "The maps explain this probability.")
    else:
        if result.model == DEFAULT_MODEL:
            lines.append(f"### Score of “{prompt}”: {result.score:.3f} (probability {_exp(result.score):.1%})")
            lines.append("The bundled model is an ImageNet classifier. It matches the prompt to some of its "
                         "1000 classes and gives the probability of those classes; the score is the log of "
                         "that probability (0 would be 100 %).")
        else:
            lines.append(f"### Score of “{prompt}”: {result.score:.3f}")
            lines.append("CLIP's score: how closely the photo and the prompt match (scaled cosine similarity; "
                         "higher is closer).")
    if classes:
        matched = ", ".join(f"{name} ({weight:.0%})" for name, weight in classes if weight >= 0.01)
        lines.append(f"ImageNet classes the prompt is matched to: {matched}.")
    lines.append(f"Model: `{result.model}` · {result.seconds:.1f} s in all · seed {result.params.get('seed')}.")
    for note in result.notes:
        lines.append(f"Note: {note}.")
    return "\n\n".join(lines)


def _exp(value: float) -> float:
    import math

    try:
        return math.exp(value)
    except OverflowError:
        return float("inf")


def _leaves_band(values, margin: float = 0.25) -> bool:
    finite = [float(v) for v in values if v == v and abs(float(v)) != float("inf")]
    return bool(finite) and (min(finite) < -margin or max(finite) > 1 + margin)


def _caption(name: str, r) -> str:
    passes = r.saliency.forward_passes
    return (f"**{render.title(name)}** · {r.saliency.seconds:.1f} s · "
            f"{passes} forward pass{'es' if passes != 1 else ''}<br>"
            f"deletion AUC **{r.deletion.auc:.3f}** (lower is better)<br>"
            f"insertion AUC **{r.insertion.auc:.3f}** (higher is better)")


def _how_to_read(result) -> str:
    parts = ["#### The methods", *(METHOD_NOTES[name] for name in result.methods), "#### The curves", CURVE_NOTES]
    verdicts = []
    for name, r in result.methods.items():
        title = render.title(name)
        beats = [kind for kind, ok in (("insertion", r.insertion.auc > result.random.insertion.auc),
                                       ("deletion", r.deletion.auc < result.random.deletion.auc)) if ok]
        if len(beats) == 2:
            verdicts.append(f"{title} beats random order on both curves.")
        elif beats:
            verdicts.append(f"{title} beats random order on the {beats[0]} curve only.")
        else:
            verdicts.append(f"{title} does not beat random order here: do not trust this map for this photo.")
    if result.methods:
        best = max(result.methods, key=lambda n: result.methods[n].insertion.auc)
        verdicts.append(f"Highest insertion AUC: {render.title(best)}.")
    wild = [render.title(n) for n, r in [*result.methods.items(), ("random", result.random)]
            for curve in r.curves if _leaves_band(curve.normalized)]
    if wild:
        verdicts.append("Careful: some curves leave the band from 0 to 1, so some partly covered pictures score "
                        "higher than the whole photo (or lower than the blank one). This happens when the model "
                        "is unsure about the photo; compare AUCs with caution then.")
    parts += ["#### This run", " ".join(verdicts)]
    return "\n\n".join(parts)


async def run_explain(
    image,
    prompt: str,
    contrast: str = "",
    model: str = DEFAULT_MODEL,
    methods: Optional[list[str]] = None,
    ig_steps: int = DEFAULTS["ig_steps"],
    ig_baseline: str = DEFAULTS["ig_baseline"],
    n_regions: int = DEFAULTS["n_regions"],
    region_kind: str = DEFAULTS["region_kind"],
    region_search: str = DEFAULTS["region_search"],
    curve_steps: int = DEFAULTS["curve_steps"],
    substrate: str = DEFAULTS["substrate"],
    seed: int = DEFAULTS["seed"],
    opacity: float = 0.5,
    colour_map: str = "jet",
    progress=gr.Progress(),
):
    """Explain why the model scores the photo as the prompt; every output of the page."""
    cancelled = threading.Event()
    try:
        if image is None:
            raise UserError("add a photo first: upload one, paste one or take one with the webcam")
        methods = ALL_METHODS if methods is None else [m for m in ALL_METHODS if m in methods]
        if not methods:
            raise UserError("tick at least one method (Grad-CAM, integrated gradients or region search)")
        if colour_map not in COLOUR_MAPS:
            raise UserError(f"the colour map must be one of {', '.join(COLOUR_MAPS)}")
        try:
            opacity = min(1.0, max(0.0, float(opacity)))
        except (TypeError, ValueError):
            raise UserError("the overlay opacity must be a number from 0 to 1") from None
        photo = open_image(image)
        params = {"ig_steps": ig_steps, "ig_baseline": ig_baseline, "n_regions": n_regions,
                  "region_kind": region_kind, "region_search": region_search,
                  "curve_steps": curve_steps, "substrate": substrate, "seed": seed}
        params = {k: (int(v) if isinstance(v, float) and v.is_integer() else v) for k, v in params.items()}
        progress(0.0, desc="Starting…")
        result, classes = await asyncio.to_thread(
            _compute, photo, prompt, _split_contrast(contrast), model or DEFAULT_MODEL, methods, params,
            progress, cancelled)
        return _outputs(result, classes, photo.size, opacity, colour_map)
    except asyncio.CancelledError:
        cancelled.set()  # the worker thread stops at its next progress report
        raise
    except UserError as error:
        raise gr.Error(_sentence(str(error)), print_exception=False) from None
    except gr.Error:
        raise
    except Exception:  # noqa: BLE001 - the user gets a sentence, the log gets the traceback
        log.exception("explain failed")
        raise gr.Error("Something went wrong while explaining this photo. Please try again, or try another "
                       "photo or fewer methods.", print_exception=False) from None


def _outputs(result, classes, photo_size, opacity: float, colour_map: str) -> list:
    show = _fit(photo_size, DISPLAY_SIDE)
    out: list = [_score_markdown(result, classes)]
    out.append(gr.Label(value=result.prompt_probabilities, visible=True) if result.prompt_probabilities
               else gr.Label(value=None, visible=False))
    for name in ALL_METHODS:
        r = result.methods.get(name)
        if r is None:
            out += [gr.Image(value=None, visible=False), gr.Markdown(value="", visible=False)]
        else:
            picture = render.overlay(result.image, r.saliency.values, colour_map, opacity, show)
            out += [gr.Image(value=picture, visible=True), gr.Markdown(value=_caption(name, r), visible=True)]
    ylim = render.shared_ylim(result)
    for kind in ("deletion", "insertion"):
        out.append(render.figure_to_image(render.curves_figure(result, kinds=(kind,), ylim=ylim)))
    out.append(render.auc_table(result))
    out.append(_how_to_read(result))
    folder = _run_dir()
    files = render.save_bundle(result, folder / "saliency-lab", colour_map, opacity,
                               _fit(photo_size, min(DOWNLOAD_SIDE, max(photo_size))))
    out.append(str(render.zip_bundle(files, folder / "saliency-lab-result.zip")))
    out.append(f"Done: {result.seconds:.1f} s on `{result.model}`. The result is below ↓")
    return out


# --------------------------------------------------------------------------------------------
# The page.

def _plain_upload_errors(component: gr.Image) -> gr.Image:
    """Gradio opens every upload with PIL before the handler runs; a file that is not a picture would
    fail there without a message. Wrap this component's preprocess so it is one plain sentence.
    (An instance attribute, not a subclass: a Component subclass makes Gradio write an app.pyi.)"""
    original = component.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except gr.Error:
            raise
        except Exception:  # noqa: BLE001 - any decoding failure is the same sentence
            name = getattr(payload, "orig_name", None) or "the file"
            raise gr.Error(f"{name} is not a picture this app can read; use PNG, JPEG, GIF, WebP, BMP or TIFF.",
                           print_exception=False) from None

    component.preprocess = preprocess
    return component


INTRO = """
# Saliency Lab
**Where does an image model look when it decides that a photo shows your prompt?**
Pick a photo, say what to look for, and press **Run**. Three methods each paint a heat map
(red = important), and two tests (deletion and insertion) check how faithful each map is.
"""

CSS = """
.caption p { font-size: 1.05rem; margin: 0.2em 0 0.8em 0; }
#score { padding: 0.4em 0.8em; }
#score h3 { margin-top: 0; font-size: 1.35rem; }
"""


def _examples_cache_mode() -> tuple[Any, Optional[str]]:
    mode = os.environ.get("SALIENCY_EXAMPLES_CACHE", "eager" if os.environ.get("SPACE_ID") else "lazy").lower()
    if mode == "off":
        return False, None
    return True, ("lazy" if mode == "lazy" else "eager")


def _result_components() -> dict[str, Any]:
    """The outputs, created unrendered so that the page can place the examples above them."""
    c: dict[str, Any] = {
        "status": gr.Markdown(label="Status", elem_id="status", min_height=70, render=False,
                              value="Press **Run**, or click an example below."),
        "score": gr.Markdown(label="Score", elem_id="score", render=False),
        "probabilities": gr.Label(label="Probability of each prompt", visible=False, render=False,
                                  elem_id="probabilities"),
    }
    for title, name in METHOD_CHOICES:
        c[f"overlay-{name}"] = gr.Image(label=title, type="pil", format="png", interactive=False,
                                        elem_id=f"overlay-{name}", height=300, render=False)
        c[f"caption-{name}"] = gr.Markdown(label=f"{title} caption", elem_classes="caption",
                                           elem_id=f"caption-{name}", render=False)
    c["deletion"] = gr.Image(label="Deletion curve", type="pil", format="png", interactive=False,
                             elem_id="deletion-plot", render=False)
    c["insertion"] = gr.Image(label="Insertion curve", type="pil", format="png", interactive=False,
                              elem_id="insertion-plot", render=False)
    c["auc"] = gr.Dataframe(headers=AUC_HEADERS, label="Area under the curves (AUC)", interactive=False,
                            elem_id="auc-table", render=False)
    c["how_to_read"] = gr.Markdown(
        label="How to read this", render=False,
        value="\n\n".join(["#### The methods", *METHOD_NOTES.values(), "#### The curves", CURVE_NOTES]))
    c["download"] = gr.File(label="Download everything: overlays (PNG), curves (CSV + PNG), result.json",
                            elem_id="download", render=False)
    return c


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="Saliency Lab", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                # type="filepath", image_mode=None: the engine decodes the original file (transparency
                # on white, 16-bit scaled), with its size limits and plain errors.
                image = _plain_upload_errors(gr.Image(
                    label="Photo (upload, paste or webcam)", type="filepath", image_mode=None,
                    sources=["upload", "clipboard", "webcam"], height=340, elem_id="photo"))
            with gr.Column(scale=6):
                prompt = gr.Textbox(label="Prompt: what should the model look for?", value="",
                                    placeholder="e.g. a cat", max_lines=1, elem_id="prompt")
                contrast = gr.Textbox(label="Contrast prompts (optional, separated by commas)",
                                      placeholder="e.g. a tiger, a lynx: “why a cat rather than a tiger?”",
                                      value="", max_lines=2, elem_id="contrast")
                model = gr.Dropdown(MODEL_CHOICES, value=DEFAULT_MODEL, label="Model", elem_id="model")
                methods = gr.CheckboxGroup(METHOD_CHOICES, value=list(ALL_METHODS), label="Methods",
                                           elem_id="methods")
                with gr.Accordion("Advanced", open=False):
                    with gr.Row():
                        ig_steps = gr.Slider(2, 256, value=DEFAULTS["ig_steps"], step=1,
                                             label="Integrated gradients: steps")
                        ig_baseline = gr.Radio(["black", "blur"], value=DEFAULTS["ig_baseline"],
                                               label="Integrated gradients: baseline")
                    with gr.Row():
                        n_regions = gr.Slider(4, 196, value=DEFAULTS["n_regions"], step=1,
                                              label="Region search: number of regions")
                        region_kind = gr.Radio([("superpixels", "slic"), ("grid", "grid")],
                                               value=DEFAULTS["region_kind"], label="Region search: regions")
                        region_search = gr.Radio(
                            [("fast", "fast"), ("lazy greedy", "lazy"), ("plain greedy (reference)", "greedy")],
                            value=DEFAULTS["region_search"], label="Region search: search mode")
                    with gr.Row():
                        curve_steps = gr.Slider(2, 200, value=DEFAULTS["curve_steps"], step=1,
                                                label="Curves: steps")
                        substrate = gr.Radio(["black", "blur"], value=DEFAULTS["substrate"],
                                             label="Curves: removed pixels become")
                        seed = gr.Number(value=DEFAULTS["seed"], precision=0, minimum=0,
                                         label="Seed (random reference)")
                    with gr.Row():
                        opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity (applies from the next run)")
                        colour_map = gr.Dropdown(COLOUR_MAPS, value="jet", label="Colour map (applies from the next run)")
                with gr.Row():
                    run = gr.Button("Run", variant="primary", elem_id="run", scale=3)
                    cancel = gr.Button("Cancel", variant="secondary", elem_id="cancel", scale=1)
                c = _result_components()
                c["status"].render()

        inputs = [image, prompt, contrast, model, methods, ig_steps, ig_baseline, n_regions, region_kind,
                  region_search, curve_steps, substrate, seed, opacity, colour_map]
        outputs = [c["score"], c["probabilities"]]
        for _, name in METHOD_CHOICES:
            outputs += [c[f"overlay-{name}"], c[f"caption-{name}"]]
        outputs += [c["deletion"], c["insertion"], c["auc"], c["how_to_read"], c["download"], c["status"]]

        defaults = [DEFAULT_MODEL, list(ALL_METHODS), DEFAULTS["ig_steps"], DEFAULTS["ig_baseline"],
                    DEFAULTS["n_regions"], DEFAULTS["region_kind"], DEFAULTS["region_search"],
                    DEFAULTS["curve_steps"], DEFAULTS["substrate"], DEFAULTS["seed"], 0.5, "jet"]
        cache, cache_mode = _examples_cache_mode()
        gr.Examples(
            examples=[[str(ASSETS / f), p, x, *defaults] for f, p, x in EXAMPLES],
            inputs=inputs, outputs=outputs, fn=run_explain, cache_examples=cache, cache_mode=cache_mode,
            visible_columns=[0, 1, 2], label="Examples: click one (it also resets the settings)",
            examples_per_page=len(EXAMPLES), api_visibility="undocumented", preload=False,
        )

        gr.Markdown("## Result")
        with gr.Group():
            c["score"].render()
            c["probabilities"].render()
        with gr.Row(equal_height=True):
            for _, name in METHOD_CHOICES:
                with gr.Column(min_width=220):
                    c[f"overlay-{name}"].render()
                    c[f"caption-{name}"].render()
        with gr.Row(equal_height=True):
            c["deletion"].render()
            c["insertion"].render()
        c["auc"].render()
        c["download"].render()
        with gr.Accordion("How to read this", open=True):
            c["how_to_read"].render()

        event = gr.on([run.click, prompt.submit], run_explain, inputs=inputs, outputs=outputs,
                      api_name="explain", concurrency_limit=1 + len(CLIP_CHOICES),
                      concurrency_id="explain",
                      show_progress_on=[c["status"], c["score"], *(c[f"overlay-{n}"] for n in ALL_METHODS),
                                        c["deletion"], c["insertion"]])
        cancel.click(None, cancels=[event])
    return demo


demo = build_demo()
demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    demo.launch(max_file_size="10mb", allowed_paths=[str(ASSETS)], show_error=False, css=CSS)
