"""Saliency Lab: the Gradio app. Widgets and wiring only.

Every computation goes through the engine (``explainers.api``), every run through the app's run
runtime (``explainers.app_runtime``: a lock per model, cancel, results as they come, plain
errors), every picture through ``explainers.render`` and every sentence through
``explainers.report``; this file imports no torch and starts no thread of its own. The methods,
their parameters, how their maps are drawn and the protocol's parameters are read from the
registry (``explainers.methods.METHODS``, ``explainers.api.PARAMS``): a method added there gets
its checkbox, its Advanced widgets, its map, its notes and its API parameters here; a method
whose entry is ``stepped`` gets the step-through, one with a ``reference`` the Refine button.

    python app.py                  # http://127.0.0.1:7860, offline, on the bundled model

Settings read from the environment:
    GRADIO_SERVER_NAME / GRADIO_SERVER_PORT   where to listen (Gradio's own variables)
    SALIENCY_EXAMPLES_CACHE                   eager | lazy | off. Default: eager on a Hugging
                                              Face Space (SPACE_ID set), lazy elsewhere.
    SALIENCY_DEVICE                           auto | cpu | cuda (or cuda:N). Default auto: CUDA
                                              where there is a GPU, else the CPU.

Each method's map and cost appear the moment that method finishes (Grad-CAM's within about a
second), region search's map fills in as it searches, and the curves and verdicts come once
every map is in. After a run the page replays it without the model: the curve scrubber, the
region search's step-through and the display settings redraw from the run's download bundle
(the maps and curves, ``render.bundle_from_zip``), which Gradio also keeps with cached examples.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Before anything loads torch: its idle OpenMP threads sleep instead of spinning beside the web
# server and OpenVINO's threads (explainers/_threads.py; README, "Threads").
from explainers import _threads  # noqa: F401, I001

import gradio as gr
from PIL import Image

from explainers import UserError, api, app_runtime, render, report
from explainers.app_runtime import Evaluated, Finished, MapReady, Outcome, Preview, Status, TargetReady, fit
from explainers.images import open_image
from explainers.methods import METHODS, default_methods
from explainers.models import DEFAULT_MODEL, model_choices
from explainers.params import Param

log = logging.getLogger("saliency_lab.app")

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"

DEVICE = os.environ.get("SALIENCY_DEVICE", "auto").strip() or "auto"
MODEL_CHOICES = model_choices()
# The model kinds' own number parameters (a VLM's most answer tokens, a detector's least box
# probability) get widgets; the answer, its token and the box come from "What to explain".
KIND_PARAMS = app_runtime.page_target_params()
DISPLAY_SIDE = 512  # overlays on the page: the photo's aspect, longest side this many pixels
DOWNLOAD_SIDE = 1024  # overlays in the download: the photo's size, capped at this
QUEUE_SIZE = 16
SLIDER_MAX_SPAN = 10_000  # an int parameter with a wider range (the seed) gets a number box, not a slider
SCRUB_START = 0.3  # the scrubber starts at this fraction of the pixels: "delete the top 30 %"
STEP_START = 5  # the step-through starts after this many regions
PLAY_INTERVAL_S = 0.7  # "Play the search": seconds per region
# "ig_display" keeps its name in the API (/explain, /restyle, /refine_*): it is the display of
# every map whose entry is smoothable (integrated gradients').
DISPLAY_DEFAULTS = {"opacity": 0.5, "colour_map": render.DEFAULT_COLOUR_MAP, "ig_display": "raw"}
# What the registry gives the page beyond one map per method.
STEPPED = next((m for m in METHODS.values() if m.stepped), None)  # its search replayed step by step
REFINED = next((m for m in METHODS.values() if m.reference is not None), None)  # its Refine button
SMOOTHABLE = [m for m in METHODS.values() if m.smoothable]

# (image, prompt, contrast): the photo examples. Every other input is reset to its default on a
# click, so that the cached result matches what the page shows.
EXAMPLES = [
    ("chelsea.jpg", "a cat", ""),
    ("coffee.jpg", "a cup of espresso", ""),
    ("rocket.jpg", "a rocket", ""),
    ("grace_hopper.jpg", "a military uniform", ""),
    ("astronaut.jpg", "an astronaut", ""),
]
# Two prompts side by side: the contrast example, shown with its question as its label.
CONTRAST_EXAMPLES = [("chelsea.jpg", "a cat", "a tiger, a lynx", "Why a cat and not a tiger or a lynx?")]

# On Run (and on an example): bring the result area into view at once, so that the progress, the
# maps as they come and then the curves show without scrolling past the examples.
SCROLL_TO_RESULT = "() => { document.getElementById('result')?.scrollIntoView({block: 'start'}); }"

Display = tuple[float, str, str]  # (opacity, colour map, smoothing: a render.IG_DISPLAYS key)
Updates = dict[Any, Any]  # {component: value or update}


# --------------------------------------------------------------------------------------------
# The inputs, generated from the registry.


def param_widget(spec: Param) -> gr.components.Component:
    """A parameter's widget from its spec: a list of choices -> checkboxes; choices -> radio (with
    the spec's labels); a whole-number range -> slider (a number box when the range is too wide to
    slide, e.g. the seed); a number range -> slider with the spec's step."""
    common: dict[str, Any] = {
        "label": spec.label or spec.help,
        "info": spec.help[:1].upper() + spec.help[1:],
        "elem_id": f"param-{spec.name}",
    }
    if spec.many:
        return gr.CheckboxGroup([(spec.labels.get(c, c), c) for c in spec.choices], value=list(spec.default), **common)
    if spec.choices:
        return gr.Radio([(spec.labels.get(c, c), c) for c in spec.choices], value=spec.default, **common)
    assert spec.low is not None and spec.high is not None, f"{spec.name}: a numeric parameter needs low and high"
    if spec.kind is int and spec.high - spec.low > SLIDER_MAX_SPAN:
        return gr.Number(value=spec.default, precision=0, minimum=spec.low, maximum=spec.high, **common)
    step = 1 if spec.kind is int else (spec.step or (spec.high - spec.low) / 100)
    return gr.Slider(spec.low, spec.high, value=spec.default, step=step, **common)


