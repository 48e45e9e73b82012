"""The app's run runtime (explainers/app_runtime.py) without a browser or a server: events in
order and as they come (each map before the run ends), previews coalesced, one run per model,
Cancel stopping the job, errors as sentences, Refine with the registry's reference setting. And
the engine side of it: ``api.explain_stages``."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import pytest
from conftest import ASSETS
from toys import OneConv
from toys import RandomizableConv as Randomizable

from explainers import api, app_runtime
from explainers.app_runtime import Evaluated, Finished, MapReady, ModelLocks, Outcome, Preview, RunCancelled, Status
from explainers.errors import UserError
from explainers.types import Result, SaliencyMap

CAT = ASSETS / "chelsea.jpg"
WAIT_S = 60  # generous: a wait that runs out means the behaviour is wrong, not slow
SMALL = {"curve_steps": 4, "n_random": 2, "ig_steps": 4, "n_regions": 4, "region_kind": "grid", "rise_masks": 8}
SMALL_RISE = {"rise_cells": 2}


def collect(model: str, job, progress=None, locks: ModelLocks | None = None, preview_interval: float = 0.0) -> list:
    async def run() -> list:
        events = []
        async for event in app_runtime.stream(
            model, job, progress or (lambda *_, **__: None), locks or ModelLocks(), preview_interval
        ):
            events.append(event)
        return events

    return asyncio.run(run())


def saliency(name: str) -> SaliencyMap:
    return SaliencyMap(name, np.zeros((2, 2), np.float32))


IMAGE = np.zeros((2, 2, 3), np.uint8)


# --- stream --------------------------------------------------------------------------------


def test_each_map_arrives_while_the_job_still_runs():
    seen_first = threading.Event()
    waited = {}

    def job(progress, emit):
        emit(MapReady("gradcam", saliency("gradcam"), IMAGE))
        waited["in_time"] = seen_first.wait(WAIT_S)  # only the consumer can set it, and only if it got the map
        emit(MapReady("ig", saliency("ig"), IMAGE))
        return "value"

    async def run() -> list:
        events = []
        async for event in app_runtime.stream("toy", job, lambda *_, **__: None, ModelLocks()):
            events.append(event)
            if isinstance(event, MapReady) and event.method == "gradcam":
                seen_first.set()
        return events

    events = [e for e in asyncio.run(run()) if not isinstance(e, Status)]
    assert waited["in_time"], "the first map reached the page only when the job ended"
    assert [type(e).__name__ for e in events] == ["MapReady", "MapReady", "Finished"]
    assert [e.method for e in events[:2]] == ["gradcam", "ig"] and events[-1].value == "value"


def test_previews_are_coalesced_and_never_follow_their_final_map():
    def job(progress, emit):
        for k in range(200):
            emit(Preview("region", np.full((2, 2), k, np.float32)))
            time.sleep(0.001)
        emit(MapReady("region", saliency("region"), IMAGE))
        time.sleep(0.3)  # the run goes on (the curves): the preview still pending must not follow the map
        return None

    events = collect("toy", job, preview_interval=0.05)
    kinds = [type(e).__name__ for e in events]
    assert kinds[-1] == "Finished" and kinds.count("MapReady") == 1
    previews = [e for e in events if isinstance(e, Preview)]
    assert 1 <= len(previews) < 200  # the newest only, at most one per interval
    values = [float(p.values[0, 0]) for p in previews]
    assert values == sorted(values)  # newest wins, in order
    assert kinds.index("MapReady") > max(i for i, k in enumerate(kinds) if k == "Preview")


def test_the_jobs_error_comes_out_of_the_stream_and_frees_the_model():
    locks = ModelLocks()

    def failing(progress, emit):
        raise UserError("the prompt is empty")

    with pytest.raises(UserError, match="the prompt is empty"):
        collect("toy", failing, locks=locks)
    assert collect("toy", lambda progress, emit: 1, locks=locks)[-1].value == 1


def test_cancel_stops_the_job_at_its_next_report_and_frees_the_model():
    locks, stopped = ModelLocks(), threading.Event()
    outcome = {}

    def endless(progress, emit):
        try:
            emit(MapReady("gradcam", saliency("gradcam"), IMAGE))
            while True:
                progress(0.5, "region search")
                time.sleep(0.01)
        except RunCancelled:
            outcome["cancelled"] = True
            raise
        finally:
            stopped.set()

    async def cancel_after_first_event() -> None:
        got_map = asyncio.Event()

        async def page() -> None:
            async for event in app_runtime.stream("toy", endless, lambda *_, **__: None, locks):
                if isinstance(event, MapReady):
                    got_map.set()

        reading = asyncio.ensure_future(page())
        await asyncio.wait_for(got_map.wait(), WAIT_S)
        reading.cancel()  # what Gradio does to the event's task on the page's Cancel
        with pytest.raises(asyncio.CancelledError):
            await reading

    asyncio.run(cancel_after_first_event())
    assert stopped.wait(WAIT_S) and outcome.get("cancelled")
    assert collect("toy", lambda progress, emit: "next", locks=locks)[-1].value == "next"  # the lock is free


def test_a_second_run_on_the_same_model_waits_and_says_so():
    locks, gate, order = ModelLocks(), threading.Event(), []
    messages = []

    def first(progress, emit):
        order.append("first starts")
        assert gate.wait(WAIT_S)
        order.append("first ends")
        return 1

    def second(progress, emit):
        order.append("second starts")
        return 2

    def progress(fraction, desc=""):
        messages.append(desc)
        if desc.startswith("Waiting"):
            gate.set()  # release the first run only once the second says it waits

    async def both() -> list:
        async def run(job, report):
            return [e async for e in app_runtime.stream("toy", job, report, locks)]

        one = asyncio.ensure_future(run(first, lambda *_, **__: None))
        while not order:
            await asyncio.sleep(0.01)
        return await asyncio.gather(one, run(second, progress))

    first_events, second_events = asyncio.run(both())
    assert order == ["first starts", "first ends", "second starts"]
    assert any(m.startswith("Waiting for another run on this model") for m in messages)
    assert first_events[-1].value == 1 and second_events[-1].value == 2


def test_the_status_follows_the_progress_reports():
    def job(progress, emit):
        time.sleep(0.1)  # loading the model, say: "Loading ..." is on the page meanwhile
        for k in range(50):
            progress(k / 50, "region search")
            time.sleep(0.002)
        time.sleep(0.3)  # the run goes on: the newest status is shown (at the very end it is dropped)
        return None

    events = collect("toy", job, preview_interval=0.02)
    statuses = [e for e in events if isinstance(e, Status)]
    assert statuses[0].text.startswith("Loading toy") and statuses[-1].text == "Region search…"
    assert 1 < len(statuses) < 51  # coalesced: the newest only, at most one per interval
    fractions = [s.fraction for s in statuses[1:]]
    assert fractions == sorted(fractions)


def test_loading_is_said_once_per_model():
    locks, messages = ModelLocks(), []

    def progress(fraction, desc=""):
        messages.append(desc)

    for _ in range(2):
        collect("bundled", lambda p, e: None, progress, locks)
    loading = [m for m in messages if m.startswith("Loading")]
    assert len(loading) == 1 and "bundled" in loading[0] and "offline" in loading[0]


def test_a_run_that_comes_while_the_model_preloads_waits_for_it_and_says_it_is_loading():
    locks, messages, gate, warmed = ModelLocks(), [], threading.Event(), []

    class Warming:
        def warm_up(self):
            gate.wait(5)
            warmed.append(True)

    thread = locks.preload("toy", lambda _: Warming())
    assert locks.preloading("toy")
    threading.Timer(0.6, gate.set).start()
    collect("toy", lambda p, e: warmed.copy(), lambda fraction, desc="": messages.append(desc), locks)
    thread.join(5)
    assert warmed == [True] and not locks.preloading("toy") and locks.loaded("toy")
    assert messages[0].startswith("Loading toy") and not any(m.startswith("Waiting") for m in messages)


def test_a_preload_that_fails_is_left_to_the_first_run(caplog):
    locks = ModelLocks()

    def broken(_model):
        raise OSError("no such folder")

    locks.preload("toy", broken).join(5)
    assert not locks.loaded("toy") and not locks.preloading("toy")
    assert "preloading toy failed" in caplog.text
    messages = []
    collect("toy", lambda p, e: None, lambda fraction, desc="": messages.append(desc), locks)
    assert messages[0].startswith("Loading toy")  # the run loads it itself, and says so


# --- the page's jobs -------------------------------------------------------------------------


def test_explain_job_streams_each_map_in_order_then_the_same_result_as_explain():
    methods = ["gradcam", "ig", "region", "rise"]
    job = app_runtime.explain_job(
        api.open_image(CAT), "x", [], OneConv(), methods, "cpu", False, {**SMALL, **SMALL_RISE}
    )
    events = collect("one-conv", job)
    maps = [e for e in events if isinstance(e, MapReady)]
    assert [m.method for m in maps] == methods and isinstance(events[-1], Finished)
    assert not any(isinstance(e, Evaluated) for e in events)  # no sanity check: the Result comes last
    outcome = events[-1].value
    assert isinstance(outcome, Outcome) and outcome.status.startswith("Done")
    assert all(m.image.shape == (4, 4, 3) and m.image.dtype == np.uint8 for m in maps)
    expected = api.explain(CAT, "x", model=OneConv(), methods=methods, **SMALL, **SMALL_RISE)
    for m in maps:
        np.testing.assert_array_equal(m.saliency.values, expected.methods[m.method].saliency.values)
        np.testing.assert_array_equal(outcome.result.methods[m.method].saliency.values, m.saliency.values)
    assert outcome.result.methods["region"].saliency.regions is not None


def test_explain_job_shows_the_curves_before_the_sanity_check():
    job = app_runtime.explain_job(api.open_image(CAT), "x", [], Randomizable(), ["gradcam"], "cpu", True, SMALL)
    events = [e for e in collect("randomizable", job) if not isinstance(e, Status)]
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["MapReady", "Evaluated", "Finished"]
    assert events[1].outcome.result.sanity is None and "sanity check is running" in events[1].outcome.status
    assert events[2].value.result.sanity is not None


def test_the_ticked_methods_gradient_needs_are_checked_before_any_work():
    class NoGradients(OneConv):
        gradients = False

    with pytest.raises(UserError, match="Grad-CAM needs the model's gradients"):
        api.explain(CAT, "x", model=NoGradients(), methods=["gradcam", "rise"], **SMALL, **SMALL_RISE)
    api.explain(CAT, "x", model=NoGradients(), methods=["rise"], **SMALL, **SMALL_RISE)  # black box: fine


def test_refine_reruns_the_method_with_its_reference_setting_and_keeps_the_others():
    toy = Randomizable()
    result = api.explain(CAT, "x", model=toy, methods=["gradcam", "region"], **SMALL)
    emitted = []
    refined = app_runtime.refine(result, "region", emit=emitted.append, model=toy)
    region = refined.methods["region"].saliency
    assert region.meta["search"] == "greedy" and refined.params["region_search"] == "greedy"
    assert list(refined.methods) == ["gradcam", "region"]
    assert refined.methods["gradcam"] is result.methods["gradcam"]
    assert [e.method for e in emitted] == ["region"] and emitted[0].saliency is region
    with pytest.raises(UserError, match="no reference setting"):
        app_runtime.refine(result, "gradcam", model=toy)


def test_the_refine_job_names_the_reference_in_its_status():
    toy = Randomizable()
    result = api.explain(CAT, "x", model=toy, methods=["region"], **SMALL)
    events = collect("one-conv", app_runtime.refine_job(result, "region", "cpu", toy))
    assert "region search refined with plain greedy" in events[-1].value.status


# --- the engine's stages ---------------------------------------------------------------------


def test_explain_stages_yield_the_photo_then_each_map_then_the_result():
    stages = list(api.explain_stages(CAT, "x", model=OneConv(), methods=["gradcam", "ig"], **SMALL))
    assert isinstance(stages[0], api.Prepared)
    assert [(type(s).__name__, getattr(s, "method", None)) for s in stages[1:3]] == [
        ("MethodMap", "gradcam"),
        ("MethodMap", "ig"),
    ]
    assert isinstance(stages[-1], Result) and len(stages) == 4
    assert stages[-1].methods["ig"].saliency is stages[2].saliency


def test_explain_stages_refuse_bad_input_before_the_first_stage():
    stages = api.explain_stages(CAT, "   ", model=OneConv())
    with pytest.raises(UserError, match="prompt is empty"):
        next(stages)


def test_progress_reports_name_the_method_running():
    seen = []
    api.explain(
        CAT,
        "x",
        model=OneConv(),
        methods=["gradcam", "region"],
        progress=lambda f, text, **d: seen.append(d.get("method")),
        **SMALL,
    )
    assert {"gradcam", "region"} <= set(seen)


# --- inputs, errors, files -------------------------------------------------------------------


def test_errors_are_one_plain_sentence(caplog):
    assert app_runtime.plain_message(UserError("the prompt is empty")) == "The prompt is empty."
    with caplog.at_level(logging.ERROR, logger="saliency_lab.app"):
        assert app_runtime.plain_message(RuntimeError("boom")) == app_runtime.GENERIC_ERROR
    assert "run failed" in caplog.text and "boom" in caplog.text


def test_display_settings_are_checked():
    assert app_runtime.check_display("2", "viridis", "smoothed") == (1.0, "viridis", "smoothed")
    for bad in [("x", "viridis", "raw"), (0.5, "rainbow", "raw"), (0.5, "viridis", "blurry")]:
        with pytest.raises(UserError):
            app_runtime.check_display(*bad)
    assert app_runtime.smoothed("ig", "smoothed") and not app_runtime.smoothed("gradcam", "smoothed")
    assert not app_runtime.smoothed("ig", "raw")


def test_the_download_reads_back_and_an_unreadable_one_is_a_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr(app_runtime, "RUNS_DIR", tmp_path / "runs")
    result = api.explain(CAT, "x", model=OneConv(), methods=["gradcam", "region"], **SMALL)
    path = app_runtime.save_download(result, (0.5, "inferno", "raw"), (640, 480), 1024)
    loaded, size = app_runtime.load_download(path)
    assert size == (640, 480) and list(loaded.methods) == ["gradcam", "region"]
    np.testing.assert_array_equal(loaded.methods["region"].saliency.regions, result.methods["region"].saliency.regions)
    assert app_runtime.load_download(None) is None
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="can no longer be read"):
        app_runtime.load_download(str(broken))


def test_the_runtime_imports_no_gradio():
    import ast

    from conftest import ROOT

    tree = ast.parse((ROOT / "explainers" / "app_runtime.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(name.split(".")[0] == "gradio" for name in names)
