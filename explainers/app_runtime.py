"""The app's run runtime: what happens between a click and the page's updates, without gradio
(app.py holds the widgets and the wiring; tests/test_app_runtime.py tests this without a browser).

- **One run at a time per model** (``ModelLocks``): a second run on the same model waits, says so,
  and gives up when cancelled; runs on different models go side by side.
- **A run is a job in a worker thread** (``Job``: it gets a progress function and ``emit``).
  ``stream`` turns what it emits into events for the page, in order: each method's map the moment
  it is made (``MapReady``, from ``api.explain_stages``), the maps found so far by a method that
  reports them (``Preview``) and where the run is (``Status``: both the newest only, at most
  every PREVIEW_INTERVAL_S), the Result once
  the curves are in while a sanity check still runs (``Evaluated``), and last ``Finished`` with the
  job's outcome.
- **Cancel**: when the page cancels the event (or stops reading), ``stream`` sets the run's cancel
  flag, and the job stops at its next progress report (``RunCancelled``), freeing the model.
- **Errors** are one plain sentence (``plain_message``); unexpected ones are logged.
- **Refine**: a method re-run alone with its registry entry's reference setting (region search:
  plain greedy), its curves re-scored, the other maps kept (``refine``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import api, render, report
from .errors import UserError
from .methods import METHODS, get_method
from .models import MODEL_KINDS, ModelAdapter, model_kind
from .params import Param
from .types import MethodResult, ProgressFn, Result, SaliencyMap, Target

log = logging.getLogger("saliency_lab.app")

PREVIEW_INTERVAL_S = 0.4  # a method's map found so far is redrawn at most this often while it runs
RUNS_DIR = Path(tempfile.gettempdir()) / "saliency-lab-runs"
RUNS_MAX_AGE_S = 3600
GENERIC_ERROR = (
    "Something went wrong while explaining this photo. Please try again, or try another photo or fewer methods."
)
# The page's progress bar: progress(fraction, desc=text), as gr.Progress takes it.
PageProgress = Callable[..., Any]


class RunCancelled(Exception):
    """Raised inside the worker thread when the user pressed Cancel."""


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapReady:
    """One method's map, the moment it is made (its curves come later)."""

    method: str
    saliency: SaliencyMap
    image: np.ndarray  # uint8 [H, W, 3]: the model-input view the map refers to (Result.image)
    outline: tuple[float, float, float, float] | None = None  # the target's part of the photo (Target.outline)


@dataclass(frozen=True)
class TargetReady:
    """The target the model resolved (a VLM's answer, a detector's box), before any map is made."""

    target: Target


@dataclass(frozen=True)
class Preview:
    """The map a method has found so far (region search's regions chosen so far, the rest 0)."""

    method: str | None
    values: np.ndarray


@dataclass(frozen=True)
class Status:
    """Where the run is: the engine's last progress report (the newest only, like previews)."""

    fraction: float
    text: str


@dataclass(frozen=True)
class Outcome:
    """What a run gives the page: the Result, the prompt's matched classes (a classifier's), the
    status line."""

    result: Result
    classes: list[tuple[str, float]] | None
    status: str


@dataclass(frozen=True)
class Evaluated:
    """The curves and verdicts are in; a sanity check still runs (its Outcome comes with Finished)."""

    outcome: Outcome


@dataclass(frozen=True)
class Finished:
    """The job's return value (an Outcome for the page's jobs); always the last event."""

    value: Any


Event = MapReady | TargetReady | Preview | Status | Evaluated | Finished
Emit = Callable[[Event], None]
# A run: called in a worker thread with the engine's progress function and ``emit``.
Job = Callable[[ProgressFn, Emit], Any]


# --- one run at a time per model -------------------------------------------------------------