def method_params() -> dict[str, tuple[Param, ...]]:
    """The Advanced section's groups: the protocol's parameters, then each method's own."""
    groups = {"Curves (the faithfulness test)": api.PROTOCOL_PARAMS}
    groups.update({m.title: m.params for m in METHODS.values() if m.params})
    return groups


def input_names() -> list[str]:
    """The /explain inputs in order: image and prompt first, then everything with a default."""
    kinds = [spec.name for spec in KIND_PARAMS]
    return [
        "image",
        "prompt",
        "contrast",
        "model",
        "target",
        "methods",
        *api.PARAMS,
        *kinds,
        "sanity",
        *DISPLAY_DEFAULTS,
    ]


def input_defaults() -> dict[str, Any]:
    return {
        "contrast": "",
        "model": DEFAULT_MODEL,
        "target": "",
        "methods": default_methods(),
        # A list parameter's default as a list: Gradio takes a tuple for one value (a checkbox group's [()]).
        **{name: list(v) if isinstance(v, tuple) else v for name, v in api.DEFAULTS.items()},
        **{spec.name: spec.default for spec in KIND_PARAMS},
        "sanity": False,
        **DISPLAY_DEFAULTS,
    }


def with_signature(function: Callable, names: list[str], defaults: dict[str, Any]) -> Callable:
    """Give ``function(*values, progress)`` the signature Gradio reads: one named parameter per
    input (its API name and default) and the progress tracker last."""
    parameters = [
        inspect.Parameter(
            name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults.get(name, inspect.Parameter.empty)
        )
        for name in names
    ]
    parameters.append(inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress()))
    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return function


# --------------------------------------------------------------------------------------------
# The page's outputs, by name.


def result_components() -> dict[str, Any]:
    """Every output, by name, created unrendered so that the page can place them where it likes."""
    c: dict[str, Any] = {
        "status": gr.Markdown(
            label="Status", elem_id="status", min_height=40, render=False, value="Press **Run**, or click an example."
        ),
        "score": gr.Markdown(label="Score", elem_id="score", render=False),
        "probabilities": gr.Label(
            label="Probability of each prompt",
            visible=False,
            render=False,
            elem_id="probabilities",
            show_heading=False,
            scale=2,
        ),
        "colour_bar": gr.HTML(
            label="Colour bar",
            elem_id="colour-bar",
            render=False,
            value=report.colour_bar_html(render.colour_stops(render.DEFAULT_COLOUR_MAP)),
        ),
    }
    for name, method in METHODS.items():
        c[f"overlay-{name}"] = gr.Image(
            label=method.title,
            type="pil",
            format="png",
            interactive=False,
            elem_id=f"overlay-{name}",
            height=260,
            render=False,
            visible=method.by_default,
        )
        c[f"caption-{name}"] = gr.Markdown(
            label=f"{method.title} caption",
            elem_classes="caption",
            elem_id=f"caption-{name}",
            render=False,
            visible=method.by_default,
        )
    c["warnings"] = gr.Markdown(label="Warnings", elem_id="warnings", render=False)
    c["deletion"] = gr.Image(
        label="Deletion curve", type="pil", format="png", interactive=False, elem_id="deletion-plot", render=False
    )
    c["insertion"] = gr.Image(
        label="Insertion curve", type="pil", format="png", interactive=False, elem_id="insertion-plot", render=False
    )
    c["scrubber"] = gr.Slider(
        0,
        api.DEFAULTS["curve_steps"],
        value=0,
        step=1,
        elem_id="scrubber",
        render=False,
        label="Curve scrubber: step of the curves (the fraction of pixels removed or revealed)",
    )
    c["scrub_picture"] = gr.Image(
        label="What the curves scored at this step",
        type="pil",
        format="png",
        show_label=False,
        interactive=False,
        elem_id="scrub-picture",
        render=False,
    )
    c["scrub_text"] = gr.Markdown(label="Scores at this step", elem_id="scrub-text", render=False)
    if STEPPED is not None:
        c["step"] = gr.Slider(
            0,
            49,
            value=0,
            step=1,
            elem_id="step-through",
            render=False,
            label=f"{STEPPED.title} step-through: regions chosen so far",
        )
        c["step_picture"] = gr.Image(
            label=f"The {STEPPED.title.lower()} at this step",
            type="pil",
            format="png",
            show_label=False,
            interactive=False,
            elem_id="step-picture",
            render=False,
        )
        c["step_text"] = gr.Markdown(label="This step of the search", elem_id="step-text", render=False)
    c["sanity_picture"] = gr.Image(
        label="Sanity check: the maps as the model is destroyed",
        type="pil",
        format="png",
        interactive=False,
        elem_id="sanity-picture",
        render=False,
        visible=False,
        show_label=False,
    )
    c["sanity_text"] = gr.Markdown(label="Sanity check", elem_id="sanity-text", render=False, value=SANITY_HINT)
    c["auc"] = gr.Dataframe(
        headers=render.AUC_HEADERS,
        label="Area under the curves (AUC) and SRG",
        interactive=False,
        elem_id="auc-table",
        render=False,
    )
    c["how_to_read"] = gr.Markdown(
        label="How to read this", elem_id="how-to-read", render=False, value=report.how_to_read()
    )
    c["download"] = gr.File(
        label="Download everything: overlays (PNG), maps (NPZ), curves (CSV + PNG), result.json",
        elem_id="download",
        render=False,
    )
    return c


