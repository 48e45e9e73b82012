"""Saliency Lab: the Gradio app. Widgets and wiring only.

Every computation goes through the engine (``explainers.api``), every picture through
``explainers.render`` and every sentence through ``explainers.report``; this file imports no
torch of its own. The methods, their parameters and the protocol's parameters are read from
the registry (``explainers.methods.METHODS``, ``explainers.api.PARAMS``): a method added there
gets its checkbox, its Advanced widgets, its map, its notes and its API parameters here.

    python app.py                  # http://127.0.0.1:7860, offline, on the bundled model

Settings read from the environment:
    GRADIO_SERVER_NAME / GRADIO_SERVER_PORT   where to listen (Gradio's own variables)
    SALIENCY_EXAMPLES_CACHE                   eager | lazy | off. Default: eager on a Hugging
                                              Face Space (SPACE_ID set), lazy elsewhere.
    SALIENCY_DEVICE                           auto | cpu | cuda (or cuda:N). Default auto: CUDA
                                              where there is a GPU, else the CPU.

After a run the page replays it without the model: the curve scrubber, the region search's
step-through and the display settings redraw from the run's download bundle (the maps and
curves, ``render.bundle_from_zip``), which Gradio also keeps with cached examples.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Before anything loads torch: its idle OpenMP threads sleep instead of spinning beside the web
# server and OpenVINO's threads (explainers/_threads.py; README, "Threads").
from explainers import _threads  # noqa: F401, I001

import gradio as gr
from PIL import Image

from explainers import UserError, api, render, report
from explainers.images import open_image
from explainers.methods import METHODS, default_methods
from explainers.models import CLIP_CHOICES, DEFAULT_MODEL
from explainers.params import Param
from explainers.types import MethodResult

log = logging.getLogger("saliency_lab.app")

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"

DEVICE = os.environ.get("SALIENCY_DEVICE", "auto").strip() or "auto"
MODEL_CHOICES = [(f"{DEFAULT_MODEL} (offline: EfficientNet-Lite0 + prompt matching)", DEFAULT_MODEL)] + [
    (f"{name} (downloads on first use)", name) for name in CLIP_CHOICES
]
DISPLAY_SIDE = 512  # overlays on the page: the photo's aspect, longest side this many pixels
DOWNLOAD_SIDE = 1024  # overlays in the download: the photo's size, capped at this
QUEUE_SIZE = 16
RUNS_DIR = Path(tempfile.gettempdir()) / "saliency-lab-runs"
RUNS_MAX_AGE_S = 3600
SLIDER_MAX_SPAN = 10_000  # an int parameter with a wider range (the seed) gets a number box, not a slider
SCRUB_START = 0.3  # the scrubber starts at this fraction of the pixels: "delete the top 30 %"
STEP_START = 5  # the step-through starts after this many regions
PREVIEW_INTERVAL_S = 0.4
PLAY_INTERVAL_S = (
    0.7  # "Play the search": seconds per region  # the region search's map, redrawn at most this often while it runs
)
DISPLAY_DEFAULTS = {"opacity": 0.5, "colour_map": render.DEFAULT_COLOUR_MAP, "ig_display": "raw"}

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
# region search filling in and then the maps show without scrolling past the examples.
SCROLL_TO_RESULT = "() => { document.getElementById('result')?.scrollIntoView({block: 'start'}); }"


# --------------------------------------------------------------------------------------------
# The inputs, generated from the registry.


def param_widget(spec: Param) -> gr.components.Component:
    """A parameter's widget from its spec: choices -> radio (with the spec's labels); a whole-number
    range -> slider (a number box when the range is too wide to slide, e.g. the seed); a number
    range -> slider with the spec's step."""
    common = {
        "label": spec.label or spec.help,
        "info": spec.help[:1].upper() + spec.help[1:],
        "elem_id": f"param-{spec.name}",
    }
    if spec.choices:
        return gr.Radio([(spec.labels.get(c, c), c) for c in spec.choices], value=spec.default, **common)
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
    return ["image", "prompt", "contrast", "model", "methods", *api.PARAMS, "sanity", *DISPLAY_DEFAULTS]