class ModelLocks:
    """A lock per model name, and which models have loaded once (to say "Loading ..." the first time)."""

    def __init__(self) -> None:
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        self._loaded: set[str] = set()
        self._preloading: set[str] = set()

    def preload(self, model: str, load: Callable[[str], Any] | None = None) -> threading.Thread:
        """Load and warm ``model`` in a background thread (``load(model)``, by default
        ``api.resolve_model``, then the adapter's ``warm_up``), holding its lock, so the page's
        first Run finds it ready: on the bundled
        model that run otherwise pays ~1.5 s of loading and ~0.5 s of compiling before Grad-CAM's
        map (~3.5 s more in IG on a new machine). A Run that comes meanwhile waits, saying the
        model is loading; a failure is logged and left to that Run to report."""

        def work() -> None:
            with self._lock(model):
                try:
                    (load or api.resolve_model)(model).warm_up()
                    with self._guard:
                        self._loaded.add(model)
                except Exception:  # the first Run loads it again and says why it cannot
                    log.exception("preloading %s failed", model)
                finally:
                    with self._guard:
                        self._preloading.discard(model)

        with self._guard:
            self._preloading.add(model)
        thread = threading.Thread(target=work, name=f"preload-{model}", daemon=True)
        thread.start()
        return thread

    def preloading(self, model: str) -> bool:
        with self._guard:
            return model in self._preloading

    def _lock(self, model: str) -> threading.Lock:
        with self._guard:
            return self._locks[model]

    def loaded(self, model: str) -> bool:
        with self._guard:
            return model in self._loaded

    @contextmanager
    def hold(self, model: str, progress: PageProgress, cancelled: threading.Event) -> Iterator[None]:
        """Hold ``model``'s lock for the block; wait for it (saying so once), giving up with
        RunCancelled when ``cancelled`` is set."""
        lock = self._lock(model)
        waited = False
        while not lock.acquire(timeout=0.25):
            if cancelled.is_set():
                raise RunCancelled()
            if not waited:
                if self.preloading(model):
                    progress(0.0, desc=f"Loading {loading_words(model)}…")
                else:
                    progress(0.0, desc="Waiting for another run on this model to finish…")
                waited = True
        try:
            if cancelled.is_set():
                raise RunCancelled()
            if not self.loaded(model):
                progress(0.0, desc=f"Loading {loading_words(model)}…")
            yield
            with self._guard:
                self._loaded.add(model)
        finally:
            lock.release()


LOCKS = ModelLocks()


def loading_words(model: str) -> str:
    """What "Loading ..." says of a model name: its kind's description (e.g. a download on first use)."""
    try:
        return f"{model} ({model_kind(model).description})"
    except UserError:
        return model  # an unknown name: loading it says why in a moment


def model_key(model: str | ModelAdapter) -> str:
    return model.name if isinstance(model, ModelAdapter) else (model.strip() or api.DEFAULT_MODEL)


# --- running a job and streaming its events --------------------------------------------------


def reporter(progress: PageProgress, cancelled: threading.Event, emit: Emit) -> ProgressFn:
    """The engine's ProgressFn for a run: stops the run at the next report once cancelled,
    forwards the bar to the page, and emits the maps found so far (``preview=`` details)."""

    def report_progress(fraction: float, description: str, **details: Any) -> None:
        if cancelled.is_set():
            raise RunCancelled()
        if details.get("preview") is not None:
            emit(Preview(details.get("method"), details["preview"]))
        text = description[:1].upper() + description[1:]
        progress(float(fraction), desc=text if text == "Done" else text + "…")

    return report_progress


_TICK = object()  # the timer's wake-up: a throttled preview or status may be shown now


class _Latest:
    """The newest preview (or status) a worker thread has posted (older ones are dropped)."""

    def __init__(self) -> None:
        self._lock: threading.Lock = threading.Lock()
        self._value: Any = None

    def put(self, value: Any) -> None:
        with self._lock:
            self._value = value

    def take(self) -> Any:
        with self._lock:
            value, self._value = self._value, None
        return value

    def pending(self) -> bool:
        with self._lock:
            return self._value is not None

    def drop(self, method: str) -> None:
        """Forget the newest preview if it is of ``method``."""
        with self._lock:
            if isinstance(self._value, Preview) and self._value.method == method:
                self._value = None