def starting_outputs(c: dict[str, Any], methods: list[str]) -> Updates:
    """What the page shows the moment a run starts: the ticked methods' places, empty (their maps
    come one by one), and no leftovers of the last run (its curves, table and download)."""
    out: Updates = {c["status"]: "Running: each map appears as soon as its method finishes, the curves after them."}
    for name, method in METHODS.items():
        ticked = name in methods
        out[c[f"overlay-{name}"]] = gr.Image(value=None, visible=ticked)
        out[c[f"caption-{name}"]] = gr.Markdown(
            value=f"**{method.title}** · running…" if ticked else "", visible=ticked
        )
    out.update({c[name]: None for name in ("deletion", "insertion", "scrub_picture", "download")})
    out.update({c[name]: "" for name in ("score", "warnings", "scrub_text")})
    if STEPPED is not None:
        out[c["step_picture"]], out[c["step_text"]] = None, ""
    out[c["sanity_picture"]] = gr.Image(value=None, visible=False)
    return out


def page_outputs(c: dict[str, Any], outcome: Outcome, display: Display, size: tuple[int, int], status: str) -> Updates:
    """What the page shows of a result once its curves are in: score, maps with their verdicts,
    curves, table, texts ({component: value}). ``replay_outputs`` adds the rest."""
    result = outcome.result
    show = fit(size, DISPLAY_SIDE)
    steps = int(result.params["curve_steps"])
    ylim = render.shared_ylim(result)
    out: Updates = {
        c["status"]: status,
        c["score"]: report.score_markdown(result, outcome.classes),
        c["probabilities"]: (
            gr.Label(value=result.prompt_probabilities, visible=True)
            if result.prompt_probabilities
            else gr.Label(value=None, visible=False)
        ),
        c["warnings"]: report.warnings_markdown(result),
        c["deletion"]: render.curve_plot(result, "deletion", ylim, marker=round(SCRUB_START * steps)),
        c["insertion"]: render.curve_plot(result, "insertion", ylim, marker=round(SCRUB_START * steps)),
        c["auc"]: render.auc_table(result),
        c["how_to_read"]: report.how_to_read(result=result),
        c["sanity_text"]: report.sanity_markdown(result) or SANITY_HINT,
    }
    out.update(overlay_outputs(c, result, display, show))
    return out


def replay_outputs(c: dict[str, Any], result: Any, size: tuple[int, int], bundle: str) -> Updates:
    """The download and what replays the run from it: the scrubber and the step-through, set at
    their starting points."""
    show = fit(size, DISPLAY_SIDE)
    steps = int(result.params["curve_steps"])
    start = round(SCRUB_START * steps)
    out: Updates = {c["download"]: bundle, c["scrubber"]: gr.Slider(minimum=0, maximum=steps, value=start)}
    out.update(scrub_outputs(c, result, start, show))
    if STEPPED is not None and STEPPED.name in result.methods:
        n = len(render.search_path(result, STEPPED.name))
        chosen = min(STEP_START, n)
        out[c["step"]] = gr.Slider(minimum=0, maximum=n, value=chosen, visible=True)
        out.update(step_outputs(c, result, chosen, show))
    elif STEPPED is not None:
        out[c["step"]] = gr.Slider(visible=False)
        out[c["step_picture"]] = gr.Image(value=None, visible=False)
        out[c["step_text"]] = report.step_markdown(result, STEPPED.name, 0)
    return out


def overlay_outputs(c: dict[str, Any], result: Any, display: Display, show: tuple[int, int]) -> Updates:
    """Every method's map and caption (hidden where it did not run), the colour bar, the sanity strip."""
    opacity, colour_map, smoothing = display
    strip = render.sanity_strip(result, colour_map, show)
    out: Updates = {
        c["colour_bar"]: report.colour_bar_html(render.colour_stops(colour_map)),
        c["sanity_picture"]: gr.Image(value=strip, visible=strip is not None),
    }
    for name in METHODS:
        if name in result.methods:
            smooth = app_runtime.smoothed(name, smoothing)
            picture = render.method_picture(result, name, colour_map, opacity, show, smooth)
            out[c[f"overlay-{name}"]] = gr.Image(value=picture, visible=True)
            out[c[f"caption-{name}"]] = gr.Markdown(value=report.caption(result, name), visible=True)
        else:
            out[c[f"overlay-{name}"]] = gr.Image(value=None, visible=False)
            out[c[f"caption-{name}"]] = gr.Markdown(value="", visible=False)
    return out