def input_defaults() -> dict[str, Any]:
    return {
        "contrast": "",
        "model": DEFAULT_MODEL,
        "methods": default_methods(),
        **api.DEFAULTS,
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
    function.__signature__ = inspect.Signature(parameters)
    return function


# --------------------------------------------------------------------------------------------
# Running the engine: one run at a time per model, cancellable, errors as plain sentences.


class RunCancelled(Exception):
    """Raised inside the worker thread when the user pressed Cancel."""


_model_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
_loaded_models: set[str] = set()


def _split_contrast(text: str | None) -> list[str]:
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


def _fit(size, side: int) -> tuple[int, int]:
    width, height = size
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class _Latest:
    """The newest preview a worker thread has posted, taken by the page's loop (older ones are dropped)."""

    def __init__(self) -> None:
        self._lock, self._value = threading.Lock(), None

    def put(self, value) -> None:
        with self._lock:
            self._value = value

    def take(self):
        with self._lock:
            value, self._value = self._value, None
        return value


def _locked(model: str, progress, cancelled: threading.Event, job: Callable[[], Any]):
    """Run ``job`` in this worker thread once the model's lock is ours; give up when cancelled."""
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
            what = (
                "the bundled model"
                if model == DEFAULT_MODEL
                else f"{model} (first use: a download of several hundred MB)"
            )
            progress(0.0, desc=f"Loading {what}…")
        out = job()
        _loaded_models.add(model)
        return out
    finally:
        lock.release()


def _reporter(progress, cancelled: threading.Event, previews: _Latest):
    """The engine's ProgressFn: cancels at the next report, forwards the bar, keeps previews."""

    def report_progress(fraction: float, description: str, **details) -> None:
        if cancelled.is_set():
            raise RunCancelled()
        if details.get("preview") is not None:
            previews.put(details["preview"])
        text = description[:1].upper() + description[1:]
        progress(float(fraction), desc=text if text == "Done" else text + "…")

    return report_progress


async def _stream(
    work: Callable[[], Any], cancelled: threading.Event, previews: _Latest, on_preview: Callable[[Any], dict]
):
    """Run ``work`` in a thread; yield the page's updates for each preview it posts, then
    ``("done", its result)``. Cancelling the event (the page's Cancel) stops the thread at its
    next progress report."""
    task = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=PREVIEW_INTERVAL_S)
            if done:
                break
            preview = previews.take()
            if preview is not None:
                yield on_preview(preview)
        yield ("done", task.result())
    except asyncio.CancelledError:
        cancelled.set()
        raise


def _plain_errors(error: Exception) -> gr.Error:
    if isinstance(error, UserError):
        return gr.Error(report.sentence(str(error)), print_exception=False)
    if isinstance(error, gr.Error):
        return error
    log.error("run failed", exc_info=error)
    return gr.Error(
        "Something went wrong while explaining this photo. Please try again, or try another photo or fewer methods.",
        print_exception=False,
    )