async def stream(
    model: str,
    job: Job,
    progress: PageProgress,
    locks: ModelLocks = LOCKS,
    preview_interval: float = PREVIEW_INTERVAL_S,
) -> AsyncGenerator[Event, None]:
    """Run ``job`` in a worker thread once ``model``'s lock is ours and yield its events as they
    come, then ``Finished(its return value)`` (the job's exception is raised instead, here).

    If the caller is cancelled (the page's Cancel) or stops iterating, the run's cancel flag is
    set and the job stops at its next progress report, releasing the model's lock."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()  # events; None: look again (a preview, the end); _TICK
    latest, status = _Latest(), _Latest()  # the newest preview and status, taken at most every interval
    cancelled = threading.Event()

    def emit(event: Event) -> None:  # called in the worker thread
        if isinstance(event, (Preview, Status)):
            (latest if isinstance(event, Preview) else status).put(event)
            loop.call_soon_threadsafe(inbox.put_nowait, None)
        else:
            loop.call_soon_threadsafe(inbox.put_nowait, event)

    def say(fraction: float, desc: str = "") -> None:  # the page's bar, and the Status events
        progress(fraction, desc=desc)
        emit(Status(float(fraction), desc))

    def work() -> Any:
        with locks.hold(model, say, cancelled):
            return job(reporter(say, cancelled, emit), emit)

    task = asyncio.ensure_future(asyncio.to_thread(work))
    # Scheduled after every event the thread emitted before it returned (the loop runs callbacks
    # in order), so once the task is done and the inbox empty, nothing is left behind.
    task.add_done_callback(lambda _: inbox.put_nowait(None))
    next_preview, ticking = 0.0, False
    try:
        while True:
            # A plain get (no wait_for: in Python 3.11 it can swallow the page's cancellation when
            # an item arrives at the same moment); the throttled previews are woken by a timer.
            item = await inbox.get()
            if item is _TICK:
                ticking = False
            elif item is not None:
                if isinstance(item, MapReady):
                    latest.drop(item.method)  # a preview of a map that is now final would hide it
                yield item
            if task.done() and inbox.empty():
                break
            if latest.pending() or status.pending():
                now = loop.time()
                if now >= next_preview:
                    next_preview = now + preview_interval
                    for box in (latest, status):
                        newest = box.take()
                        if newest is not None:
                            yield newest
                elif not ticking:
                    loop.call_later(next_preview - now, inbox.put_nowait, _TICK)
                    ticking = True
        yield Finished(task.result())
    finally:
        # Whatever ended the reading (the job's end, Cancel, a closed page, the loop shutting down,
        # which may cancel the thread's task first): a job still running stops at its next report.
        cancelled.set()


# --- the page's jobs -------------------------------------------------------------------------


def explain_job(
    photo: Image.Image,
    prompt: str,
    contrast: Sequence[str],
    model: str | ModelAdapter,
    methods: Sequence[str],
    device: str,
    sanity: bool,
    params: dict[str, Any],
) -> Job:
    """The Run button's job: ``api.explain_stages``, each map emitted as it comes; an Outcome."""

    def job(progress: ProgressFn, emit: Emit) -> Outcome:
        image: np.ndarray | None = None
        outline: tuple[float, float, float, float] | None = None
        classes: list[tuple[str, float]] | None = None
        result: Result | None = None
        for stage in api.explain_stages(
            photo,
            prompt,
            contrast=list(contrast),
            model=model,
            methods=list(methods),
            device=device,
            sanity=sanity,
            progress=progress,
            **params,
        ):
            if isinstance(stage, api.Prepared):
                image = api.image_view(stage.pixels)
                classes = api.describe_prompt(stage.adapter, stage.target.prompt)
                outline = stage.target.outline()
                if stage.target.pinned():  # the model resolved it: say what the maps will explain
                    emit(TargetReady(stage.target))
            elif isinstance(stage, api.MethodMap):
                assert image is not None  # the Prepared stage comes first
                emit(MapReady(stage.method, stage.saliency, image, outline))
            else:
                if result is None and sanity:  # the curves are in; the sanity check follows
                    emit(Evaluated(Outcome(stage, classes, report.sanity_running_status(stage))))
                result = stage
        assert result is not None
        return Outcome(result, classes, report.done_status(result))

    return job


