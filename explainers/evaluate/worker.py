"""One worker: a model loaded once on one device, turning jobs (an image, its prompt, the methods
still to compute) into rows. The same class runs in this process, in each local worker process
and inside each Ray actor, so the three ways of running give the same rows."""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch

from ..api import (
    Request,
    assemble,
    check_abilities,
    check_sanity,
    clean_options,
    clean_prompts,
    prepare,
    resolve_model,
    run_methods,
    score_curves,
)
from ..api import scoring_substrates as config_substrates
from ..errors import UserError
from ..images import open_image
from ..models import ModelAdapter
from ..types import Result
from .manifest import Item
from .rows import ITEM_KEY, RANDOM, error_text

SANITY_TABLE = "sanity"  # rows with {"table": SANITY_TABLE} go to sanity.csv, the others to rows.csv


@dataclass(frozen=True)
class Job:
    """An image to evaluate: its manifest item, the (method, scoring substrate) rows missing (the
    method being RANDOM for the random reference's), and the methods whose sanity rows are missing
    (``evaluate --sanity``). Each map is made once, whatever the number of substrates."""

    item: Item
    wanted: tuple[tuple[str, str], ...]
    sanity: tuple[str, ...] = ()

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods whose maps the job makes: those with a row or a sanity row missing."""
        names = [m for m, _ in self.wanted if m != RANDOM] + list(self.sanity)
        return tuple(dict.fromkeys(names))

    @property
    def substrates(self) -> tuple[str, ...]:
        """The scoring substrates with a row missing, in the run's order."""
        return tuple(dict.fromkeys(s for _, s in self.wanted))


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker needs (picklable: it travels to processes and Ray actors)."""

    model: str
    device: str
    params: dict[str, Any]
    threads: int | None = None  # torch threads in this worker; None keeps torch's setting
    class_column: str | None = None  # manifest column holding the true class index
    options: dict[str, Any] | None = None  # the model kind's target parameters for every row


class WorkerStartError(UserError):
    """A worker could not start (e.g. the model did not load): the run stops with this sentence."""


class Worker:
    """Loads the model once (``config.model`` on ``config.device``, or a ready ``adapter``)."""

    def __init__(self, config: WorkerConfig, adapter: ModelAdapter | None = None) -> None:
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        try:
            self.adapter = adapter if adapter is not None else resolve_model(config.model, config.device)
        except UserError as error:
            raise WorkerStartError(str(error)) from None
        if config.class_column and not self.adapter.classifies:
            raise WorkerStartError(
                f"the model {self.adapter.name} has no classes of its own, so the class column "
                f"{config.class_column!r} cannot be checked; leave it out for this model"
            )

    def describe(self) -> dict[str, Any]:
        """Where this worker runs: its device and torch threads; its peak memory and CPU seconds so far
        (the model's load included: on a shared machine CPU seconds measure the work, wall seconds the
        crowd)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "device": str(self.adapter.device),
            "threads": torch.get_num_threads(),
            "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
        }

    def run(self, job: Job) -> tuple[Job, list[dict[str, Any]]]:
        """The job's rows: one per missing (method or random reference, scoring substrate), and
        its sanity rows (marked ``table: sanity``). An image that fails (unreadable file, bad
        prompt, any error) gives error rows instead."""
        try:
            result, top1 = self._explain(job)
        except UserError as error:
            return job, self._error_rows(job, error)
        except Exception as error:  # noqa: BLE001 - one image's failure must not end a 200-image run
            traceback.print_exc(file=sys.stderr)  # a bug, not bad input: show where
            return job, self._error_rows(job, error)
        return job, self._rows(job, result, top1)

    def _explain(self, job: Job) -> tuple[Result, int | None]:
        started = time.perf_counter()
        params = self.config.params
        target, notes = clean_prompts(job.item.prompt, job.item.contrast_prompts)
        if not job.item.image:
            raise UserError("the manifest row has no image path")
        check_abilities(self.adapter, job.methods)
        # The row's own target parameters (its answer, its box) over the run's.
        given = {k: v for k, v in (self.config.options or {}).items() if v is not None}
        options = clean_options(self.adapter, {**given, **job.item.options})
        prepared = prepare(open_image(job.item.path), target, self.adapter, options)
        top1 = None
        if self.config.class_column:
            top1 = self.adapter.top_class(prepared.pixels)
        maps = run_methods(prepared, job.methods, params)
        # Every missing substrate's curves from the same maps (the random reference's on each too);
        # a job for sanity rows alone scores only the cheap random reference, which assemble needs.
        scored = {m for m, _ in job.wanted}
        curves, references = score_curves(
            prepared,
            {n: m for n, m in maps.items() if n in scored},
            {**params, "score_substrates": job.substrates or config_substrates(params)[:1]},
        )
        sanity = None
        if job.sanity:
            sanity = check_sanity(prepared, {n: maps[n] for n in job.sanity}, params)
        request = Request(prepared.target, tuple(n for n in job.methods if n in scored), params, tuple(notes), options)
        result = assemble(request, prepared, maps, curves, references, time.perf_counter() - started, sanity=sanity)
        return result, top1

    def _label(self, job: Job, top1: int | None) -> dict[str, Any]:
        if not self.config.class_column:
            return {}
        label = job.item.extras.get(self.config.class_column, "").strip()
        correct = int(top1 == int(label)) if top1 is not None and label.lstrip("-").isdigit() else None
        return {"top1": top1, "correct": correct}

    def _rows(self, job: Job, result: Result, top1: int | None) -> list[dict[str, Any]]:
        item, label = job.item, self._label(job, top1)
        key = dict(zip(ITEM_KEY, item.key))
        meaning = result.score_meaning
        photo = {
            # What the model explained, where it resolves its target (its own answer, its box).
            "explained": json.dumps(result.target.summary(), ensure_ascii=False) if self.adapter.target_params else "",
            "score": result.score,
            "probability": result.probability,
            "score_meaning": meaning.name if meaning is not None else "",
            "min_span": meaning.min_span if meaning is not None else None,
        }
        rows = []
        for name, substrate in job.wanted:
            if name == RANDOM:
                r = result.random_by_substrate[substrate]
                curves = r.curves
                cost = {
                    "beats_random": None,
                    "seconds": r.insertion.seconds + r.deletion.seconds,
                    "forward_passes": r.insertion.forward_passes + r.deletion.forward_passes,
                    "backward_passes": 0,
                    "curve_seconds": None,
                    "curve_forward_passes": None,
                }
            else:
                m = result.methods[name]
                curves = m.by_substrate[substrate]
                cost = {
                    "beats_random": result.more_faithful_than_random(name, substrate),
                    "seconds": m.saliency.seconds,
                    "forward_passes": m.saliency.forward_passes,
                    "backward_passes": m.saliency.backward_passes,
                    "curve_seconds": curves.insertion.seconds + curves.deletion.seconds,
                    "curve_forward_passes": curves.insertion.forward_passes + curves.deletion.forward_passes,
                }
            rows.append(
                {
                    **key,
                    "method": name,
                    "substrate": substrate,
                    **curves.figures(),
                    **photo,
                    "full_score": curves.insertion.full_score,
                    "substrate_score": curves.insertion.substrate_score,
                    **cost,
                    "error": "",
                    **label,
                }
            )
        if result.sanity is not None:
            rows += self._sanity_rows(key, result)
        return rows

    @staticmethod
    def _sanity_rows(key: dict[str, str], result: Result) -> list[dict[str, Any]]:
        check = result.sanity
        assert check is not None
        rows = []
        for name, stages in check.methods.items():
            for index, stage in enumerate(stages):
                rows.append(
                    {
                        "table": SANITY_TABLE,
                        **key,
                        "method": name,
                        "kind": "stage",
                        "stage": stage.stage,
                        "stage_index": index,
                        "spearman": stage.spearman,
                        "ssim": stage.ssim,
                        "blank": stage.blank,
                        "error": "",
                    }
                )
            for reference, rho in check.references.get(name, {}).items():
                rows.append(
                    {
                        "table": SANITY_TABLE,
                        **key,
                        "method": name,
                        "kind": "reference",
                        "stage": reference,
                        "stage_index": None,
                        "spearman": rho,
                        "ssim": None,
                        "blank": rho != rho,  # NaN: the trained map itself is blank
                        "error": "",
                    }
                )
        return rows

    def _error_rows(self, job: Job, error: BaseException) -> list[dict[str, Any]]:
        item = job.item
        key = dict(zip(ITEM_KEY, item.key))
        text = error_text(error) or type(error).__name__
        rows: list[dict[str, Any]] = [
            {**key, "method": name, "substrate": substrate, "error": text} for name, substrate in job.wanted
        ]
        rows += [
            {"table": SANITY_TABLE, **key, "method": name, "kind": "stage", "stage": "", "error": text}
            for name in job.sanity
        ]
        return rows


def as_worker(model: str | ModelAdapter, config: WorkerConfig) -> Worker:
    """A worker in this process: on a ready adapter, or loading ``config.model``."""
    return Worker(config, model if isinstance(model, ModelAdapter) else None)
