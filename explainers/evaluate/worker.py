"""One worker: a model loaded once on one device, turning jobs (an image, its prompt, the methods
still to compute) into rows. The same class runs in this process, in each local worker process
and inside each Ray actor, so the three ways of running give the same rows."""

from __future__ import annotations

import resource
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch

from ..api import Request, assemble, clean_prompts, evaluate_maps, prepare, resolve_model, run_methods
from ..errors import UserError
from ..images import open_image
from ..models import ModelAdapter
from ..types import Result
from .manifest import Item
from .rows import RANDOM, error_text


@dataclass(frozen=True)
class Job:
    """An image to evaluate: its manifest item, the methods whose rows are missing, and whether
    the random reference's row is missing."""

    item: Item
    methods: tuple[str, ...]
    random: bool


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker needs (picklable: it travels to processes and Ray actors)."""

    model: str
    device: str
    params: dict[str, Any]
    threads: int | None = None  # torch threads in this worker; None keeps torch's setting
    class_column: str | None = None  # manifest column holding the true class index


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
        """The job's rows: one per missing method and, if missing, the random reference's. An
        image that fails (unreadable file, bad prompt, any error) gives error rows instead."""
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
        prepared = prepare(open_image(job.item.path), target, self.adapter)
        top1 = None
        if self.config.class_column:
            top1 = self.adapter.top_class(prepared.pixels)
        request = Request(target, job.methods, params, tuple(notes))
        maps = run_methods(prepared, job.methods, params)
        curves, reference = evaluate_maps(prepared, maps, params)
        return assemble(request, prepared, maps, curves, reference, time.perf_counter() - started), top1

    def _label(self, job: Job, top1: int | None) -> dict[str, Any]:
        if not self.config.class_column:
            return {}
        label = job.item.extras.get(self.config.class_column, "").strip()
        correct = int(top1 == int(label)) if top1 is not None and label.lstrip("-").isdigit() else None
        return {"top1": top1, "correct": correct}

    def _rows(self, job: Job, result: Result, top1: int | None) -> list[dict[str, Any]]:
        item, label = job.item, self._label(job, top1)
        key = {"image": item.image, "prompt": item.prompt, "contrast": item.contrast}
        rows = []
        for name in job.methods:
            m = result.methods[name]
            rows.append(
                {
                    **key,
                    "method": name,
                    "insertion_auc": m.insertion.auc,
                    "deletion_auc": m.deletion.auc,
                    "srg": m.srg,
                    "beats_random": result.more_faithful_than_random(name),
                    "score": result.score,
                    "seconds": m.saliency.seconds,
                    "forward_passes": m.saliency.forward_passes,
                    "backward_passes": m.saliency.backward_passes,
                    "curve_seconds": m.insertion.seconds + m.deletion.seconds,
                    "curve_forward_passes": m.insertion.forward_passes + m.deletion.forward_passes,
                    "error": "",
                    **label,
                }
            )
        if job.random:
            r = result.random
            rows.append(
                {
                    **key,
                    "method": RANDOM,
                    "insertion_auc": r.insertion.auc,
                    "deletion_auc": r.deletion.auc,
                    "srg": r.srg,
                    "beats_random": None,
                    "score": result.score,
                    "seconds": r.insertion.seconds + r.deletion.seconds,
                    "forward_passes": r.insertion.forward_passes + r.deletion.forward_passes,
                    "backward_passes": 0,
                    "curve_seconds": None,
                    "curve_forward_passes": None,
                    "error": "",
                    **label,
                }
            )
        return rows

    def _error_rows(self, job: Job, error: BaseException) -> list[dict[str, Any]]:
        item = job.item
        names = list(job.methods) + ([RANDOM] if job.random else [])
        return [
            {
                "image": item.image,
                "prompt": item.prompt,
                "contrast": item.contrast,
                "method": name,
                "error": error_text(error) or type(error).__name__,
            }
            for name in names
        ]


def as_worker(model: str | ModelAdapter, config: WorkerConfig) -> Worker:
    """A worker in this process: on a ready adapter, or loading ``config.model``."""
    return Worker(config, model if isinstance(model, ModelAdapter) else None)