def refine(
    result: Result,
    method: str,
    device: str = "cpu",
    progress: ProgressFn = api.no_progress,
    emit: Emit | None = None,
    model: str | ModelAdapter | None = None,
) -> Result:
    """``result`` with ``method`` re-run alone with its registry entry's reference setting
    (``Method.reference``: region search's plain greedy) and its curves re-scored; the other maps
    are kept (the random reference is re-scored too: same seed and pixels, so the same curves).
    ``emit`` receives the new map (``MapReady``) before its curves are drawn. ``model``: the
    result's own (by name) unless given."""
    reference = get_method(method).reference
    if reference is None:
        raise UserError(f"{get_method(method).title} has no reference setting to refine it with")
    started = time.perf_counter()
    if result.target.pinned() and result.photo_size is None:
        # A result without its photo's size: a box in the photo's pixels cannot be found again on
        # the model's view of it that the result keeps.
        raise UserError(
            f"this result does not say its photo's size, so its target cannot be found again; press Run with "
            f"{reference.label} chosen under Advanced instead"
        )
    params = {name: result.params[name] for name in api.PARAMS if name in result.params}
    params.update(reference.params)
    adapter = api.resolve_model(model or result.model, device)
    # A target the model resolved (a VLM's answer, a detector's box) is named again by its pinned
    # parameters, on the photo's size they refer to.
    options = result.target.pinned()
    request = api.validate(
        result.target.prompt, list(result.target.contrast), [method], model=adapter, **params, **options
    )
    prepared = api.prepare(Image.fromarray(result.image), request.target, adapter, request.options, result.photo_size)
    maps = api.run_methods(
        prepared, [method], request.params, progress=lambda f, text, **d: progress(0.85 * f, text, **d)
    )
    if emit is not None:
        emit(MapReady(method, maps[method], result.image))
    curves, references = api.score_curves(
        prepared, maps, request.params, progress=lambda f, text, **d: progress(0.85 + 0.15 * f, text, **d)
    )
    progress(1.0, "done")
    first = next(iter(references))
    refined = MethodResult(maps[method], curves[first][method], {s: c[method] for s, c in curves.items()})
    methods = {**result.methods, method: refined}
    ordered = {name: methods[name] for name in METHODS if name in methods}
    sanity = result.sanity
    if sanity is not None:  # its strip of this method was of the map before refining: not this one
        sanity = dataclasses.replace(sanity, methods={n: s for n, s in sanity.methods.items() if n != method})
    return dataclasses.replace(
        result,
        methods=ordered,
        random=references[first],
        random_by_substrate=references,
        sanity=sanity,
        params={**result.params, **request.params, "methods": list(ordered)},
        seconds=result.seconds + time.perf_counter() - started,
    )


def refine_job(result: Result, method: str, device: str, model: str | ModelAdapter | None = None) -> Job:
    """The Refine button's job: ``refine``; an Outcome whose status names the reference setting."""

    def job(progress: ProgressFn, emit: Emit) -> Outcome:
        started = time.perf_counter()
        adapter = api.resolve_model(model or result.model, device)
        refined = refine(result, method, device, progress, emit, adapter)
        classes = api.describe_prompt(adapter, refined.target.prompt)
        return Outcome(refined, classes, report.refined_status(refined, method, time.perf_counter() - started))

    return job


# --- what a model offers to explain (a VLM's answer, a detector's boxes) -----------------------


@dataclass(frozen=True)
class Offer:
    """What the page shows before a run on a model that resolves its target: the words
    (``report.offer_markdown``), the photo with the targets' parts framed and numbered (None where
    no target has one) and the choices of "What to explain": (label, ``target_choice`` text)."""

    markdown: str
    picture: Image.Image | None
    choices: list[tuple[str, str]]


MODEL_DECIDES = ("the model decides: its own answer, or its best box", "")  # the choice "" (no target parameters)


def target_choice(target: Target) -> str:
    """A target as the page's choice value: its pinned target parameters as JSON ("" for none)."""
    pinned = target.pinned()
    return json.dumps(pinned, ensure_ascii=False, sort_keys=True) if pinned else ""