def scrub_outputs(c: dict[str, Any], result: Any, step: int, show: tuple[int, int]) -> Updates:
    ylim = render.shared_ylim(result)
    return {
        c["scrub_picture"]: render.scrub_picture(result, step, show),
        c["scrub_text"]: report.scrub_markdown(result, step),
        c["deletion"]: render.curve_plot(result, "deletion", ylim, marker=step),
        c["insertion"]: render.curve_plot(result, "insertion", ylim, marker=step),
    }


def step_outputs(c: dict[str, Any], result: Any, chosen: int, show: tuple[int, int]) -> Updates:
    assert STEPPED is not None
    return {
        c["step_picture"]: gr.Image(value=render.step_picture(result, STEPPED.name, chosen, show), visible=True),
        c["step_text"]: report.step_markdown(result, STEPPED.name, chosen),
    }


# --------------------------------------------------------------------------------------------
# The events: one pattern for every run (Run, Refine), the replays from the bundle.


@dataclass
class PageRun:
    """One run as the page follows it: the model whose lock it takes, its job, the display, the
    photo (previews are drawn on it) and its size, and the methods whose notes are shown so far."""

    model: str
    job: app_runtime.Job
    display: Display
    photo: Image.Image
    size: tuple[int, int]
    noted: list[str] = field(default_factory=list)


def page_error(error: Exception) -> gr.Error:
    """Any failure as the page shows it: one plain sentence, never a stack trace."""
    if isinstance(error, gr.Error):
        return error
    return gr.Error(app_runtime.plain_message(error), print_exception=False)


def event_outputs(c: dict[str, Any], event: Any, run: PageRun) -> Updates:
    """The page's update for one event of a running job (``app_runtime.stream``)."""
    opacity, colour_map, smoothing = run.display
    show = fit(run.size, DISPLAY_SIDE)
    if isinstance(event, TargetReady):  # the model's answer or box, before its maps
        return {c["score"]: report.target_markdown(event.target)}
    if isinstance(event, MapReady):
        smooth = app_runtime.smoothed(event.method, smoothing)
        picture = render.map_picture(event.image, event.saliency, colour_map, opacity, show, smooth, event.outline)
        run.noted.append(event.method)
        return {
            c[f"overlay-{event.method}"]: gr.Image(value=picture, visible=True),
            c[f"caption-{event.method}"]: gr.Markdown(
                value=report.pending_caption(event.method, event.saliency), visible=True
            ),
            c["how_to_read"]: report.how_to_read(methods=run.noted),
        }
    if isinstance(event, Preview):
        if event.method not in METHODS or not METHODS[event.method].previews:
            return {}
        picture = render.preview_overlay(run.photo, event.values, colour_map, opacity, show)
        return {c[f"overlay-{event.method}"]: gr.Image(value=picture, visible=True)}
    if isinstance(event, Status):
        # The page's own progress line: Gradio's bar hides once a streaming event has yielded.
        return {c["status"]: f"{event.text} ({event.fraction:.0%})"}
    if isinstance(event, Evaluated):
        return page_outputs(c, event.outcome, run.display, run.size, event.outcome.status)
    return {}


async def finish(
    c: dict[str, Any], outcome: Outcome, display: Display, size: tuple[int, int]
) -> AsyncIterator[Updates]:
    """Yield the page's look at a finished run, then (after the download is written and the replays
    drawn, in a worker thread) everything: the last yield is what the API and the example cache keep."""
    drawing = outcome.status + " Drawing the scrubber and the step-through…"
    first = await asyncio.to_thread(page_outputs, c, outcome, display, size, drawing)
    yield first

    def replays() -> Updates:
        bundle = app_runtime.save_download(outcome.result, display, size, DOWNLOAD_SIDE)
        return replay_outputs(c, outcome.result, size, bundle)

    rest = await asyncio.to_thread(replays)
    yield {**first, **rest, c["status"]: outcome.status}


async def on_page(
    c: dict[str, Any], start: Callable[[], tuple[PageRun, Updates]], progress: Any
) -> AsyncIterator[Updates]:
    """The one pattern of every run: check the inputs (``start``: the run and the page's first
    update), stream the job's events onto the page as they come, then finish; every failure is one
    plain sentence, and Cancel (or a closed page) stops the job at its next progress report."""
    try:
        run, first = start()
        yield first
        async with aclosing(app_runtime.stream(run.model, run.job, progress)) as events:
            async for event in events:
                if isinstance(event, Finished):
                    async for outputs in finish(c, event.value, run.display, run.size):
                        yield outputs
                else:
                    update = await asyncio.to_thread(event_outputs, c, event, run)
                    if update:
                        yield update
    except Exception as error:  # noqa: BLE001 - every failure is one plain sentence
        raise page_error(error) from None


def _no_progress(*_: Any, **__: Any) -> None:
    return None