def _check_display(opacity, colour_map, ig_display) -> tuple[float, str, str]:
    if colour_map not in render.COLOUR_MAPS:
        raise UserError(f"the colour map must be one of {', '.join(render.COLOUR_MAPS)}")
    if ig_display not in render.IG_DISPLAYS:
        raise UserError(f"the integrated-gradients display must be one of {', '.join(render.IG_DISPLAYS)}")
    try:
        opacity = min(1.0, max(0.0, float(opacity)))
    except (TypeError, ValueError):
        raise UserError("the overlay opacity must be a number from 0 to 1") from None
    return opacity, colour_map, ig_display


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
    c["step"] = gr.Slider(
        0,
        49,
        value=0,
        step=1,
        elem_id="step-through",
        render=False,
        label="Region search step-through: regions chosen so far",
    )
    c["step_picture"] = gr.Image(
        label="The region search at this step",
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


def page_outputs(
    c: dict[str, Any],
    result,
    classes,
    display: tuple[float, str, str],
    size: tuple[int, int],
    status: str | None = None,
) -> dict:
    """What the page shows first of a result: score, maps with their verdicts, curves, table,
    texts ({component: value}). ``replay_outputs`` adds the rest."""
    show = _fit(size, DISPLAY_SIDE)
    steps = int(result.params["curve_steps"])
    ylim = render.shared_ylim(result)
    out: dict = {
        c["status"]: status or report.done_status(result),
        c["score"]: report.score_markdown(result, classes),
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


def replay_outputs(c: dict[str, Any], result, size: tuple[int, int], bundle: str) -> dict:
    """The download and what replays the run from it: the scrubber and the step-through, set at
    their starting points."""
    show = _fit(size, DISPLAY_SIDE)
    steps = int(result.params["curve_steps"])
    start = round(SCRUB_START * steps)
    out: dict = {c["download"]: bundle, c["scrubber"]: gr.Slider(minimum=0, maximum=steps, value=start)}
    out.update(scrub_outputs(c, result, start, show))
    if "region" in result.methods:
        n = len(result.methods["region"].saliency.meta.get("path") or [])
        chosen = min(STEP_START, n)
        out[c["step"]] = gr.Slider(minimum=0, maximum=n, value=chosen, visible=True)
        out.update(step_outputs(c, result, chosen, show))
    else:
        out[c["step"]] = gr.Slider(visible=False)
        out[c["step_picture"]] = gr.Image(value=None, visible=False)
        out[c["step_text"]] = report.step_markdown(result, 0)
    return out


async def finish(
    c: dict[str, Any], result, classes, display: tuple[float, str, str], size: tuple[int, int], status: str
):
    """Yield the page's first look at a result, then (after the download is written and the
    replays drawn, in a worker thread) everything: the last yield is what the API and the
    example cache keep."""
    first = await asyncio.to_thread(
        page_outputs, c, result, classes, display, size, status + " Drawing the scrubber and the step-through…"
    )
    yield first
    rest = await asyncio.to_thread(lambda: replay_outputs(c, result, size, _save(result, display, size)))
    yield {**first, **rest, c["status"]: status}


def overlay_outputs(c: dict[str, Any], result, display: tuple[float, str, str], show: tuple[int, int]) -> dict:
    opacity, colour_map, ig_display = display
    strip = render.sanity_strip(result, colour_map, show)
    out = {
        c["colour_bar"]: report.colour_bar_html(render.colour_stops(colour_map)),
        c["sanity_picture"]: gr.Image(value=strip, visible=strip is not None),
    }
    for name in METHODS:
        if name in result.methods:
            picture = render.method_picture(result, name, colour_map, opacity, show, ig_display)
            out[c[f"overlay-{name}"]] = gr.Image(value=picture, visible=True)
            out[c[f"caption-{name}"]] = gr.Markdown(value=report.caption(result, name), visible=True)
        else:
            out[c[f"overlay-{name}"]] = gr.Image(value=None, visible=False)
            out[c[f"caption-{name}"]] = gr.Markdown(value="", visible=False)
    return out


def scrub_outputs(c: dict[str, Any], result, step: int, show: tuple[int, int]) -> dict:
    ylim = render.shared_ylim(result)
    return {
        c["scrub_picture"]: render.scrub_picture(result, step, show),
        c["scrub_text"]: report.scrub_markdown(result, step),
        c["deletion"]: render.curve_plot(result, "deletion", ylim, marker=step),
        c["insertion"]: render.curve_plot(result, "insertion", ylim, marker=step),
    }


def step_outputs(c: dict[str, Any], result, chosen: int, show: tuple[int, int]) -> dict:
    return {
        c["step_picture"]: gr.Image(value=render.step_picture(result, chosen, show), visible=True),
        c["step_text"]: report.step_markdown(result, chosen),
    }


def _save(result, display: tuple[float, str, str], size: tuple[int, int]) -> str:
    folder = _run_dir()
    files = render.save_bundle(
        result, folder / "saliency-lab", display[1], display[0], _fit(size, min(DOWNLOAD_SIDE, max(size)))
    )
    return str(render.zip_bundle(files, folder / "saliency-lab-result.zip"))


def _bundle(path: str | None):
    """(Result, its photo's size) from a run's download, or None before any run."""
    if not path:
        return None
    try:
        result, settings = render.bundle_from_zip(path)
    except Exception:
        log.warning("unreadable bundle %s", path, exc_info=True)
        raise gr.Error("This result can no longer be read; press Run again.", print_exception=False) from None
    size = tuple(settings.get("overlay_size") or result.image.shape[1::-1])
    return result, size


# --------------------------------------------------------------------------------------------
# The events.


def make_handlers(c: dict[str, Any]) -> dict[str, Callable]:
    """The page's event functions, bound to its components ``c``."""

    def preview_update(photo, display, show):
        def update(preview) -> dict:
            opacity, colour_map, _ = display
            return (
                {
                    c["overlay-region"]: gr.Image(
                        value=render.preview_overlay(photo, preview, colour_map, opacity, show), visible=True
                    )
                }
                if "overlay-region" in c
                else {}
            )

        return update

    async def run_explain(*values):
        """Explain why the model scores the photo as the prompt; every output of the page."""
        names = input_names()
        # Gradio passes the progress tracker last; example caching calls through a wrapper without it.
        progress = values[-1] if len(values) > len(names) else (lambda *_, **__: None)
        given = dict(zip(names, values))
        cancelled, previews = threading.Event(), _Latest()
        try:
            if given["image"] is None:
                raise UserError("add a photo first: upload one, paste one or take one with the webcam")
            chosen = given["methods"]
            methods = default_methods() if chosen is None else [m for m in METHODS if m in chosen]
            if not methods:
                raise UserError(f"tick at least one method ({', '.join(m.title for m in METHODS.values())})")
            display = _check_display(given["opacity"], given["colour_map"], given["ig_display"])
            photo = open_image(given["image"])
            params = {name: given[name] for name in api.PARAMS}
            params = {k: (int(v) if isinstance(v, float) and v.is_integer() else v) for k, v in params.items()}
            model = given["model"] or DEFAULT_MODEL
            show = _fit(photo.size, DISPLAY_SIDE)
            progress(0.0, desc="Starting…")
            # The ticked methods' places at once (their maps come at the end; region search's fills in).
            yield {
                c[f"{kind}-{name}"]: gr.update(visible=name in methods)
                for name in METHODS
                for kind in ("overlay", "caption")
            }

            def work():
                def job():
                    result = api.explain(
                        photo,
                        given["prompt"],
                        contrast=_split_contrast(given["contrast"]),
                        model=model,
                        methods=methods,
                        device=DEVICE,
                        sanity=given["sanity"],
                        progress=_reporter(progress, cancelled, previews),
                        **params,
                    )
                    return result, api.describe_prompt(api.resolve_model(model, DEVICE), result.target.prompt)

                return _locked(model, progress, cancelled, job)

            async for update in _stream(work, cancelled, previews, preview_update(photo, display, show)):
                if isinstance(update, tuple) and update[0] == "done":
                    result, classes = update[1]
                    async for outputs in finish(c, result, classes, display, photo.size, report.done_status(result)):
                        yield outputs
                else:
                    yield update
        except asyncio.CancelledError:
            cancelled.set()
            raise
        except Exception as error:  # noqa: BLE001 - every failure is one plain sentence
            raise _plain_errors(error) from None

    async def refine_region(bundle, opacity, colour_map, ig_display, progress=gr.Progress()):
        """Re-run region search alone with plain greedy (SMDL's reference) on the same photo and
        settings; its map, curves, table rows and step-through are replaced, the rest kept."""
        cancelled, previews = threading.Event(), _Latest()
        try:
            loaded = _bundle(bundle)
            if loaded is None:
                raise UserError("run an explanation first; then region search can be refined")
            result, size = loaded
            display = _check_display(opacity, colour_map, ig_display)
            show = _fit(size, DISPLAY_SIDE)
            photo = Image.fromarray(result.image)  # the model's own pixels: resizing them again changes nothing
            progress(0.0, desc="Starting plain greedy…")
            started = time.perf_counter()

            def work():
                return _locked(
                    result.model, progress, cancelled, lambda: refine(result, _reporter(progress, cancelled, previews))
                )

            async for update in _stream(work, cancelled, previews, preview_update(photo, display, show)):
                if isinstance(update, tuple) and update[0] == "done":
                    refined = update[1]
                    classes = api.describe_prompt(api.resolve_model(refined.model, DEVICE), refined.target.prompt)
                    status = (
                        f"Done: region search refined with plain greedy in {time.perf_counter() - started:.1f} s "
                        f"on `{refined.model}`."
                    )
                    async for outputs in finish(c, refined, classes, display, size, status):
                        yield outputs
                else:
                    yield update
        except asyncio.CancelledError:
            cancelled.set()
            raise
        except Exception as error:  # noqa: BLE001
            raise _plain_errors(error) from None

    def scrub(bundle, step):
        """The curve scrubber: the pictures the curves scored at this step and the plots' markers
        (redrawn from the bundle; the model is not asked)."""
        loaded = _bundle(bundle)
        if loaded is None:
            return {c["scrub_text"]: "Run an explanation first: the scrubber then shows what the curves did."}
        result, size = loaded
        return scrub_outputs(c, result, int(step or 0), _fit(size, DISPLAY_SIDE))

    def step_through(bundle, chosen):
        """The region search's step-through (redrawn from the bundle; the model is not asked)."""
        loaded = _bundle(bundle)
        if loaded is None:
            return {c["step_text"]: "Run an explanation with region search first."}
        result, size = loaded
        if "region" not in result.methods:
            return {c["step_text"]: report.step_markdown(result, 0)}
        return step_outputs(c, result, int(chosen or 0), _fit(size, DISPLAY_SIDE))

    def play(bundle, chosen):
        """Play the search: the step-through advances one region at a time (redrawn; no model)."""
        loaded = _bundle(bundle)
        if loaded is None or "region" not in loaded[0].methods:
            yield {c["step_text"]: "Run an explanation with region search first."}
            return
        result, size = loaded
        n = len(result.methods["region"].saliency.meta.get("path") or [])
        start = 0 if int(chosen or 0) >= n else int(chosen or 0)
        for k in range(start, n + 1):
            yield {c["step"]: gr.Slider(value=k), **step_outputs(c, result, k, _fit(size, DISPLAY_SIDE))}
            time.sleep(PLAY_INTERVAL_S)

    def restyle(bundle, opacity, colour_map, ig_display):
        """Colour map, opacity, IG display: redraw the maps at once (no model)."""
        try:
            display = _check_display(opacity, colour_map, ig_display)
        except UserError as error:
            raise gr.Error(report.sentence(str(error)), print_exception=False) from None
        loaded = _bundle(bundle)
        if loaded is None:
            return {c["colour_bar"]: report.colour_bar_html(render.colour_stops(display[1]))}
        result, size = loaded
        return overlay_outputs(c, result, display, _fit(size, DISPLAY_SIDE))

    names = input_names()
    return {
        "run_explain": with_signature(run_explain, names, input_defaults()),
        "refine_region": refine_region,
        "scrub": scrub,
        "step_through": step_through,
        "play": play,
        "restyle": restyle,
    }


def refine(result, progress) -> Any:
    """``result`` with region search re-run alone by plain greedy and its curves re-scored (the
    random reference is re-scored too: same seed and pixels, so the same curves)."""
    started = time.perf_counter()
    params = {name: result.params[name] for name in api.PARAMS if name in result.params}
    params["region_search"] = "greedy"
    request = api.validate(result.target.prompt, list(result.target.contrast), ["region"], **params)
    prepared = api.prepare(Image.fromarray(result.image), request.target, api.resolve_model(result.model, DEVICE))
    maps = api.run_methods(
        prepared, ["region"], request.params, progress=lambda f, text, **d: progress(0.85 * f, text, **d)
    )
    curves, reference = api.evaluate_maps(
        prepared,
        {"region": maps["region"].values},
        request.params,
        progress=lambda f, text, **d: progress(0.85 + 0.15 * f, text, **d),
    )
    progress(1.0, "done")
    methods = {**result.methods, "region": MethodResult(maps["region"], curves["region"])}
    ordered = {name: methods[name] for name in METHODS if name in methods}
    sanity = result.sanity
    if sanity is not None:  # its region-search strip was of the fast search's map: not the refined one
        sanity = dataclasses.replace(sanity, methods={n: s for n, s in sanity.methods.items() if n != "region"})
    return dataclasses.replace(
        result,
        methods=ordered,
        random=reference,
        sanity=sanity,
        params={**result.params, **request.params, "methods": list(ordered)},
        seconds=result.seconds + time.perf_counter() - started,
    )


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

    component.preprocess = preprocess
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


def _examples_cache_mode() -> tuple[Any, str | None]:
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
                widgets["model"] = gr.Dropdown(MODEL_CHOICES, value=DEFAULT_MODEL, label="Model", elem_id="model")
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
                        label="Integrated gradients",
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
            gr.Markdown("### Region search, step by step")
            with gr.Row(equal_height=True):
                with gr.Column(scale=6):
                    c["step"].render()
                play_button = gr.Button("▶ Play the search", elem_id="play", scale=1, min_width=140)
            c["step_text"].render()
            c["step_picture"].render()
            refine_button = gr.Button(
                "Refine region search with plain greedy (the paper's reference: slower)",
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
            *(c[f"overlay-{n}"] for n in METHODS if n != "region"),
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
            concurrency_limit=1 + len(CLIP_CHOICES),
            concurrency_id="explain",
            show_progress_on=progress_on,
        )
        for examples in (photo_examples, contrast_examples):
            examples.dataset.click(None, js=SCROLL_TO_RESULT)
        display = [widgets["opacity"], widgets["colour_map"], widgets["ig_display"]]
        refine_event = refine_button.click(
            handlers["refine_region"],
            inputs=[c["download"], *display],
            outputs=outputs,
            api_name="refine_region",
            concurrency_id="explain",
            concurrency_limit=1 + len(CLIP_CHOICES),
            show_progress_on=[c["status"], c["step_picture"]],
        )
        play_event = play_button.click(
            handlers["play"],
            inputs=[c["download"], c["step"]],
            outputs=[c["step"], c["step_picture"], c["step_text"]],
            api_name="play",
            show_progress="hidden",
            concurrency_limit=4,
            concurrency_id="play",
        )
        cancel.click(None, cancels=[explain_event, refine_event, play_event])
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
    demo.launch(max_file_size="10mb", allowed_paths=[str(ASSETS)], show_error=False, css=CSS)