def target_options(text: Any) -> dict[str, Any]:
    """A choice value of "What to explain" (``target_choice``) -> the target parameters it pins;
    UserError in one sentence when it is not one."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}
    error = UserError(
        "the target to explain must be one the model offered (press the button to show them) or JSON "
        'such as {"box": "10,20,200,180"} or {"answer": "a cat", "answer_token": 0}'
    )
    if not isinstance(text, str):
        raise error
    try:
        options = json.loads(text)
    except ValueError:
        raise error from None
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise error
    return options


def page_target_params() -> list[Param]:
    """The model kinds' target parameters the page gives widgets of their own (numbers with a
    default: a VLM's most answer tokens, a detector's least box probability); the others (the
    answer, its token, the box) come from the choice of "What to explain"."""
    return [
        spec
        for kind in MODEL_KINDS.values()
        for spec in kind.params
        if spec.kind in (int, float) and spec.default is not None and spec.parse is None
    ]


def kind_options(model: str | ModelAdapter, given: dict[str, Any]) -> dict[str, Any]:
    """Of the page's target-parameter widgets (``page_target_params``), those of ``model``'s kind."""
    specs = api.target_params(model)
    return {name: given[name] for name in specs if name in given and given[name] is not None}


def offer_targets(
    photo: Image.Image,
    prompt: Any,
    model: str | ModelAdapter,
    device: str,
    options: dict[str, Any],
    side: int = 512,
    locks: ModelLocks = LOCKS,
) -> Offer:
    """The targets ``model`` offers for ``prompt`` on ``photo`` (``api.candidate_targets``: a VLM's
    greedy answer, a detector's boxes, best first), as the page shows them before a run: the
    words, the photo (longest side ``side``) with the boxes numbered, the choices (each target and
    its parts, e.g. each token of the answer). Holds the model's lock (a run on it waits);
    UserError in one sentence for bad input or a model that offers nothing."""
    with locks.hold(model_key(model), lambda *_, **__: None, threading.Event()):
        targets = api.candidate_targets(photo, prompt, model=model, device=device, **options)
    text = prompt.strip() if isinstance(prompt, str) else str(prompt)
    markdown = report.offer_markdown(text, targets)
    if len(targets) == 1 and not targets[0].pinned():  # a prompt model: nothing to pick
        return Offer(markdown, None, [MODEL_DECIDES])
    choices = [(f"{number}. {t.choice_label()}", target_choice(t)) for number, t in enumerate(targets, start=1)]
    choices += [(f"   {part.choice_label()}", target_choice(part)) for t in targets for part in t.parts()]
    return Offer(markdown, render.targets_picture(photo, targets, fit(photo.size, side)), choices)


# --- inputs, errors, files -------------------------------------------------------------------


def plain_message(error: BaseException) -> str:
    """Any failure as one plain sentence: a UserError says what to fix; anything else is a bug,
    logged with its traceback, and the page says so in general words."""
    if isinstance(error, UserError):
        return report.sentence(str(error))
    log.error("run failed", exc_info=error)
    return GENERIC_ERROR


def split_contrast(text: str | None) -> list[str]:
    """The contrast box's text -> its prompts (commas or new lines between them)."""
    return [part.strip() for part in (text or "").replace("\n", ",").split(",") if part.strip()]


def check_display(opacity: Any, colour_map: Any, smoothing: Any) -> tuple[float, str, str]:
    """The Display settings, checked: (opacity in [0, 1], colour map, smoothing ``render.IG_DISPLAYS`` key)."""
    if colour_map not in render.COLOUR_MAPS:
        raise UserError(f"the colour map must be one of {', '.join(render.COLOUR_MAPS)}")
    if smoothing not in render.IG_DISPLAYS:
        names = " and ".join(m.title.lower() for m in METHODS.values() if m.smoothable) or "smoothable maps"
        raise UserError(f"the display of {names} must be one of {', '.join(render.IG_DISPLAYS)}")
    try:
        opacity = min(1.0, max(0.0, float(opacity)))
    except (TypeError, ValueError):
        raise UserError("the overlay opacity must be a number from 0 to 1") from None
    return opacity, colour_map, smoothing


def smoothed(method: str, smoothing: str) -> bool:
    """Whether ``method``'s map is drawn smoothed: its entry allows it and the page asks for it."""
    return smoothing == "smoothed" and method in METHODS and METHODS[method].smoothable


def fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(width, height) scaled so that the longer side is ``side``."""
    width, height = size
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def run_dir() -> Path:
    """A fresh folder for one run's download; folders older than RUNS_MAX_AGE_S are removed."""
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in RUNS_DIR.iterdir():
        try:
            if now - old.stat().st_mtime > RUNS_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    return Path(tempfile.mkdtemp(prefix="run-", dir=RUNS_DIR))


def save_download(result: Result, display: tuple[float, str, str], size: tuple[int, int], side: int) -> str:
    """The run's download (``render.save_bundle`` zipped) in a fresh run folder: its path. The
    overlays are at the photo's size, capped at ``side`` pixels."""
    folder = run_dir()
    files = render.save_bundle(result, folder / "saliency-lab", display[1], display[0], fit(size, min(side, max(size))))
    return str(render.zip_bundle(files, folder / "saliency-lab-result.zip"))


def load_download(path: str | None) -> tuple[Result, tuple[int, int]] | None:
    """(Result, its photo's size) from a run's download, None before any run; UserError when the
    file can no longer be read."""
    if not path:
        return None
    try:
        result, settings = render.bundle_from_zip(path)
    except Exception:
        log.warning("unreadable bundle %s", path, exc_info=True)
        raise UserError("this result can no longer be read; press Run again") from None
    width, height = settings.get("overlay_size") or result.image.shape[1::-1]
    return result, (int(width), int(height))