def explain_start(c: dict[str, Any], given: dict[str, Any], progress: Any) -> tuple[PageRun, Updates]:
    """Run: the inputs checked, the explain job, the ticked methods' places."""
    if given["image"] is None:
        raise UserError("add a photo first: upload one, paste one or take one with the webcam")
    chosen = given["methods"]
    methods = default_methods() if chosen is None else [m for m in METHODS if m in chosen]
    if not methods:
        raise UserError(f"tick at least one method ({', '.join(m.title for m in METHODS.values())})")
    display = app_runtime.check_display(given["opacity"], given["colour_map"], given["ig_display"])
    photo = open_image(given["image"])
    params = {name: given[name] for name in api.PARAMS}
    params = {k: (int(v) if isinstance(v, float) and v.is_integer() else v) for k, v in params.items()}
    model = app_runtime.model_key(given["model"] or DEFAULT_MODEL)
    # The model kind's own parameters: its number widgets, and the target picked under "What to explain".
    params.update(app_runtime.kind_options(model, given))
    params.update(app_runtime.target_options(given.get("target")))
    contrast = app_runtime.split_contrast(given["contrast"])
    job = app_runtime.explain_job(photo, given["prompt"], contrast, model, methods, DEVICE, given["sanity"], params)
    progress(0.0, desc="Starting…")
    return PageRun(model, job, display, photo, photo.size), starting_outputs(c, methods)


def refine_start(
    c: dict[str, Any], bundle: str | None, display_values: tuple, progress: Any
) -> tuple[PageRun, Updates]:
    """Refine: the run's bundle read back, the refine job for the method with a reference setting."""
    assert REFINED is not None and REFINED.reference is not None
    loaded = app_runtime.load_download(bundle)
    if loaded is None:
        raise UserError(f"run an explanation first; then {REFINED.title.lower()} can be refined")
    result, size = loaded
    display = app_runtime.check_display(*display_values)
    photo = Image.fromarray(result.image)  # the model's own pixels: resizing them again changes nothing
    progress(0.0, desc=f"Starting {REFINED.reference.label}…")
    run = PageRun(result.model, app_runtime.refine_job(result, REFINED.name, DEVICE), display, photo, size)
    run.noted.extend(result.methods)
    return run, {c["status"]: f"Refining {REFINED.title.lower()} with {REFINED.reference.label}…"}


def replay(bundle: str | None) -> tuple[Any, tuple[int, int]] | None:
    """(Result, display size) of a run's bundle, None before any run; a plain gr.Error if unreadable."""
    try:
        loaded = app_runtime.load_download(bundle)
    except UserError as error:
        raise page_error(error) from None
    return None if loaded is None else (loaded[0], fit(loaded[1], DISPLAY_SIDE))


def scrub(c: dict[str, Any], bundle: str | None, step: Any) -> Updates:
    """The curve scrubber: the pictures the curves scored at this step and the plots' markers
    (redrawn from the bundle; the model is not asked)."""
    loaded = replay(bundle)
    if loaded is None:
        return {c["scrub_text"]: "Run an explanation first: the scrubber then shows what the curves did."}
    result, show = loaded
    return scrub_outputs(c, result, int(step or 0), show)


def step_through(c: dict[str, Any], bundle: str | None, chosen: Any) -> Updates:
    """The step-through (redrawn from the bundle; the model is not asked)."""
    assert STEPPED is not None
    loaded = replay(bundle)
    if loaded is None:
        return {c["step_text"]: f"Run an explanation with {STEPPED.title.lower()} first."}
    result, show = loaded
    if STEPPED.name not in result.methods:
        return {c["step_text"]: report.step_markdown(result, STEPPED.name, 0)}
    return step_outputs(c, result, int(chosen or 0), show)


def play(c: dict[str, Any], bundle: str | None, chosen: Any) -> Iterator[Updates]:
    """Play the search: the step-through advances one region at a time (redrawn; no model)."""
    assert STEPPED is not None
    loaded = replay(bundle)
    if loaded is None or STEPPED.name not in loaded[0].methods:
        yield {c["step_text"]: f"Run an explanation with {STEPPED.title.lower()} first."}
        return
    result, show = loaded
    n = len(render.search_path(result, STEPPED.name))
    start = 0 if int(chosen or 0) >= n else int(chosen or 0)
    for k in range(start, n + 1):
        yield {c["step"]: gr.Slider(value=k), **step_outputs(c, result, k, show)}
        time.sleep(PLAY_INTERVAL_S)


def restyle(c: dict[str, Any], bundle: str | None, opacity: Any, colour_map: Any, ig_display: Any) -> Updates:
    """Colour map, opacity, smoothing: redraw the maps at once (no model)."""
    try:
        display = app_runtime.check_display(opacity, colour_map, ig_display)
    except UserError as error:
        raise page_error(error) from None
    loaded = replay(bundle)
    if loaded is None:
        return {c["colour_bar"]: report.colour_bar_html(render.colour_stops(display[1]))}
    result, show = loaded
    return overlay_outputs(c, result, display, show)


def offer(image: Any, prompt: Any, model: Any, *kind_values: Any) -> tuple[Any, Any, str]:
    """ "Show the model's answer or boxes": what the model offers to explain (a VLM's answer and
    its tokens, a detector's boxes drawn and numbered) as the choices of "What to explain", the
    picture and the words; one plain sentence on bad input."""
    try:
        if image is None:
            raise UserError("add a photo first: upload one, paste one or take one with the webcam")
        photo = open_image(image)
        name = app_runtime.model_key(model or DEFAULT_MODEL)
        given = dict(zip((spec.name for spec in KIND_PARAMS), kind_values))
        options = app_runtime.kind_options(name, given)
        options = {k: (int(v) if isinstance(v, float) and v.is_integer() else v) for k, v in options.items()}
        shown = app_runtime.offer_targets(photo, prompt, name, DEVICE, options, DISPLAY_SIDE)
    except Exception as error:  # noqa: BLE001 - every failure is one plain sentence
        raise page_error(error) from None
    first = shown.choices[0][1]
    return (
        gr.Dropdown(choices=shown.choices, value=first),
        gr.Image(value=shown.picture, visible=shown.picture is not None),
        shown.markdown,
    )


