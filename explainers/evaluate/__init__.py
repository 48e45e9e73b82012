"""Data-set evaluation: a manifest of photos and prompts -> every method's faithfulness on each
photo (DIR/rows.csv) -> the summary a paper would print (DIR/summary.json, .md, .png).

    from explainers.evaluate import evaluate
    summary = evaluate("photos/manifest.csv", "out/run1", methods="gradcam,ig,region", limit=20)
    summary.methods["region"]["srg_mean"], summary.methods["region"]["srg_ci"]

The command line is ``python -m explainers.evaluate MANIFEST.csv --out DIR`` (``--help``).

- Resumable: rows are appended and flushed as each image finishes; a rerun with the same folder
  computes only the missing rows (no forward pass for the others) and rewrites the summary. A
  partial last line left by a hard kill is cut on the next run.
- One configuration per folder: the folder records the model and every parameter (params.json,
  and a hash on every row); a rerun with other settings is refused, naming what differs. Adding
  methods or manifest rows is not another configuration: only the new rows are computed.
- Failed images (unreadable, bad prompt) get rows with an ``error`` and the run goes on; they
  count as done (``retry_errors=True`` computes them again: the newer row wins).
- Workers: in this process (``workers=1``), in local processes (``workers=N``), or on a Ray
  actor pool (``ray=True`` for a local Ray, or a cluster address); each worker loads the model
  once, on its device, with ``threads`` torch threads.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..api import PAPER_CURVE_STEPS, clean_methods, clean_model, validate_params
from ..errors import UserError
from ..models import DEVICES, ModelAdapter, resolve_device
from ..types import _jsonable
from . import report, stats
from .manifest import Item, Manifest, read_manifest
from .rows import (
    BASE_COLUMNS,
    CLASS_COLUMNS,
    RANDOM,
    RESERVED,
    RowsFile,
    check_config,
    folder_lock,
    latest,
    read_rows,
    typed,
)
from .worker import Job, WorkerConfig

ROWS, SUMMARY_JSON, SUMMARY_MD, SUMMARY_PNG = "rows.csv", "summary.json", "summary.md", "summary.png"


@dataclass(frozen=True)
class Summary:
    """A data-set run's summary (what summary.json holds; see ``to_dict``).

    ``methods[m]``: n, srg_mean, srg_ci [lo, hi], insertion_mean/ci, deletion_mean/ci,
    beats_random (share of images), seconds_mean, forward_passes_mean, ...; ``random``: the same
    for the random reference; ``pairs["a vs b"]``: srg_diff_mean, ci, p_wilcoxon, first_higher
    (share of images where a's SRG is higher); ``vs_random[m]``: the same against the random
    reference; ``groups[column][value]``: all of that on the images with that value;
    ``params``: the model, the methods, every parameter, the seed and the bootstrap's settings;
    ``run``: how this run went (workers, threads, devices, images computed and skipped).
    """

    n: int
    n_images: int
    n_failed: int
    n_missing: int  # images without every row: only while a run is interrupted
    methods: dict[str, dict[str, Any]]
    random: dict[str, Any]
    pairs: dict[str, dict[str, Any]]
    vs_random: dict[str, dict[str, Any]]
    groups: dict[str, dict[str, Any]]
    errors: list[dict[str, str]]
    ill_conditioned: list[dict[str, str]]  # finished images left out: their normalisation divides by ~0
    params: dict[str, Any]
    run: dict[str, Any]
    out: Path
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """The JSON of summary.json (non-finite numbers -> null)."""
        return _jsonable(
            {
                "n": self.n,
                "n_images": self.n_images,
                "n_failed": self.n_failed,
                "n_missing": self.n_missing,
                "methods": self.methods,
                "random": self.random,
                "pairs": self.pairs,
                "vs_random": self.vs_random,
                "groups": self.groups,
                "errors": self.errors,
                "n_ill_conditioned": len(self.ill_conditioned),
                "ill_conditioned": self.ill_conditioned,
                "params": self.params,
                "run": self.run,
                "notes": list(self.notes),
            }
        )

    def table(self) -> str:
        """The markdown of summary.md."""
        return report.markdown(self.to_dict(), self.params["methods"])


def _check_count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name} must be a whole number of at least 1, not {value!r}")
    return int(value)


def _device(device: Any, ray: bool) -> str:
    """The device as workers get it. Without Ray it is resolved here (so a missing GPU is refused
    before any work); with Ray the cluster decides, so only the spelling is checked."""
    text = str(device if device is not None else "auto").strip().lower()
    if text.split(":")[0] not in DEVICES:
        raise UserError(f"the device must be auto, cpu or cuda (e.g. cuda:0), not {str(device)[:40]!r}")
    if ray:
        return "cuda" if text.startswith("cuda") else text
    resolved = resolve_device(text)
    return str(resolved) if resolved.type == "cuda" and ":" in text else resolved.type


def evaluate(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str | ModelAdapter = "bundled",
    methods: str | Sequence[str] | None = None,
    device: str = "auto",
    limit: int | None = None,
    workers: int | None = None,
    ray: bool | str | None = None,
    threads: int | None = None,
    class_column: str | None = None,
    group_by: Sequence[str] = (),
    retry_errors: bool = False,
    compute: bool = True,
    resamples: int = stats.RESAMPLES,
    progress: bool | None = None,
    **params: Any,
) -> Summary:
    """Evaluate every method on every photo of ``manifest`` and summarise; writes ``out``/rows.csv,
    summary.json, summary.md and summary.png. Returns the Summary.

    ``model``: a registered name (``"bundled"``, ``"clip:<hub id>"``), or a ready adapter (this
    process only). ``methods``: names or ``"gradcam,ig"`` (default: the registry's defaults).
    ``params``: any of ``explainers.api.PARAMS`` (curve_steps defaults to 50, the CLI's; every
    other to its spec's default). ``limit``: the first N manifest rows. ``workers``: local worker
    processes, or Ray actors with ``ray``. ``ray``: True or "local" for a local Ray, or a
    cluster's address. ``threads``: torch threads per worker (default: this process's threads
    divided among the workers; 1 per Ray actor). ``class_column``: a manifest column holding
    each photo's true class index, for classifier models: rows get ``top1`` and ``correct``.
    ``group_by``: columns (manifest ones, or ``correct``) whose values get their own tables.
    ``compute=False`` only summarises the rows already in ``out`` (a long run's progress so far).
    ``progress``: a tqdm bar (None: only on a terminal). Raises UserError on bad input.
    """
    started = time.perf_counter()
    names = clean_methods(methods)
    given = {k: v for k, v in params.items() if v is not None}
    checked = validate_params({"curve_steps": PAPER_CURVE_STEPS, **given})
    workers = _check_count("workers", workers)
    threads = _check_count("threads", threads)
    resamples = _check_count("resamples", resamples)
    use_ray = ray not in (None, False)
    address = None if ray in (None, False, True) else str(ray)
    if isinstance(model, ModelAdapter):
        if use_ray or (workers or 1) > 1:
            raise UserError("a ready model adapter runs in this process only; give a model name to use workers or Ray")
        model_name = model.name
    else:
        model_name = clean_model(model)
    device = _device(device, use_ray)
    if isinstance(group_by, str):
        group_by = [g.strip() for g in group_by.split(",") if g.strip()]
    listing = read_manifest(manifest, limit, reserved=RESERVED)
    if class_column is not None and class_column not in listing.extra_columns:
        raise UserError(
            f"the class column {class_column!r} is not in the manifest (its columns: "
            f"{', '.join(listing.extra_columns) or 'only image, prompt, contrast'})"
        )
    known = set(listing.extra_columns) | (set(CLASS_COLUMNS) if class_column else set())
    unknown = [g for g in group_by if g not in known]
    if unknown:
        raise UserError(
            f"cannot group by {', '.join(map(repr, unknown))}: not a manifest column"
            f"{'' if class_column else ' (correct needs a class column)'}"
        )

    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"the output folder {str(folder)!r} cannot be made: {error.strerror or error}") from None
    with folder_lock(folder):  # one run per folder at a time
        digest = check_config(folder, model_name, checked)
        columns = [*BASE_COLUMNS, *(CLASS_COLUMNS if class_column else ()), *listing.extra_columns]
        notes = list(listing.notes)
        rows_path = folder / ROWS
        with RowsFile(rows_path, columns) as rows_file:
            if rows_file.repaired:
                notes.append(
                    f"{rows_path} ended in a partial line (an interrupted write); it was cut and its "
                    "image is computed again"
                )
            done = latest(read_rows(rows_path)[1], digest)
            pending = _jobs(listing, names, done, retry_errors)
            jobs = pending if compute else []
            if threads is None:
                import torch

                threads = 1 if use_ray else max(1, torch.get_num_threads() // (workers or 1))
            config = WorkerConfig(
                model=model_name, device=device, params=checked, threads=threads, class_column=class_column
            )
            info: dict[str, Any] = {}
            computed = _run(jobs, config, model, workers, use_ray, address, threads, info, rows_file, digest, progress)
        rows = {key: typed(row) for key, row in latest(read_rows(rows_path)[1], digest).items()}
        result = stats.summarize(rows, listing.items, names, checked["seed"], resamples, group_by)
        summary = Summary(
            n=result["n"],
            n_images=result["n_images"],
            n_failed=result["n_failed"],
            n_missing=result["n_missing"],
            methods=result["methods"],
            random=result["random"],
            pairs=result["pairs"],
            vs_random=result["vs_random"],
            groups=result["groups"],
            errors=result["errors"],
            ill_conditioned=result["ill_conditioned"],
            params={
                "model": model_name,
                "methods": names,
                **checked,
                "manifest": str(Path(manifest)),
                "limit": limit,
                "class_column": class_column,
                "bootstrap_resamples": resamples,
                "confidence": stats.CONFIDENCE,
                "params_hash": digest,
            },
            run={
                "device": device,
                "workers": workers or (len(info.get("workers", [])) if use_ray else 1),
                "threads_per_worker": threads,
                "ray": info.get("ray"),
                "worker_details": info.get("workers", []),
                "images_computed": computed,
                "images_skipped": len(listing.items) - len(pending),
                "images_left": len(pending) - computed,
                "first_result_seconds": info.get("first_result_seconds"),
                "last_result_seconds": info.get("last_result_seconds"),
                "seconds": time.perf_counter() - started,
                "cpu_count": os.cpu_count(),
            },
            out=folder,
            notes=tuple(notes),
        )
        _write_summary(summary, rows, listing, names)
    return summary


def _jobs(listing: Manifest, methods: Sequence[str], done: dict, retry_errors: bool) -> list[Job]:
    """An image's job holds the methods whose rows are missing (or failed, with retry_errors)."""

    def finished(item: Item, method: str) -> bool:
        row = done.get(item.key + (method,))
        return row is not None and not (retry_errors and row.get("error"))

    jobs = []
    for item in listing.items:
        missing = tuple(m for m in methods if not finished(item, m))
        if missing or not finished(item, RANDOM):
            jobs.append(Job(item, missing, not finished(item, RANDOM)))
    return jobs


def _run(
    jobs: list[Job],
    config: WorkerConfig,
    model: str | ModelAdapter,
    workers: int | None,
    use_ray: bool,
    address: str | None,
    threads: int,
    info: dict[str, Any],
    rows_file: RowsFile,
    digest: str,
    progress: bool | None,
) -> int:
    """Run the jobs on the chosen workers, appending each image's rows as it finishes."""
    if not jobs:
        return 0  # nothing to compute: no model is loaded
    from tqdm import tqdm

    from . import runners

    if use_ray:
        outcomes = runners.run_ray(jobs, config, address, workers, threads, info)
    elif (workers or 1) > 1:
        outcomes = runners.run_processes(jobs, config, workers, info)
    else:
        outcomes = runners.run_here(jobs, config, model, info)
    computed, began = 0, time.perf_counter()
    with tqdm(
        total=len(jobs),
        unit="image",
        desc="evaluate",
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    ) as bar:
        try:
            for job, rows in outcomes:
                rows_file.append([{**job.item.extras, **row, "params_hash": digest} for row in rows])
                computed += 1
                # When results came: the rate between the first and the last is the workers' steady
                # throughput, without their start-up (loading the model, starting Ray).
                info.setdefault("first_result_seconds", time.perf_counter() - began)
                info["last_result_seconds"] = time.perf_counter() - began
                bar.set_postfix_str(job.item.image[-40:], refresh=False)
                bar.update()
        finally:
            outcomes.close()  # stops the workers, also on Ctrl-C
    return computed


def _write_summary(summary: Summary, rows: dict, listing: Manifest, methods: Sequence[str]) -> None:
    data = summary.to_dict()
    (summary.out / SUMMARY_JSON).write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    (summary.out / SUMMARY_MD).write_text(report.markdown(data, methods))
    complete = stats.complete(rows, listing.items, methods)
    srgs = {m: np.array([rows[item.key + (m,)]["srg"] for item in complete], dtype=float) for m in (*methods, RANDOM)}
    report.plot(data, srgs, methods, summary.out / SUMMARY_PNG, seed=summary.params["seed"])


__all__ = ["Summary", "evaluate", "read_manifest", "read_rows"]