def forget_offer() -> tuple[Any, Any, str]:
    """A new photo, prompt or model: the last offer no longer applies; the model decides again."""
    return gr.Dropdown(choices=[app_runtime.MODEL_DECIDES], value=""), gr.Image(value=None, visible=False), ""


def make_handlers(c: dict[str, Any]) -> dict[str, Callable]:
    """The page's event functions, bound to its components ``c`` (Gradio reads their signatures)."""
    names = input_names()

    async def run_explain(*values: Any) -> AsyncIterator[Updates]:
        """Explain why the model scores the photo as the prompt; every output of the page."""
        # Gradio passes the progress tracker last; example caching calls through a wrapper without it.
        progress = values[-1] if len(values) > len(names) else _no_progress
        given = dict(zip(names, values))
        async for outputs in on_page(c, lambda: explain_start(c, given, progress), progress):
            yield outputs

    async def refine_method(
        bundle: str | None, opacity: float, colour_map: str, ig_display: str, progress: Any = gr.Progress()
    ) -> AsyncIterator[Updates]:
        """Re-run the method that has a reference setting (region search: plain greedy, SMDL's
        reference) alone on the same photo and settings; its map, curves, table rows and
        step-through are replaced, the rest kept."""
        display = (opacity, colour_map, ig_display)
        async for outputs in on_page(c, lambda: refine_start(c, bundle, display, progress), progress):
            yield outputs

    def scrub_handler(bundle: str | None, step: float) -> Updates:
        return scrub(c, bundle, step)

    def step_handler(bundle: str | None, chosen: float) -> Updates:
        return step_through(c, bundle, chosen)

    def play_handler(bundle: str | None, chosen: float) -> Iterator[Updates]:
        yield from play(c, bundle, chosen)

    def restyle_handler(bundle: str | None, opacity: float, colour_map: str, ig_display: str) -> Updates:
        return restyle(c, bundle, opacity, colour_map, ig_display)

    return {
        "run_explain": with_signature(run_explain, names, input_defaults()),
        "refine": refine_method,
        "scrub": scrub_handler,
        "step_through": step_handler,
        "play": play_handler,
        "restyle": restyle_handler,
    }


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
            raise gr.Error(
                f"{name} is not a picture this app can read; use PNG, JPEG, GIF, WebP, BMP or TIFF.",
                print_exception=False,
            ) from None

    component.preprocess = preprocess  # type: ignore[method-assign]  # on purpose: see the docstring
    return component


INTRO = """
# Saliency Lab
**Where does an image model look when it decides that a photo shows your prompt?** Pick a photo, say what
to look for and press **Run**: each method paints a map (bright = important), and two tests check how
faithful each map is.
"""

CONTRAST_SENTENCE = (
    "**Compare two prompts.** Type other prompts under *Contrast*: the maps then show what "
    "tells your prompt apart from them, e.g."
)

SANITY_HINT = (
    "The sanity check did not run. Tick **Sanity check** above **Run** to see every map again on the "
    "model destroyed layer by layer (slow: every method runs again for each stage)."
)

CSS = """
.caption p { font-size: 0.95rem; margin: 0.15em 0 0.5em 0; }
#score { padding: 0.2em 0.6em; }
#score h3 { margin: 0; font-size: 1.2rem; }
#score p { margin: 0.2em 0; font-size: 0.9rem; }
#warnings p { color: #8a3b00; }
.colour-bar { display: flex; align-items: center; gap: 0.6em; font-size: 0.9rem; }
.colour-bar div { flex: 1; height: 14px; border-radius: 3px; border: 1px solid #888; }
#result-heading h2 { margin: 0.2em 0; }
"""


def _examples_cache_mode() -> tuple[Any, Literal["eager", "lazy"] | None]:
    mode = os.environ.get("SALIENCY_EXAMPLES_CACHE", "eager" if os.environ.get("SPACE_ID") else "lazy").lower()
    if mode == "off":
        return False, None
    return True, ("lazy" if mode == "lazy" else "eager")


def build_demo() -> gr.Blocks:
    c = result_components()
    handlers = make_handlers(c)
    defaults = input_defaults()
    with gr.Blocks(title="Saliency Lab", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        widgets: dict[str, Any] = {}
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                # type="filepath", image_mode=None: the engine decodes the original file (transparency
                # on white, 16-bit scaled), with its size limits and plain errors.
                widgets["image"] = _plain_upload_errors(
                    gr.Image(
                        label="Photo (upload, paste or webcam)",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard", "webcam"],
                        height=250,
                        elem_id="photo",
                    )
                )
                examples_slot = gr.Column()
            with gr.Column(scale=5, min_width=360):
                widgets["prompt"] = gr.Textbox(
                    label="Prompt: what should the model look for?",
                    value="",
                    placeholder="e.g. a cat",
                    max_lines=1,
                    elem_id="prompt",
                )
                widgets["contrast"] = gr.Textbox(
                    label="Contrast prompts (optional, separated by commas)",
                    max_lines=2,
                    elem_id="contrast",
                    placeholder="e.g. a tiger, a lynx: “why a cat and not a tiger?”",
                    value="",
                )
                widgets["model"] = gr.Dropdown(
                    MODEL_CHOICES,
                    value=DEFAULT_MODEL,
                    label="Model (or type one: clip:, vlm: or detector: and a Hugging Face id)",
                    elem_id="model",
                    allow_custom_value=True,
                )
                with gr.Group(elem_id="target-group"):
                    with gr.Row(equal_height=True):
                        widgets["target"] = gr.Dropdown(
                            [app_runtime.MODEL_DECIDES],
                            value="",
                            label="What to explain (VLM: its answer or one token; detector: one of its boxes)",
                            elem_id="target",
                            allow_custom_value=True,
                            scale=3,
                        )
                        offer_button = gr.Button(
                            "Show the model's answer or boxes", elem_id="offer", variant="secondary", scale=1
                        )
                    offer_picture = gr.Image(
                        label="The detector's boxes (numbered as in the list)",
                        visible=False,
                        interactive=False,
                        elem_id="offer-picture",
                    )
                    offer_text = gr.Markdown(elem_id="offer-text")
                widgets["methods"] = gr.CheckboxGroup(
                    [(m.title, name) for name, m in METHODS.items()],
                    value=default_methods(),
                    label="Methods",
                    elem_id="methods",
                )
                widgets["sanity"] = gr.Checkbox(
                    value=False,
                    elem_id="sanity",
                    label="Sanity check (Adebayo et al. 2018): draw every map again "
                    "on the model destroyed layer by layer. Slow: each method runs again for each stage.",
                )
                with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                    for heading, specs in method_params().items():
                        gr.Markdown(f"**{heading}**")
                        with gr.Row():
                            for spec in specs:
                                widgets[spec.name] = param_widget(spec)
                    if KIND_PARAMS:
                        gr.Markdown("**VLM and detector models**")
                        with gr.Row():
                            for spec in KIND_PARAMS:
                                widgets[spec.name] = param_widget(spec)
                with gr.Accordion("Display (applies at once, no new run)", open=False, elem_id="display"), gr.Row():
                    widgets["opacity"] = gr.Slider(
                        0.0, 1.0, value=defaults["opacity"], step=0.05, label="Overlay opacity", elem_id="opacity"
                    )
                    widgets["colour_map"] = gr.Dropdown(
                        list(render.COLOUR_MAPS),
                        value=defaults["colour_map"],
                        elem_id="colour-map",
                        label="Colour map (inferno, viridis, magma, cividis: perceptually uniform)",
                    )
                    widgets["ig_display"] = gr.Radio(
                        [(label, value) for value, label in render.IG_DISPLAYS.items()],
                        value=defaults["ig_display"],
                        label=" / ".join(m.title for m in SMOOTHABLE) or "Smoothable maps",
                        elem_id="ig-display",
                    )
                with gr.Row():
                    run = gr.Button("Run", variant="primary", elem_id="run", scale=3)
                    cancel = gr.Button("Cancel", variant="secondary", elem_id="cancel", scale=1)

        inputs = [widgets[name] for name in input_names()]
        outputs = list(c.values())
        cache, cache_mode = _examples_cache_mode()

        def rows(photo: str, prompt: str, contrast: str) -> list:
            return [str(ASSETS / photo), prompt, contrast, *(defaults[name] for name in input_names()[3:])]

        with examples_slot:
            photo_examples = gr.Examples(
                examples=[rows(*example) for example in EXAMPLES],
                inputs=inputs,
                outputs=outputs,
                fn=handlers["run_explain"],
                cache_examples=cache,
                cache_mode=cache_mode,
                visible_columns=[0],
                label="Examples: click a photo (it also resets the settings)",
                examples_per_page=len(EXAMPLES),
                api_visibility="undocumented",
                preload=False,
                elem_id="examples",
            )
            gr.Markdown(CONTRAST_SENTENCE, elem_id="contrast-sentence")
            contrast_examples = gr.Examples(
                examples=[rows(photo, prompt, contrast) for photo, prompt, contrast, _ in CONTRAST_EXAMPLES],
                example_labels=[label for *_, label in CONTRAST_EXAMPLES],
                inputs=inputs,
                outputs=outputs,
                fn=handlers["run_explain"],
                cache_examples=cache,
                cache_mode=cache_mode,
                label=None,
                api_visibility="undocumented",
                api_name="load_contrast_example",
                preload=False,
                elem_id="contrast-examples",
            )

        with gr.Column(elem_id="result"):
            gr.Markdown("## Result", elem_id="result-heading")
            c["status"].render()
            with gr.Row(equal_height=False):
                with gr.Column(scale=3):
                    c["score"].render()
                c["probabilities"].render()
            c["colour_bar"].render()
            # Maps in one row and their captions in the next (not a column per method): a method that
            # did not run hides both, and its empty column would otherwise keep its place.
            with gr.Row(equal_height=True):
                for name in METHODS:
                    c[f"overlay-{name}"].render()
            with gr.Row(equal_height=False):
                for name in METHODS:
                    c[f"caption-{name}"].render()
            c["warnings"].render()
            with gr.Row(equal_height=True):
                c["deletion"].render()
                c["insertion"].render()
            c["scrubber"].render()
            c["scrub_picture"].render()
            c["scrub_text"].render()
            play_button = refine_button = None
            if STEPPED is not None:
                gr.Markdown(f"### {STEPPED.title}, step by step")
                with gr.Row(equal_height=True):
                    with gr.Column(scale=6):
                        c["step"].render()
                    play_button = gr.Button("▶ Play the search", elem_id="play", scale=1, min_width=140)
                c["step_text"].render()
                c["step_picture"].render()
            if REFINED is not None and REFINED.reference is not None:
                note = f" ({REFINED.reference.note})" if REFINED.reference.note else ""
                refine_button = gr.Button(
                    f"Refine {REFINED.title.lower()} with {REFINED.reference.label}{note}",
                    elem_id="refine",
                    variant="secondary",
                )
            gr.Markdown("### Sanity check")
            c["sanity_picture"].render()
            c["sanity_text"].render()
            c["auc"].render()
            c["download"].render()
            with gr.Accordion("How to read this", open=True):
                c["how_to_read"].render()

        progress_on = [
            c["status"],
            c["score"],
            c["deletion"],
            c["insertion"],
            # a method that previews its map as it runs shows it there, not a progress bar
            *(c[f"overlay-{n}"] for n, m in METHODS.items() if not m.previews),
        ]
        # Declared before the run itself: the browser runs a trigger's events in order, and a script
        # declared after a queued event waits for that event to finish.
        gr.on([run.click, widgets["prompt"].submit], None, js=SCROLL_TO_RESULT)
        explain_event = gr.on(
            [run.click, widgets["prompt"].submit],
            handlers["run_explain"],
            inputs=inputs,
            outputs=outputs,
            api_name="explain",
            concurrency_limit=len(MODEL_CHOICES),
            concurrency_id="explain",
            show_progress_on=progress_on,
        )
        for examples in (photo_examples, contrast_examples):
            examples.dataset.click(None, js=SCROLL_TO_RESULT)
        display = [widgets["opacity"], widgets["colour_map"], widgets["ig_display"]]
        cancellable = [explain_event]
        if refine_button is not None and REFINED is not None:
            cancellable.append(
                refine_button.click(
                    handlers["refine"],
                    inputs=[c["download"], *display],
                    outputs=outputs,
                    api_name=f"refine_{REFINED.name}",
                    concurrency_id="explain",
                    concurrency_limit=len(MODEL_CHOICES),
                    show_progress_on=[c["status"], *([c["step_picture"]] if STEPPED is not None else [])],
                )
            )
        if play_button is not None:
            cancellable.append(
                play_button.click(
                    handlers["play"],
                    inputs=[c["download"], c["step"]],
                    outputs=[c["step"], c["step_picture"], c["step_text"]],
                    api_name="play",
                    show_progress="hidden",
                    concurrency_limit=4,
                    concurrency_id="play",
                )
            )
        cancel.click(None, cancels=cancellable)
        offer_outputs = [widgets["target"], offer_picture, offer_text]
        offer_names = ["image", "prompt", "model", *(spec.name for spec in KIND_PARAMS)]

        def offer_handler(*values: Any) -> tuple[Any, Any, str]:
            return offer(*values)

        offer_handler.__signature__ = inspect.Signature(  # type: ignore[attr-defined]  # the API's parameter names
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in offer_names]
        )
        offer_button.click(
            offer_handler,
            inputs=[widgets["image"], widgets["prompt"], widgets["model"], *(widgets[s.name] for s in KIND_PARAMS)],
            outputs=offer_outputs,
            api_name="offer",
            concurrency_id="explain",
            concurrency_limit=len(MODEL_CHOICES),
        )
        gr.on(
            [widgets[name].change for name in ("image", "prompt", "model")],
            forget_offer,
            outputs=offer_outputs,
            api_visibility="undocumented",
            show_progress="hidden",
            queue=False,
        )
        # Replays of the run: they read the bundle and never call the model.
        c["scrubber"].input(
            handlers["scrub"],
            inputs=[c["download"], c["scrubber"]],
            outputs=[c["scrub_picture"], c["scrub_text"], c["deletion"], c["insertion"]],
            api_name="scrub",
            trigger_mode="always_last",
            show_progress="hidden",
            concurrency_limit=2,
            concurrency_id="replay",
        )
        if STEPPED is not None:
            c["step"].input(
                handlers["step_through"],
                inputs=[c["download"], c["step"]],
                outputs=[c["step_picture"], c["step_text"]],
                api_name="step_through",
                trigger_mode="always_last",
                show_progress="hidden",
                concurrency_limit=2,
                concurrency_id="replay",
            )
        gr.on(
            [w.change for w in display],
            handlers["restyle"],
            inputs=[c["download"], *display],
            outputs=[
                c["colour_bar"],
                c["sanity_picture"],
                *(c[f"{kind}-{n}"] for n in METHODS for kind in ("overlay", "caption")),
            ],
            api_name="restyle",
            trigger_mode="always_last",
            show_progress="hidden",
            concurrency_limit=2,
            concurrency_id="replay",
        )
    return demo


demo = build_demo()
demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    # The default model loads and compiles while the page opens, not in the first visitor's Run.
    app_runtime.LOCKS.preload(DEFAULT_MODEL)
    demo.launch(max_file_size="10mb", allowed_paths=[str(ASSETS)], show_error=False, css=CSS)
